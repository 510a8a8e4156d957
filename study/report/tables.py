"""Tables derived from the results: the Pareto front of latency and NLL, and Table 1
(each model's preferred depth with its CIs and the gaps to the depths either side)."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, cast

import numpy as np
import pandas as pd

from study.report.results import HELDOUT, TEST, Results


def row_at(frame: pd.DataFrame, label: Hashable) -> pd.Series:
    """``frame.loc[label]``: the row at ``label`` (from ``idxmin``) of a frame with unique index labels.

    The casts are for pandas-stubs only: ``.loc`` takes no bare ``Hashable`` (which ``idxmin``
    returns) and types a one-label lookup ``Series | DataFrame`` (a DataFrame only for a repeated
    label, which the report's frames, read from CSV or filtered from one, never have)."""
    return cast(pd.Series, frame.loc[cast(Any, label)])


def pareto_front(points: pd.DataFrame, x: str = "median_s", y: str = "nll_per_token") -> pd.Series:
    """True for the points no other point beats on both ``x`` and ``y`` (lower is better on
    both): a point is dominated when another is at least as low on both and lower on one."""
    xs = points[x].to_numpy(dtype=float)
    ys = points[y].to_numpy(dtype=float)
    optimal = []
    for xi, yi in zip(xs, ys, strict=True):
        dominated = np.any((xs <= xi) & (ys <= yi) & ((xs < xi) | (ys < yi)))
        optimal.append(not dominated)
    return pd.Series(optimal, index=points.index, dtype=bool)


def frontier_points(results: Results) -> pd.DataFrame | None:
    """One row per (model, loops) with median latency and test NLL; ``pareto`` marks each
    model's own Pareto-optimal depths, ``pareto_all`` those optimal across all models,
    ``best`` each model's lowest-NLL depth and ``tied`` the depths whose gap to it has a
    CI containing 0 (from preferred_depth.csv; only the best when that file is missing)."""
    if results.latency is None or results.nll is None:
        return None
    nll = results.nll[results.nll["split"] == TEST][["model", "inference_loops", "nll_per_token", "ci_low", "ci_high"]]
    latency = results.latency[["model", "inference_loops", "median_s", "p10_s", "p90_s"]]
    points = latency.merge(nll, on=["model", "inference_loops"], how="inner")
    if points.empty:
        return points.assign(pareto=[], pareto_all=[], best=[], tied=[])
    points["pareto_all"] = pareto_front(points)
    points["pareto"] = False
    points["best"] = False
    points["tied"] = False
    for model, group in points.groupby("model", sort=False):
        points.loc[group.index, "pareto"] = pareto_front(group)
        points.loc[group["nll_per_token"].idxmin(), "best"] = True
        if results.preferred is not None:
            gaps = results.preferred[(results.preferred["model"] == model) & (results.preferred["split"] == TEST)]
            tied_loops = set(gaps.loc[gaps["gap_ci_low"] <= 0, "inference_loops"].astype(int))
            points.loc[group.index, "tied"] = group["inference_loops"].astype(int).isin(tied_loops)
    points["tied"] |= points["best"]
    return points


def _best_rows(results: Results, split: str) -> dict[str, pd.Series]:
    """Each model's lowest-NLL row on ``split`` (from preferred_depth.csv, else nll_summary.csv)."""
    best: dict[str, pd.Series] = {}
    if results.preferred is not None:
        rows = results.preferred[results.preferred["split"] == split]
        for model, group in rows.groupby("model", sort=False):
            chosen = group[group["inference_loops"] == group["best_loops"].iloc[0]]
            best[str(model)] = (chosen if not chosen.empty else group.loc[[group["nll_per_token"].idxmin()]]).iloc[0]
    elif results.nll is not None:
        rows = results.nll[results.nll["split"] == split]
        for model, group in rows.groupby("model", sort=False):
            best[str(model)] = row_at(group, group["nll_per_token"].idxmin())
    return best


def _nll_ci(results: Results, model: str, split: str, loops: int) -> tuple[float, float] | None:
    if results.nll is None:
        return None
    row = results.nll[
        (results.nll["model"] == model) & (results.nll["split"] == split) & (results.nll["inference_loops"] == loops)
    ]
    return None if row.empty else (float(row["ci_low"].iloc[0]), float(row["ci_high"].iloc[0]))


def table1(results: Results) -> pd.DataFrame:
    """Table 1, one row per model: training depth, the test and heldout argmin depths with
    their NLL (and bootstrap CI on test), whether they agree (``train_test_match``: the
    heldout questions are GSM8K train questions no SFT subset contains), P(argmin = training depth)
    on test, and the paired-bootstrap gap CIs to the loop counts either side of the test
    argmin (``not in grid`` when the training depth is not on it). Empty when neither
    preferred_depth.csv nor nll_summary.csv exists."""
    columns = [
        "model", "label", "train_loops", "best_test_loops", "best_test_nll", "best_test_ci_low", "best_test_ci_high",
        "best_heldout_loops", "best_heldout_nll", "train_test_match", "p_best_is_train_loops", "neighbour_gaps",
    ]  # fmt: skip
    best_test, best_heldout = _best_rows(results, TEST), _best_rows(results, HELDOUT)
    rows = []
    for name in [m.name for m in results.models if m.name in best_test or m.name in best_heldout]:
        info = results.model(name)
        test, heldout = best_test.get(name), best_heldout.get(name)
        test_loops = int(test["inference_loops"]) if test is not None else None
        heldout_best = int(heldout["inference_loops"]) if heldout is not None else None
        ci = _nll_ci(results, name, TEST, test_loops) if test_loops is not None else None
        match: bool | None = None
        if test is not None and "train_test_match" in test.index:
            match = bool(test["train_test_match"])
        elif test_loops is not None and heldout_best is not None:
            match = test_loops == heldout_best
        p_train = (
            share_of(test["p_best_is_train_loops"])
            if test is not None and "p_best_is_train_loops" in test.index
            else None
        )
        rows.append(
            {
                "model": name,
                "label": info.label,
                "train_loops": info.train_loops,
                "best_test_loops": test_loops,
                "best_test_nll": float(test["nll_per_token"]) if test is not None else None,
                "best_test_ci_low": ci[0] if ci else None,
                "best_test_ci_high": ci[1] if ci else None,
                "best_heldout_loops": heldout_best,
                "best_heldout_nll": float(heldout["nll_per_token"]) if heldout is not None else None,
                "train_test_match": match,
                "p_best_is_train_loops": p_train,
                "neighbour_gaps": _neighbour_gaps(results, name, test_loops),
            }
        )
    return pd.DataFrame(rows, columns=columns)


def share_of(value: Any) -> float | str | None:
    """A ``p_best_is_train_loops`` cell as read back: a number, the words the NLL stage
    wrote when the training depth is off the grid (``not in grid``), or None when absent."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    try:
        return float(value)
    except ValueError:
        return str(value)


def _neighbour_gaps(results: Results, model: str, best_loops: int | None) -> list[dict[str, float]]:
    """Gap (NLL(loops) - NLL(best)) with its CI for the loop counts just below and above the best."""
    if results.preferred is None or best_loops is None:
        return []
    rows = results.preferred[(results.preferred["model"] == model) & (results.preferred["split"] == TEST)]
    grid = sorted(int(v) for v in rows["inference_loops"].unique())
    if best_loops not in grid:
        return []
    position = grid.index(best_loops)
    neighbours = [grid[i] for i in (position - 1, position + 1) if 0 <= i < len(grid)]
    gaps = []
    for loops in neighbours:
        row = rows[rows["inference_loops"] == loops].iloc[0]
        gaps.append(
            {
                "loops": loops,
                "gap": float(row["gap_to_best"]),
                "ci_low": float(row["gap_ci_low"]),
                "ci_high": float(row["gap_ci_high"]),
            }
        )
    return gaps


def best_halting(results: Results, model: str, split: str = TEST) -> pd.Series | None:
    """The model's halting policy with the lowest NLL on ``split`` (None when none ran)."""
    frame = results.adaptive
    if frame is None:
        return None
    rows = frame[(frame["model"] == model) & (frame["split"] == split) & (frame["kind"] == "halting")]
    return None if rows.empty else row_at(rows, rows["nll_per_token"].idxmin())
