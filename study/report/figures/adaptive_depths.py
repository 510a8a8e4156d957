"""Fixed or per-input depth: how the depth each example got is spread, for the oracle and
for the model's best halting policy."""

from __future__ import annotations

from collections.abc import Sequence

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from study.report.results import ADAPTIVE_FILES, TEST, Results
from study.report.style import FigureSpec, loop_ticks, missing_inputs, panel_row, styled
from study.report.tables import best_halting


@styled
def plot_adaptive_depths(results: Results, axes: Sequence[Axes] | None = None, split: str = TEST) -> Figure:
    """Histogram of the depth each example got, one panel per model: the oracle's best
    fixed depth, and the depth the model's best halting policy stopped at."""
    names = results.models_in(results.adaptive)
    figure, axes = panel_row(axes, len(names), (4.6, 3.6))
    if missing_inputs(results, axes[:1], *ADAPTIVE_FILES):
        return figure
    depths = results.adaptive_depths
    assert depths is not None  # missing_inputs found all of ADAPTIVE_FILES
    for ax, name in zip(axes, names, strict=False):
        chosen = depths[(depths["model"] == name) & (depths["split"] == split)]
        shown = ["oracle"]
        best = best_halting(results, name, split)
        if best is not None:
            shown.append(best["policy"])
        values = [chosen[chosen["policy"] == p]["chosen_depth"].to_numpy() for p in shown]
        edges = sorted({float(v) for vs in values for v in vs})
        # one bin per whole depth, centred on it
        bins = [e - 0.5 for e in range(int(min(edges)), int(max(edges)) + 2)] if edges else 10
        ax.hist(values, bins=bins, label=shown, color=["0.2", "0.6"][: len(shown)])  # greys: not a model colour
        if edges:
            loop_ticks(ax, edges)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts of examples
        ax.set_title(f"{results.model(name).label} ({split})")
        ax.set_xlabel("chosen depth (loops)")
        ax.set_ylabel("examples")
        ax.legend(loc="upper left")
    return figure


FIGURE = FigureSpec(
    "adaptive_depths",
    "Fixed or per-input depth: the depth each example got",
    plot_adaptive_depths,
    ADAPTIVE_FILES,
    "How many test examples got each depth: from the oracle (each example at its best fixed depth) and "
    "from the model's best halting policy (where it stopped). Source: `results/adaptive_depths.csv`.",
)
