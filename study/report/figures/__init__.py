"""The report's figures, one module each, and ``FIGURES``: their one order.

A figure's number in report.md is its place in ``FIGURES`` (``figure_number``). A new
figure is a module here with a ``plot_*`` function and a ``FIGURE = FigureSpec(...)``,
added to ``FIGURES`` where it should appear, and a ``_figure_block`` in ``markdown.py``.
"""

from __future__ import annotations

from pathlib import Path

from study.report.figures import (
    adaptive_depths,
    adaptive_frontier,
    adaptive_latency,
    benchmarks,
    depth_shift,
    exact_match,
    frontier,
    latency,
    nll_vs_loops,
    schedules,
    sft_loss,
)
from study.report.results import Results
from study.report.style import FigureSpec, save_figure

FIGURES: tuple[FigureSpec, ...] = (
    nll_vs_loops.FIGURE,
    exact_match.FIGURE,
    latency.FIGURE,
    frontier.FIGURE,
    sft_loss.FIGURE,
    depth_shift.FIGURE,
    schedules.FIGURE,
    benchmarks.FIGURE,
    adaptive_frontier.FIGURE,
    adaptive_depths.FIGURE,
    adaptive_latency.FIGURE,
)


def figure_spec(name: str) -> FigureSpec:
    return next(spec for spec in FIGURES if spec.name == name)


def figure_number(name: str) -> int:
    """Figures are numbered in the order of ``FIGURES``, the order report.md shows them."""
    return [spec.name for spec in FIGURES].index(name) + 1


def write_figures(results: Results, figures_dir: Path) -> dict[str, Path | None]:
    """Draw every figure whose results files exist; returns name -> PNG path (None when not
    drawn). A figure that cannot be drawn loses its stale PNG/PDF from an earlier report."""
    written: dict[str, Path | None] = {}
    for spec in FIGURES:
        if results.absent(*spec.needs):
            for extension in ("png", "pdf"):
                (Path(figures_dir) / f"{spec.name}.{extension}").unlink(missing_ok=True)
            written[spec.name] = None
            continue
        figure = spec.plot(results)
        # every figure names its base model (the offline SmolLM2 as the quantized copy it is), in a
        # strip the constrained layout keeps free below the axes
        engine = figure.get_layout_engine()
        if engine is not None and hasattr(engine, "set") and "rect" in engine.get():
            # stubs: the base LayoutEngine.set takes no keywords; the engines whose get() has rect take rect=
            engine.set(rect=(0, 0.035, 1, 0.965))  # type: ignore[call-arg]
        figure.text(0.005, 0.004, f"model: {results.model_label}", fontsize=7, color="0.35", ha="left", va="bottom")
        written[spec.name] = save_figure(figure, figures_dir, spec.name)[0]
    return written
