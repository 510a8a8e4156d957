"""Does flexible depth save time at equal quality? Gold NLL per token against seconds per
sample (batch 1), the fixed depths as a frontier line and the halting policies on top."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from study.report.figures.adaptive_frontier import HALTING_MARKERS
from study.report.results import Results
from study.report.style import FigureSpec, colors, latency_new_tokens, marker, missing_inputs, panel_row, styled

FILE = "adaptive_latency.csv"


def error_bars(rows: pd.DataFrame, low: str, high: str, centre: str) -> np.ndarray | None:
    """[2, n] distances from ``centre`` to the ``low``/``high`` columns (0 where a bound is
    empty: a median of fewer than 10 samples, a CI of one question); None when none exists."""
    if low not in rows or high not in rows or rows[[low, high]].isna().all(axis=None):
        return None
    middle = rows[centre].to_numpy(dtype=float)
    lower, upper = rows[low].to_numpy(dtype=float), rows[high].to_numpy(dtype=float)
    return np.nan_to_num(np.array([middle - lower, upper - middle]), nan=0.0).clip(min=0.0)


@styled
def plot_adaptive_latency(results: Results, axes: Sequence[Axes] | None = None) -> Figure:
    """One panel per model: gold NLL per token (bootstrap CI over questions) against the
    median seconds per sample (p10-p90 from 10 samples on), the fixed depths joined in
    loop order and labelled by their loops, each halting rule's thresholds as grey points
    labelled by tau."""
    frame = results.adaptive_latency
    names = results.models_in(frame)
    figure, axes = panel_row(axes, len(names), (4.8, 4.0))
    if missing_inputs(results, axes[:1], FILE):
        return figure
    assert frame is not None  # missing_inputs found it
    palette = colors(results)
    for ax, name in zip(axes, names, strict=False):
        rows = frame[frame["model"] == name]
        fixed = rows[~rows["halting"]].sort_values("loops_per_token")
        ax.errorbar(
            fixed["s_per_sample"], fixed["nll_per_token"], yerr=error_bars(fixed, "nll_ci_low", "nll_ci_high",
            "nll_per_token"), xerr=error_bars(fixed, "s_p10", "s_p90", "s_per_sample"), fmt=f"-{marker(results, name)}",
            color=palette[name], lw=1.8, ms=5, capsize=2, label="fixed depth",
        )  # fmt: skip
        for _, row in fixed.iterrows():
            ax.annotate(f"{row['loops_per_token']:g}", (row["s_per_sample"], row["nll_per_token"]),
                        textcoords="offset points", xytext=(4, 4), fontsize=7, color=palette[name])  # fmt: skip
        halting = rows[rows["halting"]]
        for index, (rule, points) in enumerate(halting.groupby("rule", sort=True)):
            points = points.sort_values("s_per_sample")
            ax.errorbar(
                points["s_per_sample"], points["nll_per_token"], yerr=error_bars(points, "nll_ci_low", "nll_ci_high",
                "nll_per_token"), xerr=error_bars(points, "s_p10", "s_p90", "s_per_sample"), ls="none",
                marker=HALTING_MARKERS[index % len(HALTING_MARKERS)], color="0.4", ms=5, capsize=2,
                label=f"halting: {rule} (label: tau)",
            )  # fmt: skip
            for _, row in points.iterrows():
                ax.annotate(f"{row['tau']:g}", (row["s_per_sample"], row["nll_per_token"]),
                            textcoords="offset points", xytext=(4, -9), fontsize=7, color="0.3")  # fmt: skip
        examples = ", ".join(str(int(n)) for n in rows["quality_examples"].unique())
        ax.set_title(f"{results.model(name).label}" + (f" ({examples} questions)" if examples else ""))
        ax.set_xlabel(f"median latency (s/sample{latency_new_tokens(results)}, batch 1)")
        ax.set_ylabel("gold NLL per token (nats/token)")
        ax.legend(loc="best")
    return figure


FIGURE = FigureSpec(
    "adaptive_latency",
    "Time at equal quality: gold NLL vs seconds per sample",
    plot_adaptive_latency,
    (FILE,),
    "Gold-solution NLL per token (decoded token by token, as generation runs; bars: bootstrap CI over "
    "questions) against median seconds per sample at batch 1 (bars: p10-p90 from 10 samples on). The line "
    "joins the fixed depths (labels: loops); grey points are the halting policies (labels: tau). A point "
    "below and left of the line is faster at equal quality. Source: `results/adaptive_latency.csv`.",
)
