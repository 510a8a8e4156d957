"""Every LoopFormer schedule of M steps at a fixed loop budget, sorted by test NLL."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from study.report.results import Results
from study.report.style import FigureSpec, colors, missing_inputs, not_run, panel_row, styled


@styled
def plot_schedules(results: Results, axes: Sequence[Axes] | None = None) -> Figure:
    """Every LoopFormer schedule of M steps at a fixed budget: test NLL with its bootstrap
    CI, one panel per model, schedules sorted from best to worst; the uniform schedule is
    marked and the best and worst are labelled with their step sizes."""
    frame = results.schedules
    names = results.models_in(frame) if frame is not None else []
    figure, axes = panel_row(axes, len(names), (4.6, 4.6), sharey=True)
    if missing_inputs(results, axes[:1], "schedules.csv"):
        return figure
    assert frame is not None  # missing_inputs found results/schedules.csv
    if not names:
        not_run(axes[0], "No rows in results/schedules.csv")
        return figure
    palette = colors(results)
    for ax, name in zip(axes, names, strict=False):
        rows = frame[frame["model"] == name].sort_values(["rank", "policy"]).reset_index(drop=True)
        x = np.arange(len(rows))
        colour = palette[name]
        y = rows["nll_per_token"].to_numpy(dtype=float)
        low, high = rows["ci_low"].to_numpy(dtype=float), rows["ci_high"].to_numpy(dtype=float)
        ax.errorbar(
            x, y, yerr=[y - low, high - y], fmt="o", ms=3.5, color=colour, ecolor=colour, elinewidth=0.8, alpha=0.85
        )
        for i in rows.index[rows["uniform"].astype(bool)]:
            ax.plot(x[i], y[i], marker="D", ms=9, mfc="none", mec="black", mew=1.6, ls="none")
            ax.annotate(
                f"uniform (rank {int(rows['rank'][i])})", (x[i], y[i]), xytext=(4, -14), textcoords="offset points",
                fontsize=8,
            )  # fmt: skip
        last = len(rows) - 1
        for i, what, offset, align in ((0, "best", (6, 8), "left"), (last, "worst", (-6, 8), "right")):
            ax.annotate(
                f"{what}: {rows['steps'][i]}", (x[i], y[i]), xytext=offset, textcoords="offset points", fontsize=8,
                ha=align,
            )  # fmt: skip
        ax.set_title(results.model(name).label)
        ax.set_xlabel(f"schedule, sorted by test NLL ({len(rows)} schedules)")
        ax.set_xticks([])
    axes[0].set_ylabel("test NLL per token (nats/token)")
    return figure


FIGURE = FigureSpec(
    "schedules",
    "Every schedule at a fixed loop budget",
    plot_schedules,
    ("schedules.csv",),
    "Test NLL (bootstrap 95% CI) of every LoopFormer schedule with M steps whose step sizes are multiples of "
    "1/granularity, sorted from best to worst per model; the diamond is the uniform schedule, and the best "
    "and worst are labelled with their step sizes. Source: `results/schedules.csv`.",
)
