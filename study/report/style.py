"""What every figure shares: the style, one colour and marker per model, the empty axes
with a "not run" note, the missing-input check, the axis helpers and the atomic save.

A figure module (``study/report/figures/``) draws with these and declares one
``FigureSpec``; ``figures.FIGURES`` orders them.
"""

from __future__ import annotations

import functools
import io
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import matplotlib

if "ipykernel" not in sys.modules and "matplotlib.pyplot" not in sys.modules:
    matplotlib.use("Agg")  # outside a notebook: no display needed, figures are only saved

import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.typing import RcKeyType

from study.io import atomic_write_bytes
from study.report.results import Results

DPI = 150
MODEL_MARKERS = ("o", "s", "^", "D", "v", "P", "X")
RUN_LINESTYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1)), (0, (1, 3)))
STYLE: dict[RcKeyType, Any] = {
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 8,
    "legend.framealpha": 0.9,
    "pdf.fonttype": 42,
}
RGB = tuple[float, float, float]


@dataclass(frozen=True)
class FigureSpec:
    """One figure of the report: its file name, title, drawing function, the results files
    it needs (it is not drawn without them) and the caption under it in report.md."""

    name: str
    title: str
    plot: Callable[[Results], Figure]
    needs: tuple[str, ...]
    caption: str


def model_colors(names: Sequence[str]) -> dict[str, RGB]:
    palette = sns.color_palette("colorblind", max(len(names), 3))
    return {name: tuple(palette[i % len(palette)]) for i, name in enumerate(names)}


def colors(results: Results) -> dict[str, RGB]:
    """One colour-blind-safe colour per model of the run, the same in every figure."""
    return model_colors([m.name for m in results.models])


def marker(results: Results, name: str) -> str:
    names = [m.name for m in results.models]
    return MODEL_MARKERS[names.index(name) % len(MODEL_MARKERS)] if name in names else "o"


def styled(function: Callable[..., Figure]) -> Callable[..., Figure]:
    """Draw with the report's style without touching the caller's global rcParams."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Figure:
        with matplotlib.rc_context(STYLE):
            return function(*args, **kwargs)

    return wrapper


def root_figure(ax: Axes) -> Figure:
    """The figure that ``ax`` is drawn in (the top-level one, not a subfigure)."""
    # an Axes is created inside a figure; only one removed from it (ax.remove()) has None, which is
    # passed through as before rather than raised on
    return cast(Figure, ax.get_figure(root=True))


def new_figure(ax: Axes | None, figsize: tuple[float, float] = (7.5, 4.6)) -> tuple[Figure, Axes]:
    """The caller's axes (a notebook drawing into its own layout), else a new one-axes figure."""
    if ax is not None:
        return root_figure(ax), ax
    figure = Figure(figsize=figsize, layout="constrained")
    return figure, figure.add_subplot()


def panel_row(
    axes: Sequence[Axes] | None, count: int, size: tuple[float, float], sharey: bool = False
) -> tuple[Figure, list[Axes]]:
    """The caller's axes, else a new figure with ``count`` panels (one per model) in a row."""
    if axes is not None:
        return root_figure(axes[0]), list(axes)
    panels = max(1, count)
    figure = Figure(figsize=(size[0] * panels, size[1]), layout="constrained")
    return figure, list(figure.subplots(1, panels, sharey=sharey, squeeze=False)[0])


def not_run(ax: Axes, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, wrap=True, color="0.35")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)


def missing_inputs(results: Results, axes: Iterable[Axes], *filenames: str) -> bool:
    """The check every figure starts with: True, and a "not run" note on each of ``axes``,
    when a results file it draws from is absent (the notebook relies on it never raising)."""
    absent = results.absent(*filenames)
    if absent:
        note = "Not run: " + ", ".join(f"results/{f}" for f in absent) + " missing"
        for ax in axes:
            not_run(ax, note)
    return bool(absent)


def mark_train_loops(ax: Axes, results: Results, models: Iterable[str], palette: dict[str, RGB] | None = None) -> None:
    """A dotted vertical line in the model's colour (``palette``, default the run's) at its
    training loop count; models that share a count get lines side by side so every colour
    stays visible."""
    by_loops: dict[int, list[str]] = {}
    for name in models:
        loops = results.model(name).train_loops
        if loops is not None:
            by_loops.setdefault(int(loops), []).append(name)
    palette = palette or colors(results)
    for loops, names in by_loops.items():
        for index, name in enumerate(names):
            x = loops + dodge(index, len(names), 0.08)
            ax.axvline(x, color=palette[name], linestyle=":", linewidth=1.6, alpha=0.9, zorder=1)


def loop_ticks(ax: Axes, loops: Iterable[Any]) -> None:
    ax.set_xticks(sorted({int(v) for v in loops}))


def dodge(index: int, count: int, width: float = 0.22) -> float:
    """The x offset of model ``index`` of ``count`` so that points at one loop count do not overlap."""
    return (index - (count - 1) / 2) * width


def latency_new_tokens(results: Results) -> str:
    """ ", N new tokens" for the latency axis label when every latency row generated N tokens."""
    if results.latency is not None and "new_tokens" in results.latency.columns:
        values = results.latency["new_tokens"].dropna().unique()
        if len(values) == 1:
            return f", {int(values[0])} new tokens"
    return ""


def save_figure(figure: Figure, directory: Path, name: str) -> list[Path]:
    """Write ``name.png`` (150 dpi) and ``name.pdf`` atomically; returns both paths.

    Rendered into memory first, so an interrupted report never leaves half a file, and
    without timestamps or versions in the metadata, so a redraw is byte-stable."""
    paths = []
    for extension, metadata in (("png", {"Software": None}), ("pdf", {"CreationDate": None, "Producer": None})):
        buffer = io.BytesIO()
        figure.savefig(buffer, format=extension, dpi=DPI, metadata=metadata)
        path = Path(directory) / f"{name}.{extension}"
        atomic_write_bytes(path, buffer.getvalue())
        paths.append(path)
    return paths


def accuracy_legend(
    figure: Figure,
    axes: Sequence[Axes],
    results: Results,
    models: Sequence[str],
    star: str,
    own_figure: bool,
    loc: Literal["lower right", "upper right"],
) -> None:
    """The legend of an accuracy-vs-depth figure: each model's line and marker, the star of
    its most accurate depth (``star`` says what it marks) and the dotted training depths.
    Below the panels on a figure of its own; inside the last panel (at ``loc``) when the
    panels are drawn onto someone else's axes."""
    palette = colors(results)
    handles = [
        Line2D([], [], color=palette[n], marker=marker(results, n), lw=1.5, label=results.legend_label(n))
        for n in models
    ]
    handles += [
        Line2D([], [], marker="*", ms=12, mfc="0.5", mec="black", ls="none", label=star),
        Line2D([], [], color="0.3", lw=1.6, ls=":", label="training loop count"),
    ]
    if own_figure:
        figure.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 3))
    else:
        axes[-1].legend(handles=handles, loc=loc)
