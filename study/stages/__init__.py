"""The study's stages, in pipeline order: check, sft, nll, exact_match, latency, report.

Each module has ``run(ctx)``; ``run_study.py`` calls them in turn. Stages use the
models, the looping policies and the task; nothing below them imports a stage.
"""

STAGES = ("check", "sft", "nll", "exact_match", "latency", "report")
