"""GSM8K exact match against inference loops, one panel per answer extraction."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from study.report.results import Results
from study.report.style import (
    FigureSpec,
    accuracy_legend,
    colors,
    dodge,
    loop_ticks,
    mark_train_loops,
    marker,
    missing_inputs,
    root_figure,
    styled,
)
from study.tasks.gsm8k import EXTRACTIONS

# how the report names the exact-match stage's verdicts (EXTRACTIONS: study.tasks.gsm8k.score_text)
EXTRACTION_TITLES = {
    "strict": "strict: '#### N', numeric",
    "flexible": "flexible: last number, numeric",
    "lm_eval_strict": "lm-eval strict-match",
    "lm_eval_flexible": "lm-eval flexible-extract",
}


@styled
def plot_exact_match(results: Results, axes: Sequence[Axes] | None = None) -> Figure:
    """GSM8K exact-match accuracy per loop count with Wilson 95% intervals, one
    panel per extraction (``EXTRACTIONS``: the numeric strict and flexible verdicts on top,
    lm-eval's string verdicts below); stars mark each model's best depth."""
    own_figure = axes is None
    if axes is None:
        figure = Figure(figsize=(9.5, 8.4), layout="constrained")
        axes = list(figure.subplots(2, 2, sharex=True, sharey=True).ravel())
    else:
        figure = root_figure(axes[0])
    if missing_inputs(results, axes, "exact_match.csv"):
        return figure
    palette = colors(results)
    em = results.exact_match
    assert em is not None  # missing_inputs found results/exact_match.csv
    models = results.models_in(em)
    for ax, extraction in zip(axes, EXTRACTIONS, strict=False):
        rows_all = em[em["extraction"] == extraction]
        for index, name in enumerate(models):
            rows = rows_all[rows_all["model"] == name].sort_values("inference_loops")
            if rows.empty:
                continue
            colour = palette[name]
            x = rows["inference_loops"].to_numpy(dtype=float) + dodge(index, len(models))
            accuracy = 100 * rows["accuracy"].to_numpy(dtype=float)
            error = [accuracy - 100 * rows["ci_low"].to_numpy(), 100 * rows["ci_high"].to_numpy() - accuracy]
            ax.errorbar(x, accuracy, yerr=error, fmt=f"-{marker(results, name)}", color=colour, ms=5, capsize=3, lw=1.5)
            if accuracy.max() > 0:
                top = int(np.argmax(accuracy))
                ax.plot(x[top], accuracy[top], "*", ms=16, mfc=colour, mec="black", mew=0.9, zorder=6)
        mark_train_loops(ax, results, models)
        loop_ticks(ax, em["inference_loops"])
        counts = rows_all["n"].dropna().unique()
        n_text = f", n = {int(counts[0])}" if len(counts) == 1 else ""
        ax.set_title(f"{EXTRACTION_TITLES.get(extraction, extraction)}{n_text}")
        if ax in axes[-2:] or len(axes) != 4:  # a 2x2 grid shares x: label the bottom row
            ax.set_xlabel(results.depth_label)
        ax.set_ylim(bottom=0)
    for ax in axes[:: 2 if len(axes) == 4 else len(axes)]:
        ax.set_ylabel("exact-match accuracy (%, Wilson 95% CI)")
    accuracy_legend(figure, axes, results, models, "best depth of the model", own_figure, "upper right")
    figure.suptitle("GSM8K test exact match vs inference loops (higher is better)")
    return figure


FIGURE = FigureSpec(
    "exact_match",
    "Exact match vs inference loops",
    plot_exact_match,
    ("exact_match.csv",),
    "GSM8K test exact match with Wilson 95% intervals under the four extractions (top: the number after "
    "'#### ' and the last number, judged numerically; bottom: lm-eval's gsm8k strict-match and "
    "flexible-extract verdicts); stars mark each model's best depth. Source: `results/exact_match.csv`.",
)
