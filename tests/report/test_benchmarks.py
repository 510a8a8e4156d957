"""The benchmarks stage in the report: its section of report.md and its figure, from the
fake run (whose benchmark files come from the stage's own aggregation)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from matplotlib.colors import to_rgb

from study import report
from study.report.figures.benchmarks import panels
from study.report.style import colors
from tests.support.fake_run import make_fake_run

from .helpers import section

HEADING = "lm-eval benchmarks at each depth"


def test_section_tables_preferred_depths_and_findings(fake_run: Path, report_text: str) -> None:
    text = section(report_text, HEADING)
    frame = pd.read_csv(fake_run / "results" / "benchmarks.csv")
    depth = pd.read_csv(fake_run / "results" / "benchmarks_depth.csv")
    best = depth[(depth["model"] == "train4") & (depth["task"] == "arc_easy") & (depth["metric"] == "acc")]
    preferred = int(best[best["preferred"]]["inference_loops"].iloc[0])
    row = frame[(frame["model"] == "train4") & (frame["task"] == "arc_easy") & (frame["metric"] == "acc")]
    at_best = row[row["inference_loops"] == preferred].iloc[0]
    bold = f"**{100 * at_best['value']:.1f} [{100 * at_best['ci_low']:.1f}, {100 * at_best['ci_high']:.1f}]**"
    line = next(li for li in text.splitlines() if li.startswith("| Train4 | arc_easy | acc | 120 |"))
    assert bold in line and line.count("**") == 2  # only the preferred depth is bold
    paired = next(li for li in text.splitlines() if li.startswith(f"| Train4 | arc_easy | acc | {preferred} |"))
    other = best[~best["preferred"]].iloc[0]
    assert f"{100 * other['difference']:+.1f} [" in paired and f"p = {other['mcnemar_p']:.2g}" in paired
    assert paired.count("preferred") == 1
    assert f"- Train4, arc_easy: most accurate at {preferred} loops" in text
    assert "](figures/benchmarks.png)" in text and "validation" in text


def test_section_only_where_benchmarks_were_run_or_asked_for(tmp_path: Path) -> None:
    run_dir = make_fake_run(tmp_path / "asked", skip=("benchmarks.csv", "benchmarks_depth.csv"))
    text = report.regenerate(run_dir).read_text()
    assert "Not run: `results/benchmarks.csv` is missing (the `benchmarks` stage has not run" in section(text, HEADING)
    results = report.load_results(run_dir)
    results.config = results.config.model_copy(update={"benchmarks": None})  # type: ignore[union-attr]
    assert HEADING not in report.render_report(results, {})


def test_figure_draws_each_model_per_task_and_metric(fake_run: Path) -> None:
    results = report.load_results(fake_run)
    frame = results.benchmarks
    assert frame is not None
    figure = report.plot_benchmarks(results)
    titles = [ax.get_title() for ax in figure.axes]
    assert titles == [
        "arc_easy: acc, n = 120", "piqa: acc, n = 120", "arc_easy: acc_norm (length-normalised), n = 120",
        "piqa: acc_norm (length-normalised), n = 120",
    ]  # fmt: skip
    palette = colors(results)
    for ax, (task, metric) in zip(figure.axes, panels(results), strict=True):
        for model in ("base", "train8", "train4"):
            rows = frame[(frame["model"] == model) & (frame["task"] == task) & (frame["metric"] == metric)]
            expected = list(100 * rows.sort_values("inference_loops")["value"])
            colour = pytest.approx(palette[model])
            lines = [
                line for line in ax.get_lines()
                if line.get_linestyle() == "-" and to_rgb(line.get_color()) == colour
                and len(line.get_ydata()) == len(expected)
            ]  # fmt: skip
            assert len(lines) == 1 and list(lines[0].get_ydata()) == pytest.approx(expected), (task, metric, model)
            stars = [s for s in ax.get_lines() if s.get_marker() == "*" and to_rgb(s.get_mfc()) == colour]
            assert len(stars) == 1 and stars[0].get_ydata()[0] == pytest.approx(max(expected))
