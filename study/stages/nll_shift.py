"""Replicate seeds and the depth-shift test: the rows of ``replication.csv`` and ``depth_shift.csv``.

Pure functions of ``DepthCurves`` (one model family on one split: every replicate seed's
summed gold-answer NLL at every inference depth, over the same questions); the NLL stage
builds the curves from its cells and writes the rows. NLL per token of a set of questions
is sum(NLL) / sum(tokens), as everywhere in the study.

**replication.csv** (``REPLICATION_COLUMNS``), per model and split:

- one row group per seed (``seed`` = the replicate seed, empty for the base, which runs
  once): each depth's NLL per token, the argmin depth (``best_loops``), each depth's gap
  to it with a paired question-bootstrap CI (``study.stats.paired_depth_bootstrap``: the
  same resampled questions for every depth), the share of resamples each depth wins
  (``p_best``) and whether the argmin is the training depth (``best_is_train_loops``:
  ``true``, ``false`` or ``not in grid`` when the training depth is not a grid depth);
- one row group across seeds (``seed`` = ``all``): the pooled curve (the mean over seeds
  of each seed's NLL per token), its argmin, each depth's gap to it with a two-level
  bootstrap CI (``study.stats.two_level_bootstrap``: seeds resampled with replacement,
  then questions, one question resample shared by every seed and depth of a draw), and
  ``seeds_best_at_train`` of ``seeds``: how many seeds' own argmin is the training depth.

**depth_shift.csv** (``DEPTH_SHIFT_COLUMNS``): for every two fine-tuned models on one
split whose training depths differ (``model_a`` the deeper-trained, ``model_b`` the
other; the base enters no pair: the test is about what SFT at a depth does),

- ``D`` at each depth K: D(K) = NLL_a(K) - NLL_b(K) on the same questions, pooled over
  seed pairs, with its two-level bootstrap CI (a seed pair is drawn whole);
- ``S`` = D(train_loops_a) - D(train_loops_b) with its CI and a two-sided bootstrap
  p-value (``study.stats.bootstrap_p_value``: the share of resamples on the other side
  of 0, doubled, capped at 1; 0 means below 2 / resamples). S < 0: training at the larger
  depth favours the larger depth relative to the smaller one, which is the hypothesis
  "SFT at K aligns the preferred depth with K". One ``S`` row pools the seeds
  (``seed`` = ``all``), and one per seed pair gives that pair's S with its question CI.

How far to trust the two-level CI: resampling both levels counts each seed's own question
noise twice (once through the seed draw, once through the question draw), so with few seeds
it is conservative when seed-to-seed differences are small; and a bootstrap over a handful of
seeds has few distinct draws and (n - 1)/n of their variance, so it is optimistic when those
differences dominate. On synthetic curves (3 seeds, 40 questions, no true shift) the 95% CI
of S covered 0 in all of 200 data sets without per-seed offsets, in 93-96% with offsets
about the size of the question noise of a seed's mean, and in 87% of 100 with 2.5 times that.

Seed pairing: when both models have the same seed list, seed s of one is paired with
seed s of the other (``pairing`` = ``seed``: they share the SFT subset drawn for s);
otherwise the i-th seeds are paired (``pairing`` = ``index``, the ``seed`` label names
both as ``a/b``). Lists of different lengths cannot be paired and are refused.

What has no interval is written empty with a ``note``, never as NaN: fewer than two
questions (``n < 2 questions``); across seeds, fewer than two seeds (``1 seed``: a CI over
one seed would be a CI over questions only, which that seed's own rows already give); a
training depth that is not a grid depth (S is ``not in grid``). Refused with a
``StudyError``: curves whose arrays do not match their seeds, depths and questions, NaN or
infinite NLL, a model and split given twice, and a pair that was not scored on the same
questions or grid, or has different numbers of seeds.

Everything is deterministic: every bootstrap draws from ``np.random.default_rng(seed)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np

from study.errors import StudyError
from study.stats import (
    bootstrap_p_value,
    paired_depth_bootstrap,
    percentile_interval,
    ratio_of_sums,
    require_finite,
    two_level_bootstrap,
)

BASE_MODEL = "base"  # study.pipeline.BASE (not imported: this module stays free of torch)
ACROSS_SEEDS = "all"  # the ``seed`` of a row that pools every seed
NOT_IN_GRID = "not in grid"
FEW_QUESTIONS = "n < 2 questions: no CI"
ONE_SEED = "1 seed: no across-seed CI"

REPLICATION_COLUMNS = (
    "model", "seed", "split", "train_loops", "inference_loops", "nll_per_token", "best_loops", "is_best",
    "gap_to_best", "gap_ci_low", "gap_ci_high", "p_best", "best_is_train_loops", "seeds_best_at_train", "seeds",
    "questions", "note",
)  # fmt: skip
DEPTH_SHIFT_COLUMNS = (
    "model_a", "model_b", "train_loops_a", "train_loops_b", "split", "seed", "statistic", "inference_loops", "value",
    "ci_low", "ci_high", "p_value", "pairing", "seeds", "questions", "note",
)  # fmt: skip


@dataclass(frozen=True)
class DepthCurves:
    """One model family's NLL on one split, every replicate seed at every depth."""

    model: str  # family name without seed: "base", "train2", "train4"
    train_loops: int  # training depth (LoopFormer M or looped-decoder K)
    split: str  # "test", "heldout", "seen"
    inference_loops: list[int]  # the grid, increasing
    seeds: list[int | None]  # replicate seeds (base: [None])
    example_ids: list[int]
    nll: np.ndarray  # [seeds, depths, questions] summed gold-answer NLL (float64)
    tokens: np.ndarray  # [questions] answer tokens (same for every seed and depth)

    @property
    def name(self) -> str:
        return f"{self.model}/{self.split}"


def check_curves(curves: list[DepthCurves]) -> None:
    """Refuse curves whose arrays do not fit their seeds, depths and questions, or that
    repeat a model and split (one line naming the curve)."""
    seen: set[tuple[str, str]] = set()
    for curve in curves:
        where = f"depth curves {curve.name}"
        expected = (len(curve.seeds), len(curve.inference_loops), len(curve.example_ids))
        if np.shape(curve.nll) != expected or np.shape(curve.tokens) != expected[2:]:
            raise StudyError(
                f"{where}: nll has shape {np.shape(curve.nll)} and tokens {np.shape(curve.tokens)}; expected "
                f"[seeds, depths, questions] = {list(expected)} and [{expected[2]}]"
            )
        if 0 in expected:
            raise StudyError(f"{where}: needs at least one seed, depth and question, got {list(expected)}")
        if any(b <= a for a, b in zip(curve.inference_loops, curve.inference_loops[1:], strict=False)):
            raise StudyError(f"{where}: inference_loops {curve.inference_loops} are not increasing")
        if len(set(curve.seeds)) != len(curve.seeds) or len(set(curve.example_ids)) != len(curve.example_ids):
            raise StudyError(f"{where}: repeated seeds {curve.seeds} or example ids")
        require_finite(where, np.asarray(curve.nll, dtype=float), np.asarray(curve.tokens, dtype=float))
        if np.any(np.asarray(curve.tokens) < 1):
            raise StudyError(f"{where}: every question needs at least one answer token")
        if (curve.model, curve.split) in seen:
            raise StudyError(f"{where}: given twice")
        seen.add((curve.model, curve.split))


def _seed_label(seed: int | None) -> str:
    return "" if seed is None else str(seed)


def _train_flag(best_loops: int, train_loops: int, grid: list[int]) -> str:
    if train_loops not in grid:
        return NOT_IN_GRID
    return "true" if best_loops == train_loops else "false"


def _interval(low: float, high: float, note: str) -> tuple[float | None, float | None]:
    """A CI for the CSV: empty (None) when ``note`` says there is none."""
    return (None, None) if note else (float(low), float(high))


# ---- replication.csv -------------------------------------------------------------------------


def replication_rows(curves: list[DepthCurves], resamples: int, confidence: float, seed: int) -> list[dict]:
    """The rows of ``replication.csv``: per curve, one row group per seed, then one across
    seeds (``REPLICATION_COLUMNS``; see the module docstring)."""
    check_curves(curves)
    rows: list[dict] = []
    for curve in curves:
        tokens = np.asarray(curve.tokens, dtype=float)
        for index, replicate in enumerate(curve.seeds):
            rows += _seed_rows(curve, index, replicate, tokens, resamples, confidence, seed)
        rows += _across_seed_rows(curve, tokens, resamples, confidence, seed)
    return rows


def _common(curve: DepthCurves, seed_label: str, seeds: int) -> dict:
    return {
        "model": curve.model,
        "seed": seed_label,
        "split": curve.split,
        "train_loops": curve.train_loops,
        "seeds": seeds,
        "questions": len(curve.example_ids),
    }


def _seed_rows(
    curve: DepthCurves,
    index: int,
    replicate: int | None,
    tokens: np.ndarray,
    resamples: int,
    confidence: float,
    seed: int,
) -> list[dict]:
    grid = curve.inference_loops
    result = paired_depth_bootstrap(curve.nll[index], tokens, resamples, confidence, seed)
    best = grid[result.best_index]
    note = FEW_QUESTIONS if len(curve.example_ids) < 2 else ""
    common = _common(curve, _seed_label(replicate), 1)
    return [
        {
            **common,
            "inference_loops": loops,
            "nll_per_token": result.nll_per_token[i],
            "best_loops": best,
            "is_best": i == result.best_index,
            "gap_to_best": result.gap[i],
            **dict(zip(("gap_ci_low", "gap_ci_high"), _interval(*result.gap_ci[i], note), strict=True)),
            "p_best": None if note else result.p_best[i],
            "best_is_train_loops": _train_flag(best, curve.train_loops, grid),
            "seeds_best_at_train": None,
            "note": note,
        }
        for i, loops in enumerate(grid)
    ]


def _across_seed_rows(
    curve: DepthCurves, tokens: np.ndarray, resamples: int, confidence: float, seed: int
) -> list[dict]:
    grid = curve.inference_loops
    boot = two_level_bootstrap(curve.nll, tokens, resamples, seed)
    best_index = int(np.argmin(boot.point))
    best = grid[best_index]
    gaps = boot.distribution - boot.distribution[best_index]
    low, high = percentile_interval(gaps, confidence)
    wins = np.bincount(np.argmin(boot.distribution, axis=0), minlength=len(grid)) / resamples
    note = FEW_QUESTIONS if boot.questions < 2 else ONE_SEED if boot.seeds < 2 else ""
    seed_bests = [grid[i] for i in np.argmin(ratio_of_sums(np.asarray(curve.nll, dtype=float), tokens), axis=1)]
    at_train = None if curve.train_loops not in grid else sum(b == curve.train_loops for b in seed_bests)
    common = _common(curve, ACROSS_SEEDS, boot.seeds)
    return [
        {
            **common,
            "inference_loops": loops,
            "nll_per_token": float(boot.point[i]),
            "best_loops": best,
            "is_best": i == best_index,
            "gap_to_best": float(boot.point[i] - boot.point[best_index]),
            **dict(zip(("gap_ci_low", "gap_ci_high"), _interval(low[i], high[i], note), strict=True)),
            "p_best": None if note else float(wins[i]),
            "best_is_train_loops": _train_flag(best, curve.train_loops, grid),
            "seeds_best_at_train": at_train,
            "note": note,
        }
        for i, loops in enumerate(grid)
    ]


# ---- depth_shift.csv -------------------------------------------------------------------------


def shift_pairs(curves: list[DepthCurves]) -> list[tuple[DepthCurves, DepthCurves]]:
    """Every (deeper-trained, shallower-trained) pair of fine-tuned models on one split,
    split by split in the order the curves come, models in their order within a split."""
    pairs = []
    for split in dict.fromkeys(c.split for c in curves):
        tuned = [c for c in curves if c.split == split and c.model != BASE_MODEL]
        for first, second in combinations(tuned, 2):
            if first.train_loops != second.train_loops:
                pairs.append((first, second) if first.train_loops > second.train_loops else (second, first))
    return pairs


def _check_pair(a: DepthCurves, b: DepthCurves) -> None:
    where = f"depth shift {a.model} vs {b.model} on {a.split}"
    if a.inference_loops != b.inference_loops:
        raise StudyError(f"{where}: different depth grids {a.inference_loops} and {b.inference_loops}")
    if a.example_ids != b.example_ids or not np.array_equal(a.tokens, b.tokens):
        raise StudyError(f"{where}: not scored on the same questions (example ids or answer tokens differ)")
    if len(a.seeds) != len(b.seeds):
        raise StudyError(
            f"{where}: {len(a.seeds)} seeds against {len(b.seeds)}; seeds are paired, so the counts must match"
        )


def depth_shift_rows(curves: list[DepthCurves], resamples: int, confidence: float, seed: int) -> list[dict]:
    """The rows of ``depth_shift.csv`` (``DEPTH_SHIFT_COLUMNS``): per pair of
    ``shift_pairs``, D at every depth and S across seeds, then S per seed pair."""
    check_curves(curves)
    rows: list[dict] = []
    for a, b in shift_pairs(curves):
        _check_pair(a, b)
        same_seeds = a.seeds == b.seeds
        common = {
            "model_a": a.model,
            "model_b": b.model,
            "train_loops_a": a.train_loops,
            "train_loops_b": b.train_loops,
            "split": a.split,
            "pairing": "seed" if same_seeds else "index",
            "questions": len(a.example_ids),
        }
        few = FEW_QUESTIONS if len(a.example_ids) < 2 else ""
        # [seed pairs, model a's depths then model b's, questions]: a drawn seed pair brings both models
        stacked = np.concatenate([np.asarray(a.nll, dtype=float), np.asarray(b.nll, dtype=float)], axis=1)
        tokens = np.asarray(a.tokens, dtype=float)
        pooled = two_level_bootstrap(stacked, tokens, resamples, seed)
        note = few or (ONE_SEED if pooled.seeds < 2 else "")
        across = {**common, "seed": ACROSS_SEEDS, "seeds": pooled.seeds}
        rows += _d_rows(a.inference_loops, across, pooled.point, pooled.distribution, confidence, note)
        rows.append(_s_row(a, b, across, pooled.point, pooled.distribution, confidence, note))
        if a.train_loops not in a.inference_loops or b.train_loops not in a.inference_loops:
            continue  # the pooled S row says "not in grid"
        for index, (s, t) in enumerate(zip(a.seeds, b.seeds, strict=True)):
            label = _seed_label(s) if same_seeds else f"{_seed_label(s)}/{_seed_label(t)}"
            own = two_level_bootstrap(stacked[index : index + 1], tokens, resamples, seed)  # the question bootstrap
            rows.append(
                _s_row(a, b, {**common, "seed": label, "seeds": 1}, own.point, own.distribution, confidence, few)
            )
    return rows


def _differences(point: np.ndarray, distribution: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """D per depth, point and distribution, from model a's depths stacked over model b's."""
    depths = len(point) // 2
    return point[:depths] - point[depths:], distribution[:depths] - distribution[depths:]


def _d_rows(
    grid: list[int], common: dict, point: np.ndarray, distribution: np.ndarray, confidence: float, note: str
) -> list[dict]:
    d_point, d_dist = _differences(point, distribution)
    low, high = percentile_interval(d_dist, confidence)
    rows = []
    for i, loops in enumerate(grid):
        ci_low, ci_high = _interval(low[i], high[i], note)
        rows.append({**common, "statistic": "D", "inference_loops": loops, "value": float(d_point[i]),
                     "ci_low": ci_low, "ci_high": ci_high, "p_value": None, "note": note})  # fmt: skip
    return rows


def _s_row(
    a: DepthCurves,
    b: DepthCurves,
    common: dict,
    point: np.ndarray,
    distribution: np.ndarray,
    confidence: float,
    note: str,
) -> dict:
    """S = D(train_loops_a) - D(train_loops_b), its CI and p-value; "not in grid" when a
    training depth is not a grid depth."""
    row = {**common, "statistic": "S", "inference_loops": None}
    grid = a.inference_loops
    if a.train_loops not in grid or b.train_loops not in grid:
        return {**row, "value": None, "ci_low": None, "ci_high": None, "p_value": None, "note": NOT_IN_GRID}
    d_point, d_dist = _differences(point, distribution)
    at_a, at_b = grid.index(a.train_loops), grid.index(b.train_loops)
    s_point, s_dist = d_point[at_a] - d_point[at_b], d_dist[at_a] - d_dist[at_b]
    low, high = percentile_interval(s_dist[None], confidence)
    ci_low, ci_high = _interval(low[0], high[0], note)
    p_value = None if note else float(bootstrap_p_value(s_point, s_dist))
    return {**row, "value": float(s_point), "ci_low": ci_low, "ci_high": ci_high, "p_value": p_value, "note": note}
