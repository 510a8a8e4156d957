"""Fixed or per-input depth: NLL against the loops actually executed, for the fixed depths,
the halting policies and the per-example oracle."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from study.report.results import ADAPTIVE_FILES, TEST, Results
from study.report.style import FigureSpec, colors, marker, missing_inputs, panel_row, styled

HALTING_MARKERS = ("s", "^", "v", "D")


@styled
def plot_adaptive_frontier(results: Results, axes: Sequence[Axes] | None = None, split: str = TEST) -> Figure:
    """NLL per token against mean executed loops, one panel per model: the fixed depths,
    each halting rule's tau sweep as a curve and the oracle's budgeted frontier as a
    staircase (the lowest NLL any per-example choice of depth reaches at that budget)."""
    names = results.models_in(results.adaptive)
    figure, axes = panel_row(axes, len(names), (4.6, 4.0))
    if missing_inputs(results, axes[:1], *ADAPTIVE_FILES):
        return figure
    frame, frontier = results.adaptive, results.oracle_frontier
    assert frame is not None and frontier is not None  # missing_inputs found all of ADAPTIVE_FILES
    palette = colors(results)
    for ax, name in zip(axes, names, strict=False):
        rows = frame[(frame["model"] == name) & (frame["split"] == split)]
        fixed = rows[rows["kind"] == "fixed"].sort_values("mean_loops")
        ax.plot(fixed["mean_loops"], fixed["nll_per_token"], f"-{marker(results, name)}", color=palette[name],
                lw=2, label="fixed depth")  # fmt: skip
        points = frontier[(frontier["model"] == name) & (frontier["split"] == split)].sort_values("mean_loops")
        ax.step(points["mean_loops"], points["nll_per_token"], where="post", color="black", lw=1.3, label="oracle")
        # halting rules in grey, told apart by marker: no colour here may read as another model's
        # one curve per (family, rule): a window's kl and a ladder's kl are different policies
        halting = rows[rows["kind"] == "halting"]
        if "family" not in halting.columns:  # an adaptive.csv from before the families: one per rule
            halting = halting.assign(family="")
        for index, (key, group) in enumerate(halting.groupby(["family", "detail"], sort=True, dropna=False)):
            family, detail = cast("tuple[object, object]", key)
            curve = group.sort_values("mean_loops")
            shape = HALTING_MARKERS[index % len(HALTING_MARKERS)]
            ax.plot(curve["mean_loops"], curve["nll_per_token"], ls="--", marker=shape, ms=5, color="0.45",
                    label=f"halting: {detail}{_family_text(family)} (tau sweep)")  # fmt: skip
        ax.set_title(f"{results.model(name).label} ({split})")
        ax.set_xlabel("mean executed loops per example")
        ax.set_ylabel("NLL per token (nats/token)")
        ax.legend(loc="upper right")
    return figure


def _family_text(family: object) -> str:
    """ ", ladder-2-4-8" for the trace id ``ladder-2-4-8-trace``; nothing when unknown."""
    return f", {family.removesuffix('-trace')}" if isinstance(family, str) and family else ""


FIGURE = FigureSpec(
    "adaptive_frontier",
    "Fixed or per-input depth: NLL vs executed loops",
    plot_adaptive_frontier,
    ADAPTIVE_FILES,
    "Test NLL per token against the mean loops actually executed: the fixed depths (line in the model's "
    "colour), each halting rule over its thresholds (dashed) and the per-example oracle's frontier (black "
    "staircase). Sources: `results/adaptive.csv`, `results/oracle_frontier.csv`.",
)
