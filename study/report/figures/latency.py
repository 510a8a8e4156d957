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
from study.stats import PERCENTILE_MIN_SAMPLES


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
        # p10/p90 exist only for cells of at least 10 samples (empty cells otherwise: no bar)
        low, high = (rows[c].to_numpy(dtype=float) if c in rows else np.full(len(rows), np.nan) for c in PERCENTILES)
        error = np.nan_to_num([median - low, high - median], nan=0.0)
        ax.errorbar(x, median, yerr=error, fmt=marker(results, name), color=colour, ms=5, capsize=3, lw=1.2)
        label = results.legend_label(name)
        fit = fits[fits["model"] == name] if fits is not None else pd.DataFrame()
        if not fit.empty and pd.notna(fit["slope_s_per_loop"].iloc[0]):  # one loop count: no line
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
    ax.set_xlabel(results.depth_label)
    ax.set_ylabel(f"median latency (s/sample{latency_new_tokens(results)})")
    bars = "bars: p10-p90" if has_percentiles(latency) else f"median only: < {PERCENTILE_MIN_SAMPLES} samples"
    ax.set_title(f"Latency per sample vs inference loops{machine_label(latency)} ({bars}; dashed: linear fit)")
    ax.legend(handles=handles, loc="upper left")
    return figure


PERCENTILES = ("p10_s", "p90_s")


def has_percentiles(latency: pd.DataFrame) -> bool:
    """True when some cell has its p10/p90 (cells of fewer samples leave them empty)."""
    return all(c in latency for c in PERCENTILES) and bool(latency[list(PERCENTILES)].notna().all(axis=1).any())


def machine_label(latency: pd.DataFrame) -> str:
    """ " on <device>, <n> thread(s)" when every cell ran on one device and thread count."""
    parts = []
    if "device" in latency.columns and latency["device"].nunique() == 1:
        parts.append(str(latency["device"].iloc[0]))
    if "threads" in latency.columns and latency["threads"].nunique() == 1:
        threads = int(latency["threads"].iloc[0])
        parts.append(f"{threads} thread{'s' if threads != 1 else ''}")
    return f" on {', '.join(parts)}" if parts else ""


FIGURE = FigureSpec(
    "latency",
    "Latency vs inference loops",
    plot_latency,
    ("latency.csv",),
    "Median seconds per sample with p10-p90 bars (cells of at least 10 samples; fewer: the median only); dashed "
    "lines are least-squares fits (slope = cost of one more loop). Sources: `results/latency.csv`, "
    "`results/latency_fit.csv`.",
)
