"""The SFT training loss of every fine-tuned model."""

from __future__ import annotations

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from study.report.results import Results
from study.report.style import FigureSpec, colors, missing_inputs, new_figure, styled


@styled
def plot_sft_loss(results: Results, ax: Axes | None = None, window: int | None = None) -> Figure:
    """SFT training loss per optimizer step for every fine-tuned model: the raw
    logged loss (thin) and a centred rolling mean (thick, ``window`` steps, default ~1/15
    of the run)."""
    figure, ax = new_figure(ax)
    if missing_inputs(results, [ax], "sft_loss.csv"):
        return figure
    palette = colors(results)
    loss = results.sft_loss
    assert loss is not None  # missing_inputs found results/sft_loss.csv
    models = results.models_in(loss)
    handles = []
    for name in models:
        rows = loss[loss["model"] == name].sort_values("step")
        colour = palette[name]
        steps = rows["step"].to_numpy()
        size = window or max(3, round(len(rows) / 15))
        smooth = rows["loss"].rolling(size, center=True, min_periods=1).mean()
        ax.plot(steps, rows["loss"], color=colour, lw=0.7, alpha=0.35)
        ax.plot(steps, smooth, color=colour, lw=2.2)
        handles.append(Line2D([], [], color=colour, lw=2.2, label=results.legend_label(name)))
    if "epoch" in loss.columns and len(models):
        rows = loss[loss["model"] == models[0]].sort_values("step")
        completed = np.floor(rows["epoch"].to_numpy(dtype=float) - 1e-9)  # epochs finished before each step
        boundaries = rows["step"].to_numpy()[1:][np.diff(completed) > 0]
        for step in boundaries:
            ax.axvline(step, color="0.5", lw=0.8, ls="--", alpha=0.6)
        if len(boundaries):
            handles.append(Line2D([], [], color="0.5", lw=0.8, ls="--", label="epoch boundary"))
    handles.append(Line2D([], [], color="0.3", lw=0.7, alpha=0.5, label="raw per-step loss"))
    handles.append(Line2D([], [], color="0.3", lw=2.2, label="rolling mean"))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (nats/token)")
    ax.set_title("SFT training loss")
    ax.legend(handles=handles, loc="upper right")
    return figure


FIGURE = FigureSpec(
    "sft_loss",
    "SFT training loss",
    plot_sft_loss,
    ("sft_loss.csv",),
    "Per-step training loss (thin) and its rolling mean (thick) for every SFT model. Source: `results/sft_loss.csv`.",
)
