"""Seconds per sample against inference loops, with each model's fitted cost of one loop."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from study.report.formats import format_seconds
from study.report.results import Results
from study.report.style import (
    FigureSpec,
    colors,
    dodge,
    latency_new_tokens,
    loop_ticks,
    mark_train_loops,
    marker,
    missing_inputs,
    new_figure,
    styled,
)


@styled
def plot_latency(results: Results, ax: Axes | None = None) -> Figure:
    """Median seconds per sample against inference loops with p10-p90 bars and
    each model's least-squares line (its slope, the cost of one more loop, in the legend)."""
    figure, ax = new_figure(ax)
    if missing_inputs(results, [ax], "latency.csv"):
        return figure
    palette = colors(results)
    latency = results.latency
    assert latency is not None  # missing_inputs found results/latency.csv (latency_fit.csv may be absent)
    fits = results.latency_fit
    models = results.models_in(latency)
    handles = []
    grid = np.linspace(0, latency["inference_loops"].max() * 1.04, 50)
    for index, name in enumerate(models):
        rows = latency[latency["model"] == name].sort_values("inference_loops")
        colour = palette[name]
        x = rows["inference_loops"].to_numpy(dtype=float) + dodge(index, len(models), 0.18)
        median = rows["median_s"].to_numpy(dtype=float)
        error = [median - rows["p10_s"].to_numpy(dtype=float), rows["p90_s"].to_numpy(dtype=float) - median]
        ax.errorbar(x, median, yerr=error, fmt=marker(results, name), color=colour, ms=5, capsize=3, lw=1.2)
        label = results.legend_label(name)
        fit = fits[fits["model"] == name] if fits is not None else pd.DataFrame()
        if not fit.empty:
            slope, intercept = float(fit["slope_s_per_loop"].iloc[0]), float(fit["intercept_s"].iloc[0])
            ax.plot(grid, intercept + slope * grid, color=colour, lw=1.3, ls="--", alpha=0.9)
            label += f": {format_seconds(slope)} s/loop, R² = {float(fit['r_squared'].iloc[0]):.3f}"
        handles.append(Line2D([], [], color=colour, marker=marker(results, name), lw=1.3, ls="--", label=label))
    mark_train_loops(ax, results, models)
    loop_ticks(ax, latency["inference_loops"])
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    handles.append(Line2D([], [], color="0.3", lw=1.6, ls=":", label="training loop count"))
    if fits is None:
        handles.append(Line2D([], [], ls="none", label="(latency_fit.csv missing: no fitted lines)"))
    device = ""
    if "device" in latency.columns and latency["device"].nunique() == 1:
        device = f" on {latency['device'].iloc[0]}"
    ax.set_xlabel(results.depth_label)
    ax.set_ylabel(f"median latency (s/sample{latency_new_tokens(results)})")
    ax.set_title(f"Latency per sample vs inference loops{device} (bars: p10-p90; dashed: linear fit)")
    ax.legend(handles=handles, loc="upper left")
    return figure


FIGURE = FigureSpec(
    "latency",
    "Latency vs inference loops",
    plot_latency,
    ("latency.csv",),
    "Median seconds per sample with p10-p90 bars; dashed lines are least-squares fits (slope = cost of one "
    "more loop). Sources: `results/latency.csv`, `results/latency_fit.csv`.",
)
