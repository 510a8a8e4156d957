"""``python -m study.looping``: an alias of ``python -m study.pilot looping`` (the README's command)."""

import sys

if __name__ == "__main__":  # imported lazily: library code below the entry points never imports one
    from study.pilot import looping_main

    sys.exit(looping_main(prog="python -m study.looping"))
