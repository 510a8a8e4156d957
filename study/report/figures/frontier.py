"""Latency against test NLL per (model, loops): which depths are worth their cost."""

from __future__ import annotations

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from study.report.results import Results
from study.report.style import (
    FigureSpec,
    colors,
    latency_new_tokens,
    marker,
    missing_inputs,
    new_figure,
    not_run,
    styled,
)
from study.report.tables import frontier_points


@styled
def plot_frontier(results: Results, ax: Axes | None = None) -> Figure:
    """Median latency against test NLL per (model, loops), labelled with the loop
    count. Each model's Pareto-optimal depths are joined in its colour, dominated depths
    are faded; a black ring marks depths optimal across all models; a star marks each
    model's lowest NLL and a diamond the fastest depth statistically tied with it."""
    figure, ax = new_figure(ax, (7.5, 5.0))
    if missing_inputs(results, [ax], "latency.csv", "nll_summary.csv"):
        return figure
    points = frontier_points(results)
    if points is None or points.empty:
        not_run(ax, "No (model, loops) cell has both latency and test NLL")
        return figure
    palette = colors(results)
    models = results.models_in(points)
    for name in models:
        colour = palette[name]
        rows = points[points["model"] == name].sort_values("median_s")
        front = rows[rows["pareto"]]
        dominated = rows[~rows["pareto"]]
        ax.plot(front["median_s"], front["nll_per_token"], color=colour, lw=2, zorder=3)
        ax.errorbar(
            front["median_s"],
            front["nll_per_token"],
            yerr=[front["nll_per_token"] - front["ci_low"], front["ci_high"] - front["nll_per_token"]],
            fmt=marker(results, name),
            color=colour,
            ms=6,
            elinewidth=0.8,
            capsize=0,
            zorder=4,
        )
        ax.plot(
            dominated["median_s"],
            dominated["nll_per_token"],
            marker(results, name),
            color=colour,
            alpha=0.3,
            ms=5,
            linestyle="none",
            zorder=2,
        )
        for _, row in rows.iterrows():
            ax.annotate(
                f"{int(row['inference_loops'])}",
                (row["median_s"], row["nll_per_token"]),
                xytext=(8, 6) if row["best"] or row["pareto_all"] else (4, 4),
                textcoords="offset points",
                fontsize=7.5,
                color=colour,
                alpha=1.0 if row["pareto"] else 0.45,
                zorder=7,
            )
        best = rows[rows["best"]]
        ax.plot(best["median_s"], best["nll_per_token"], "*", ms=18, mfc=colour, mec="black", mew=0.9, zorder=6)
        knee = rows[rows["tied"] & ~rows["best"]]
        if not knee.empty:
            fastest = knee.loc[[knee["median_s"].idxmin()]]
            if float(fastest["median_s"].iloc[0]) < float(best["median_s"].iloc[0]):
                ax.plot(
                    fastest["median_s"], fastest["nll_per_token"], "D", ms=10, mfc="none", mec=colour, mew=2, zorder=6
                )
    overall = points[points["pareto_all"]]
    ax.plot(overall["median_s"], overall["nll_per_token"], "o", ms=13, mfc="none", mec="black", mew=1.0, zorder=5)
    new_tokens = latency_new_tokens(results)
    ax.set_xlabel(f"median latency (s/sample{new_tokens})")
    ax.set_ylabel("test NLL per token (nats/token)")
    ax.set_title("Cost vs quality per loop count: lower-left is better")
    handles = [
        Line2D([], [], color=palette[n], marker=marker(results, n), lw=2, label=results.legend_label(n)) for n in models
    ]
    handles += [
        Line2D([], [], color="0.3", marker="o", lw=2, label="Pareto-optimal for the model (joined)"),
        Line2D([], [], color="0.3", marker="o", alpha=0.3, ls="none", label="dominated (slower and worse)"),
        Line2D([], [], marker="o", ms=11, mfc="none", mec="black", ls="none", label="Pareto-optimal across models"),
        Line2D([], [], marker="*", ms=13, mfc="0.5", mec="black", ls="none", label="lowest test NLL of the model"),
        Line2D([], [], marker="D", ms=8, mfc="none", mec="0.3", mew=2, ls="none", label="fastest depth tied with it"),
    ]
    ax.legend(handles=handles, loc="upper right", title="numbers = inference loops", title_fontsize=8)
    return figure


FIGURE = FigureSpec(
    "frontier",
    "Latency vs test NLL (lower-left is better)",
    plot_frontier,
    ("latency.csv", "nll_summary.csv"),
    "One point per model and loop count (numbers = loops). Each model's Pareto-optimal depths are joined; "
    "dominated ones are faded; black rings mark depths that no other model beats on both axes. The star is "
    "the model's lowest test NLL; a diamond marks the fastest depth whose gap to it has a CI containing 0. "
    "Sources: `results/latency.csv`, `results/nll_summary.csv`, `results/preferred_depth.csv`.",
)
