"""Tasks: the data, prompt format, stop strings and answer extraction of each benchmark."""
