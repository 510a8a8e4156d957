"""The depth-shift test drawn: the paired curve D(K) of every pair of fine-tuned models
(top row) and each model's paired gap to its own argmin depth (bottom row), one column
per split, each with its two-level bootstrap CI band.

Paired differences, not overlapping NLL bands: the same questions are scored at every
depth and by both models of a pair, so the bands here are those of the differences the
study is about (``results/depth_shift.csv``, ``results/replication.csv``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from study.report.results import SHIFT_FILES, Results
from study.report.style import (
    RGB,
    FigureSpec,
    colors,
    loop_ticks,
    mark_train_loops,
    marker,
    missing_inputs,
    not_run,
    styled,
)

SHIFT_SPLITS = ("test", "heldout")  # the panels, when present; other splits only when neither is
ACROSS_SEEDS = "all"  # study.stages.nll_shift.ACROSS_SEEDS (the report does not import the stages)
SPLIT_TITLES = {"test": "test", "heldout": "held-out train questions", "seen": "seen (SFT data)"}
GREY: RGB = (0.4, 0.4, 0.4)


def panel_splits(frame: pd.DataFrame, splits: Sequence[str] = SHIFT_SPLITS) -> list[str]:
    """The splits to draw: ``splits`` that the file has, else every split it has."""
    present = list(dict.fromkeys(frame["split"].astype(str)))
    return [s for s in splits if s in present] or present


def _band(
    ax: Axes, rows: pd.DataFrame, columns: tuple[str, str, str], colour: RGB, label: str, symbol: str = "o"
) -> None:
    """A curve (``columns``: value, CI low, CI high) with its CI band; no band where the
    CSV has no CI (one seed, one question)."""
    value, low, high = columns
    x = rows["inference_loops"].to_numpy(dtype=float)
    if rows[low].notna().all():
        ax.fill_between(x, rows[low].to_numpy(dtype=float), rows[high].to_numpy(dtype=float), color=colour,
                        alpha=0.2, lw=0)  # fmt: skip
    ax.plot(x, rows[value].to_numpy(dtype=float), color=colour, lw=2.0, marker=symbol, ms=4.5, label=label)


def _s_text(pair: pd.DataFrame) -> str:
    s_row = pair[(pair["statistic"] == "S") & (pair["seed"] == ACROSS_SEEDS)]
    if s_row.empty or pd.isna(s_row["value"].iloc[0]):
        return "S not in grid"
    row = s_row.iloc[0]
    ci = f" [{row['ci_low']:+.4f}, {row['ci_high']:+.4f}]" if pd.notna(row["ci_low"]) else " (no CI)"
    return f"S = {row['value']:+.4f}{ci}"


def family_colors(results: Results) -> dict[str, RGB]:
    """The run's colours, plus each family (``train4``) in the colour of its first member."""
    palette = colors(results)
    for info in results.models:
        palette.setdefault(info.family, palette[info.name])
    return palette


def family_label(results: Results, family: str) -> str:
    """``Train4``: the label of the family's model, without a replicate's seed."""
    return results.model(family).family_label


def _shift_panel(ax: Axes, results: Results, rows: pd.DataFrame, palette: dict[str, RGB]) -> None:
    pairs = rows[["model_a", "model_b"]].drop_duplicates().itertuples(index=False)
    marked: list[str] = []
    for model_a, model_b in pairs:
        pair = rows[(rows["model_a"] == model_a) & (rows["model_b"] == model_b)]
        curve = pair[(pair["statistic"] == "D") & (pair["seed"] == ACROSS_SEEDS)].sort_values("inference_loops")
        label = f"{family_label(results, model_a)} − {family_label(results, model_b)}: {_s_text(pair)}"
        _band(ax, curve, ("value", "ci_low", "ci_high"), palette.get(model_a, GREY), label)
        marked += [m for m in (model_a, model_b) if m not in marked]
    ax.axhline(0.0, color="0.2", lw=0.9, zorder=1)
    mark_train_loops(ax, results, marked, palette)
    loop_ticks(ax, rows.loc[rows["statistic"] == "D", "inference_loops"])
    ax.set_ylabel("D(K) = NLL_A(K) − NLL_B(K) (nats/token)")
    handles = [*ax.get_legend_handles_labels()[0], Line2D([], [], color="0.3", lw=1.6, ls=":", label="training depths")]
    ax.legend(handles=handles, loc="best")


def _gap_panel(ax: Axes, results: Results, rows: pd.DataFrame, palette: dict[str, RGB]) -> None:
    models = list(dict.fromkeys(rows["model"]))
    for name in models:
        colour = palette.get(name, GREY)
        model_rows = rows[rows["model"] == name]
        for _, seed_rows in model_rows[model_rows["seed"] != ACROSS_SEEDS].groupby("seed", sort=False):
            seed_rows = seed_rows.sort_values("inference_loops")
            ax.plot(seed_rows["inference_loops"], seed_rows["gap_to_best"], color=colour, lw=0.8, alpha=0.35)
        pooled = model_rows[model_rows["seed"] == ACROSS_SEEDS].sort_values("inference_loops")
        if pooled.empty:
            continue
        seeds = int(pooled["seeds"].iloc[0])
        trained = results.model(name).train_loops
        trained_at = "" if trained is None else f" (trained at {trained} loops)"
        label = f"{family_label(results, name)}{trained_at}, {seeds} seed{'s' if seeds != 1 else ''}"
        _band(ax, pooled, ("gap_to_best", "gap_ci_low", "gap_ci_high"), colour, label, marker(results, name))
        best = pooled[pooled["inference_loops"] == pooled["best_loops"]]
        ax.plot(best["inference_loops"], best["gap_to_best"], marker="*", ms=14, mfc=colour, mec="black",
                ls="none", zorder=6)  # fmt: skip
    mark_train_loops(ax, results, models, palette)
    loop_ticks(ax, rows["inference_loops"])
    ax.set_ylabel("NLL(K) − NLL(argmin) (nats/token)")
    handles = [*ax.get_legend_handles_labels()[0]]
    handles += [
        Line2D([], [], color="0.3", lw=0.8, alpha=0.5, label="single seeds"),
        Line2D([], [], color="0.3", marker="*", ms=10, ls="none", mfc="0.3", mec="black", label="pooled argmin"),
        Line2D([], [], color="0.3", lw=1.6, ls=":", label="training depth"),
    ]
    ax.legend(handles=handles, loc="best")


@styled
def plot_depth_shift(results: Results) -> Figure:
    """Top: D(K) per pair with its two-level CI band, a zero line, the pair's training
    depths dotted and S in the legend. Bottom: each model's pooled gap to its own argmin
    (two-level CI band; thin lines: single seeds). One column per split."""
    shift, replication = results.depth_shift, results.replication
    columns = 1 if shift is None or shift.empty else len(panel_splits(shift))
    figure = Figure(figsize=(6.6 * columns, 8.4), layout="constrained")
    axes = figure.subplots(2, columns, squeeze=False)
    if missing_inputs(results, list(axes.ravel()), *SHIFT_FILES):
        return figure
    assert shift is not None and replication is not None  # missing_inputs found both files
    if shift.empty:
        for ax in axes.ravel():
            not_run(ax, "No pair of fine-tuned models with different training depths")
        return figure
    palette = family_colors(results)
    for column, split in enumerate(panel_splits(shift)):
        top, bottom = axes[0, column], axes[1, column]
        _shift_panel(top, results, shift[shift["split"] == split], palette)
        top.set_title(f"Depth shift, {SPLIT_TITLES.get(split, split)}")
        gaps = replication[replication["split"] == split]
        if gaps.empty:
            not_run(bottom, f"No replication rows for split {split}")
        else:
            _gap_panel(bottom, results, gaps, palette)
            bottom.set_title(f"Gap to own argmin, {SPLIT_TITLES.get(split, split)}")
        bottom.set_xlabel(results.depth_label)
    top_limits = [ax.get_ylim() for ax in axes[0]]
    if top_limits:  # one y scale across splits: the shifts compare by eye
        low, high = float(np.min([v[0] for v in top_limits])), float(np.max([v[1] for v in top_limits]))
        for ax in axes[0]:
            ax.set_ylim(low, high)
    return figure


FIGURE = FigureSpec(
    "depth_shift",
    "The depth-shift test: paired differences between models and depths",
    plot_depth_shift,
    SHIFT_FILES,
    "Top: D(K) = NLL_A(K) − NLL_B(K) for each pair of fine-tuned models with different training depths (A trained "
    "deeper), pooled over seed pairs on the same questions; S = D(train depth of A) − D(train depth of B) in the "
    "legend (S < 0: training deeper favours the deeper depth). Bottom: each model's gap to its own pooled argmin "
    "(thin lines: single seeds). Bands are two-level bootstrap CIs (seeds, then questions); dotted lines mark "
    "training depths. Sources: `results/depth_shift.csv`, `results/replication.csv`.",
)
