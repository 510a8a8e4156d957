"""Figures and the report section of the adaptive stage ("Fixed or per-input depth?").

Read from ``results/adaptive.csv``, ``oracle_frontier.csv`` and ``adaptive_depths.csv``
(``study.stages.adaptive``); a run without them gets no figure and no section.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt  # study.report (loaded first: the package) picks the backend
import pandas as pd
from matplotlib.figure import Figure

SPLIT = "test"
FRONTIER_FIGURE = "adaptive_frontier"
DEPTHS_FIGURE = "adaptive_depths"


def load(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame] | None:
    results = Path(run_dir) / "results"
    paths = [results / name for name in ("adaptive.csv", "oracle_frontier.csv", "adaptive_depths.csv")]
    if not all(p.is_file() for p in paths):
        return None
    return tuple(pd.read_csv(p) for p in paths)  # type: ignore[return-value]


def _models(frame: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(frame["model"]))


def plot_adaptive_frontier(frame: pd.DataFrame, frontier: pd.DataFrame, split: str = SPLIT) -> Figure:
    """NLL vs mean executed loops, one panel per model: the fixed depths, each halting
    rule's tau sweep as a curve, and the oracle's budgeted frontier as a staircase."""
    models = _models(frame)
    figure, axes = plt.subplots(1, len(models), figsize=(4.6 * len(models), 4.0), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        rows = frame[(frame["model"] == model) & (frame["split"] == split)]
        fixed = rows[rows["kind"] == "fixed"].sort_values("mean_loops")
        ax.plot(fixed["mean_loops"], fixed["nll_per_token"], "o-", color="black", label="fixed depth")
        points = frontier[(frontier["model"] == model) & (frontier["split"] == split)].sort_values("mean_loops")
        ax.step(points["mean_loops"], points["nll_per_token"], where="post", color="tab:green", label="oracle")
        halting = rows[rows["kind"] == "halting"]
        for detail, curve in halting.groupby("detail", sort=True):
            curve = curve.sort_values("mean_loops")
            ax.plot(curve["mean_loops"], curve["nll_per_token"], "s--", label=f"halting: {detail} (tau sweep)")
        ax.set_title(f"{model} ({split})")
        ax.set_xlabel("mean executed loops per example")
        ax.set_ylabel("NLL per token (nats)")
        ax.legend(fontsize=7)
    figure.tight_layout()
    return figure


def best_halting(frame: pd.DataFrame, model: str, split: str = SPLIT) -> pd.Series | None:
    """The model's halting policy with the lowest NLL (None when none ran)."""
    rows = frame[(frame["model"] == model) & (frame["split"] == split) & (frame["kind"] == "halting")]
    return None if rows.empty else rows.loc[rows["nll_per_token"].idxmin()]


def plot_adaptive_depths(frame: pd.DataFrame, depths: pd.DataFrame, split: str = SPLIT) -> Figure:
    """Histogram of the depth each example got: the oracle's best fixed depth, and the
    depth the model's best halting policy stopped at."""
    models = _models(frame)
    figure, axes = plt.subplots(1, len(models), figsize=(4.6 * len(models), 3.6), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        chosen = depths[(depths["model"] == model) & (depths["split"] == split)]
        shown = ["oracle"]
        best = best_halting(frame, model, split)
        if best is not None:
            shown.append(best["policy"])
        values = [chosen[chosen["policy"] == p]["chosen_depth"].to_numpy() for p in shown]
        edges = sorted({float(v) for vs in values for v in vs})
        bins = [e - 0.5 for e in range(int(min(edges)), int(max(edges)) + 2)] if edges else 10
        ax.hist(values, bins=bins, label=shown)
        ax.set_title(f"{model} ({split})")
        ax.set_xlabel("chosen depth (loops)")
        ax.set_ylabel("examples")
        ax.legend(fontsize=7)
    figure.tight_layout()
    return figure


def write_adaptive_figures(run_dir: Path, figures_dir: Path) -> list[Path]:
    loaded = load(run_dir)
    if loaded is None:
        return []
    frame, frontier, depths = loaded
    figures_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, figure in (
        (FRONTIER_FIGURE, plot_adaptive_frontier(frame, frontier)),
        (DEPTHS_FIGURE, plot_adaptive_depths(frame, depths)),
    ):
        path = figures_dir / f"{name}.png"
        figure.savefig(path, dpi=120, metadata={"Software": None})
        plt.close(figure)
        written.append(path)
    return written


def _ci(low: float, high: float) -> str:
    return f"[{low:+.4f}, {high:+.4f}]"


def adaptive_section(run_dir: Path, figures_rel: str = "figures") -> list[str]:
    """The report's "Fixed or per-input depth?" section (empty when the stage did not run)."""
    loaded = load(run_dir)
    if loaded is None:
        return []
    frame, _, _ = loaded
    lines = ["## Fixed or per-input depth?", ""]
    for model in _models(frame):
        rows = frame[(frame["model"] == model) & (frame["split"] == SPLIT)]
        best = rows[rows["kind"] == "best_fixed"].iloc[0]
        oracle = rows[rows["kind"] == "oracle"].iloc[0]
        lines.append(
            f"- **{model}**: best fixed depth {best['detail']} at {best['nll_per_token']:.4f} nats/token; the "
            f"oracle (each example at its best depth, {oracle['mean_loops']:.2f} mean loops) reaches "
            f"{oracle['nll_per_token']:.4f} ({oracle['gap_to_best_fixed']:+.4f}, CI "
            f"{_ci(oracle['gap_ci_low'], oracle['gap_ci_high'])})."
        )
        halting = rows[rows["kind"] == "halting"]
        if halting.empty:
            continue
        compared = halting[halting["equal_compute_fixed"].notna()]
        wins = compared[compared["equal_ci_high"] < 0]
        # the policy that does best against the fixed depth it could afford (lowest NLL when none fits)
        top = (
            compared.loc[compared["gap_to_equal_compute"].astype(float).idxmin()]
            if not compared.empty
            else halting.loc[halting["nll_per_token"].idxmin()]
        )
        verdict = (
            f"{len(wins)} of {len(halting)} halting policies beat the best fixed depth within their mean loops "
            "(CI of the gap below 0)"
            if len(wins)
            else f"no halting policy of {len(halting)} beats the best fixed depth within its mean loops"
        )
        equal = (
            f"{top['gap_to_equal_compute']:+.4f}, CI {_ci(top['equal_ci_low'], top['equal_ci_high'])} vs "
            f"{top['equal_compute_fixed']}"
            if isinstance(top["equal_compute_fixed"], str)
            else "no fixed depth is that cheap"
        )
        lines.append(
            f"  {verdict}. Best at equal compute: {top['policy']} at {top['mean_loops']:.2f} mean loops, "
            f"{top['nll_per_token']:.4f} nats/token (vs best fixed {top['gap_to_best_fixed']:+.4f}, CI "
            f"{_ci(top['gap_ci_low'], top['gap_ci_high'])}; at equal compute {equal}); the oracle at that budget "
            f"reaches {top['oracle_nll_at_budget']:.4f} ({top['nll_per_token'] - top['oracle_nll_at_budget']:+.4f} "
            "to go)."
        )
    lines += [
        "",
        "Costs are loops actually executed, averaged over examples (a ladder pays for every rung it ran). "
        "Gaps are paired over examples, 95% percentile bootstrap. Source: `results/adaptive.csv`, "
        "`results/oracle_frontier.csv`, `results/adaptive_depths.csv`.",
        "",
    ]
    for name in (FRONTIER_FIGURE, DEPTHS_FIGURE):
        if (Path(run_dir) / figures_rel / f"{name}.png").is_file():
            lines += [f"![{name}]({figures_rel}/{name}.png)", ""]
    return lines
