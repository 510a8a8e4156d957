"""The report stage: figures and ``report.md`` from a run directory's results files.

The loaders (``load_results``) and the figure functions (``plot_*``) are shared by the
report and by ``notebooks/figures.ipynb``: each figure function takes a ``Results`` and,
optionally, axes to draw on, and returns the matplotlib Figure. A results file that is
missing (its stage was not run) never raises: the figure shows a "not run" note and
the report says which file is missing.

    python -m study.report --run-dir runs/mini-seed2026 [--export-figures figures]
    python -m study.report compare runs/v16-seed2026 runs/v17-seed2026 --out runs/compare

Where things are: ``results`` (loading), ``tables`` (Pareto front, Table 1), ``style``
(what every figure shares), ``figures/`` (one module per figure, ``FIGURES`` orders and
numbers them), ``formats`` (numbers and markdown tables), ``markdown`` (report.md),
``compare`` (comparing runs), ``cli`` (the command line). This module only re-exports.
"""

from study.report.cli import build_compare_parser, build_parser, main
from study.report.compare import compare, plot_compare
from study.report.figures import FIGURES, figure_number, figure_spec, write_figures
from study.report.figures.adaptive_depths import plot_adaptive_depths
from study.report.figures.adaptive_frontier import plot_adaptive_frontier
from study.report.figures.adaptive_latency import plot_adaptive_latency
from study.report.figures.benchmarks import plot_benchmarks
from study.report.figures.depth_shift import plot_depth_shift
from study.report.figures.exact_match import EXTRACTION_TITLES, plot_exact_match
from study.report.figures.frontier import plot_frontier
from study.report.figures.latency import plot_latency
from study.report.figures.nll_vs_loops import plot_nll_vs_loops
from study.report.figures.schedules import plot_schedules
from study.report.figures.sft_loss import plot_sft_loss
from study.report.formats import format_nll, format_percent, format_seconds, markdown_table
from study.report.markdown import regenerate, render_report, write_report
from study.report.results import HELDOUT, RESULT_FILES, SEEN, SPLIT_LABELS, TEST, ModelInfo, Results, load_results
from study.report.style import DPI, STYLE, FigureSpec, model_colors, save_figure
from study.report.tables import frontier_points, pareto_front, table1
from study.tasks.gsm8k import EXTRACTIONS

__all__ = [
    "DPI", "EXTRACTIONS", "EXTRACTION_TITLES", "FIGURES", "HELDOUT", "RESULT_FILES", "SEEN", "SPLIT_LABELS", "STYLE",
    "TEST", "FigureSpec",
    "ModelInfo", "Results", "build_compare_parser", "build_parser", "compare", "figure_number", "figure_spec",
    "format_nll", "format_percent", "format_seconds", "frontier_points", "load_results", "main", "markdown_table",
    "model_colors", "pareto_front", "plot_adaptive_depths", "plot_adaptive_frontier", "plot_adaptive_latency",
    "plot_benchmarks", "plot_compare", "plot_depth_shift", "plot_exact_match", "plot_frontier", "plot_latency",
    "plot_nll_vs_loops", "plot_schedules", "plot_sft_loss", "regenerate", "render_report", "save_figure", "table1",
    "write_figures", "write_report",
]  # fmt: skip
