"""NLL per token against inference loops, per model and split: where each model's curve bottoms out."""

from __future__ import annotations

from collections.abc import Sequence

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from study.report.results import HELDOUT, SEEN, SPLIT_LABELS, TEST, Results
from study.report.style import (
    FigureSpec,
    colors,
    loop_ticks,
    mark_train_loops,
    marker,
    missing_inputs,
    new_figure,
    styled,
)
from study.report.tables import row_at

# the seen slice (SFT data) is dash-dotted, never drawn like the diagnostics
LINESTYLES = {TEST: "-", HELDOUT: "--", SEEN: "-."}


@styled
def plot_nll_vs_loops(results: Results, ax: Axes | None = None, splits: Sequence[str] = (TEST, HELDOUT)) -> Figure:
    """NLL per token against inference loops, one colour per model; test solid, heldout
    diagnostics (train questions no SFT subset contains) dashed (the seen slice, SFT data,
    dash-dotted when asked for), bootstrap CI bands, each curve's argmin starred and each
    model's training loop count as a dotted vertical line in its colour."""
    figure, ax = new_figure(ax)
    if missing_inputs(results, [ax], "nll_summary.csv"):
        return figure
    palette = colors(results)
    nll = results.nll
    assert nll is not None  # missing_inputs found results/nll_summary.csv
    models = results.models_in(nll)
    for name in models:
        colour = palette[name]
        for split in splits:
            rows = nll[(nll["model"] == name) & (nll["split"] == split)].sort_values("inference_loops")
            if rows.empty:
                continue
            is_test = split == TEST
            x = rows["inference_loops"].to_numpy()
            ax.fill_between(x, rows["ci_low"], rows["ci_high"], color=colour, alpha=0.2 if is_test else 0.08, lw=0)
            ax.plot(
                x,
                rows["nll_per_token"],
                linestyle=LINESTYLES.get(split, "--"),
                marker=marker(results, name),
                markersize=4.5 if is_test else 3.5,
                color=colour,
                linewidth=2.0 if is_test else 1.3,
                alpha=1.0 if is_test else 0.8,
            )
            best = row_at(rows, rows["nll_per_token"].idxmin())
            ax.plot(
                best["inference_loops"],
                best["nll_per_token"],
                marker="*",
                markersize=17 if is_test else 13,
                markerfacecolor=colour if is_test else "white",
                markeredgecolor="black" if is_test else colour,
                markeredgewidth=0.9 if is_test else 1.4,
                linestyle="none",
                zorder=7 if is_test else 6,
            )
    mark_train_loops(ax, results, models)
    loop_ticks(ax, nll["inference_loops"])
    ax.set_xlabel(results.depth_label)
    ax.set_ylabel("NLL per token (nats/token)")
    ax.set_title("NLL vs inference loops (lower is better)")
    handles = [
        Line2D([], [], color=palette[n], marker=marker(results, n), lw=2, label=results.legend_label(n)) for n in models
    ]
    handles.append(Line2D([], [], color="0.3", lw=2, label="test (bootstrap 95% CI band)"))
    others = [split for split in splits if split != TEST]
    handles += [
        Line2D([], [], color="0.3", lw=1.3, ls=LINESTYLES.get(split, "--"), label=SPLIT_LABELS.get(split, split))
        for split in others
    ]
    handles.append(
        Line2D([], [], color="0.3", marker="*", ms=12, ls="none", mfc="0.3", mec="black", label="argmin, test")
    )
    if others:
        label = "argmin, " + ", ".join(split for split in others)
        handles.append(Line2D([], [], color="0.3", marker="*", ms=10, ls="none", mfc="white", mec="0.3", label=label))
    handles.append(Line2D([], [], color="0.3", lw=1.6, ls=":", label="training loop count"))
    ax.legend(handles=handles, loc="upper center", ncols=2)
    return figure


FIGURE = FigureSpec(
    "nll_vs_loops",
    "NLL per token vs inference loops",
    plot_nll_vs_loops,
    ("nll_summary.csv",),
    "Test NLL (solid, bootstrap 95% CI band) and heldout diagnostics (dashed: GSM8K train questions that no SFT "
    "subset contains) per model; stars mark each "
    "curve's argmin and the dotted vertical lines each model's training loop count. "
    "Source: `results/nll_summary.csv`.",
)
