"""Report stage: figures and ``report.md`` from the run's results files (``study.report``)."""

from __future__ import annotations

from pathlib import Path

from study.pipeline import RunContext
from study.report import load_results, write_report
from study.stages.stage import Stage


def run(ctx: RunContext) -> Path:
    results = load_results(ctx.run_dir, models=ctx.model_specs(), config=ctx.config)
    return write_report(results, ctx.figures_dir)


STAGE = Stage(
    name="report",
    run=run,
    sections=(),
    reads="none",
    main_process_only=True,
    outputs=("report.md", "figures"),
    always_reruns=True,
)
