"""lm-eval benchmark accuracy against inference loops: one panel per task and metric."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from study.report.results import Results
from study.report.style import (
    FigureSpec,
    accuracy_legend,
    colors,
    dodge,
    loop_ticks,
    mark_train_loops,
    marker,
    missing_inputs,
    root_figure,
    styled,
)

METRIC_TITLES = {"acc": "acc", "acc_norm": "acc_norm (length-normalised)"}


def panels(results: Results) -> list[tuple[str, str]]:
    """(task, metric) of every panel: the tasks in the order the stage wrote them, acc above acc_norm."""
    frame = results.benchmarks
    if frame is None or frame.empty:
        return [("", "")]
    tasks = list(dict.fromkeys(frame["task"].astype(str)))
    metrics = [m for m in METRIC_TITLES if m in set(frame["metric"])]
    return [(task, metric) for metric in metrics for task in tasks]


@styled
def plot_benchmarks(results: Results, axes: Sequence[Axes] | None = None) -> Figure:
    """Accuracy per loop count with Wilson intervals, one line per model, one panel per
    task (columns) and metric (rows); stars mark each model's most accurate depth (ties:
    the fewest loops), dotted lines each model's training loop count."""
    grid = panels(results)
    own_figure = axes is None
    tasks = len(dict.fromkeys(task for task, _ in grid))
    if axes is None:
        rows = max(1, len(grid) // max(1, tasks))
        figure = Figure(figsize=(3.6 * tasks + 0.6, 3.2 * rows + 0.9), layout="constrained")
        axes = list(figure.subplots(rows, tasks, sharex=True, squeeze=False).ravel())
    else:
        figure = root_figure(axes[0])
    if missing_inputs(results, axes, "benchmarks.csv"):
        return figure
    palette = colors(results)
    frame = results.benchmarks
    assert frame is not None  # missing_inputs found results/benchmarks.csv
    models = results.models_in(frame)
    for index_of_panel, (ax, (task, metric)) in enumerate(zip(axes, grid, strict=False)):
        panel = frame[(frame["task"] == task) & (frame["metric"] == metric)]
        for index, name in enumerate(models):
            rows_of = panel[panel["model"] == name].sort_values("inference_loops")
            if rows_of.empty:
                continue
            colour = palette[name]
            x = rows_of["inference_loops"].to_numpy(dtype=float) + dodge(index, len(models), 0.12)
            value = 100 * rows_of["value"].to_numpy(dtype=float)
            error = [value - 100 * rows_of["ci_low"].to_numpy(), 100 * rows_of["ci_high"].to_numpy() - value]
            ax.errorbar(x, value, yerr=error, fmt=f"-{marker(results, name)}", color=colour, ms=5, capsize=3, lw=1.5)
            top = int(np.argmax(value))  # the first maximum: the fewest loops, as benchmarks_depth.csv
            ax.plot(x[top], value[top], "*", ms=15, mfc=colour, mec="black", mew=0.9, zorder=6)
        mark_train_loops(ax, results, models)
        loop_ticks(ax, panel["inference_loops"])
        counts = panel["n"].dropna().unique()
        n_text = f", n = {int(counts[0])}" if len(counts) == 1 else ""
        ax.set_title(f"{task}: {METRIC_TITLES.get(metric, metric)}{n_text}")
        if index_of_panel >= len(grid) - tasks or not own_figure:  # the panels share x: label the bottom row
            ax.set_xlabel(results.depth_label)
        ax.set_ylabel("accuracy (%, Wilson 95% CI)")
    accuracy_legend(figure, axes, results, models, "most accurate depth of the model", own_figure, "lower right")
    figure.suptitle("lm-eval benchmarks (validation questions) vs inference loops (higher is better)")
    return figure


FIGURE = FigureSpec(
    "benchmarks",
    "lm-eval benchmark accuracy vs inference loops",
    plot_benchmarks,
    ("benchmarks.csv",),
    "Accuracy of lm-eval's own multiple-choice tasks (0-shot, their validation questions) at each inference "
    "depth, with Wilson 95% intervals; one line per model, stars at each model's most accurate depth. "
    "Source: `results/benchmarks.csv`; paired tests across depths in `results/benchmarks_depth.csv`.",
)
