"""The study's statistics: plain arrays in, plain floats out.

Every interval over examples comes from one function, ``paired_bootstrap``: scipy's
percentile bootstrap with the examples resampled together (paired) across all the
arrays passed in, from a generator seeded with the run's seed. On it sit

- ``ratio_ci``: the CI of a token-weighted NLL, sum(nll) / sum(tokens);
- ``paired_gap_ci``: the gap between two depths' token-weighted NLL on the same examples;
- ``paired_depth_bootstrap``: every depth at once, each one's gap to the best and how
  often it wins a resample (``DepthPreference``);

and beside it ``wilson_interval``, the Wilson score interval of an accuracy, and for
per-question correctness at several depths (the benchmarks stage)
``paired_accuracy_depths``: each depth's accuracy gap to the best with a paired
bootstrap CI, how often it wins a resample, and the exact McNemar test (``mcnemar_exact``).

Where training randomness varies too (replicate seeds), ``two_level_bootstrap`` resamples
seeds, then questions (one question resample shared by every seed and curve of a draw),
with ``percentile_interval`` and ``bootstrap_p_value`` on its distribution; with one seed
it is the question bootstrap above, draw for draw.

One policy for inputs that carry no interval:

- NaN or infinite inputs are refused with a ``StudyError`` (``require_finite``): a
  diverged model or overflowing weights must stop the run, never win an argmin or
  widen a CI silently. The depth oracle (``study.looping.oracle``) refuses the same way.
- Fewer than two examples: there is no spread to resample, so every bootstrap CI bound
  is NaN in memory (the point values are still computed, and written as they are). NaN
  is never written as a number: results files hold such a bound as an empty cell
  (``ci_cells``; ``study.io.atomic_write_csv`` refuses a NaN), and the report writes
  ``NO_CI`` ("no CI (n < 2)") where the interval would be.
- Identical paired inputs (a depth against itself) are not special: every resample
  gives the same value, so the CI collapses onto the point.
- ``wilson_interval`` needs at least one trial (``n >= 1``) and ``0 <= correct <= n``;
  anything else is not a proportion and is refused with a ``StudyError``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

from study.errors import StudyError  # a user-facing error: one line, a user-error exit code

NAN_CI = (float("nan"), float("nan"))  # the interval of fewer than two examples
NO_CI = "no CI (n < 2)"  # what the report writes in its place
# p10/p90 of fewer timing samples are an order statistic or two, not a spread: the
# latency stage writes them only from this many samples (the median alone below it)
PERCENTILE_MIN_SAMPLES = 10


def ci_cells(low: float, high: float) -> tuple[float | str, float | str]:
    """A CI's bounds as results-file cells: the interval of fewer than two examples (NaN
    bounds) becomes two empty cells, never the text ``nan``."""
    if math.isnan(low) or math.isnan(high):
        return "", ""
    return low, high


def require_finite(what: str, *arrays: np.ndarray) -> None:
    """Refuse NaN or infinite values: statistics of them are not numbers to report."""
    bad = sum(int(np.size(a) - np.isfinite(a).sum()) for a in arrays)
    if bad:
        total = sum(int(np.size(a)) for a in arrays)
        raise StudyError(
            f"{what}: {bad} of {total} input values are NaN or infinite (a model that trained to NaN, or "
            "overflowing weights); the statistic is refused. Check results/nll.csv and the SFT loss"
        )


def ratio_of_sums(nll: np.ndarray, tokens: np.ndarray, axis: int = -1) -> np.ndarray:
    """Token-weighted NLL: sum of NLL over sum of tokens (vectorised along ``axis``)."""
    return np.sum(nll, axis=axis) / np.sum(tokens, axis=axis)


def paired_bootstrap(
    samples: Sequence[np.ndarray],
    statistic: Callable[..., np.ndarray],
    resamples: int,
    confidence: float,
    seed: int,
) -> Any:  # scipy's BootstrapResult (not exported by name)
    """scipy's percentile bootstrap, resampling examples together across ``samples``.

    ``statistic(*samples, axis=-1)`` must be vectorised. Callers check finiteness and
    the example count first (see the module docstring); a constant bootstrap
    distribution (a depth's gap to itself) is expected, so scipy's warning about it is
    silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        return stats.bootstrap(
            tuple(samples),
            statistic,
            paired=True,
            vectorized=True,
            n_resamples=resamples,
            confidence_level=confidence,
            method="percentile",
            rng=np.random.default_rng(seed),
        )


def ratio_ci(
    nll: ArrayLike,
    tokens: ArrayLike,
    resamples: int,
    confidence: float,
    seed: int,
    what: str = "nll: bootstrap CI",
) -> tuple[float, float]:
    """Percentile bootstrap CI of sum(nll)/sum(tokens), resampling examples (pairs)."""
    nll, tokens = np.asarray(nll, dtype=float), np.asarray(tokens, dtype=float)
    require_finite(what, nll, tokens)
    if len(nll) < 2:
        return NAN_CI
    result = paired_bootstrap((nll, tokens), ratio_of_sums, resamples, confidence, seed)
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def _gap(a: np.ndarray, b: np.ndarray, tokens: np.ndarray, axis: int = -1) -> np.ndarray:
    return (np.sum(a, axis=axis) - np.sum(b, axis=axis)) / np.sum(tokens, axis=axis)


def paired_gap_ci(
    nll_a: ArrayLike,
    nll_b: ArrayLike,
    tokens: ArrayLike,
    resamples: int,
    confidence: float,
    seed: int,
    what: str = "paired gap",
) -> tuple[float, float, float]:
    """NLL per token of A minus B on the same examples, and its paired percentile
    bootstrap CI (examples resampled together): (point, low, high)."""
    nll_a, nll_b, tokens = (np.asarray(v, dtype=float) for v in (nll_a, nll_b, tokens))
    require_finite(what, nll_a, nll_b, tokens)
    point = float(_gap(nll_a, nll_b, tokens))
    if len(tokens) < 2:
        return (point, *NAN_CI)
    result = paired_bootstrap((nll_a, nll_b, tokens), _gap, resamples, confidence, seed)
    return point, float(result.confidence_interval.low), float(result.confidence_interval.high)


@dataclass(frozen=True)
class DepthPreference:
    best_index: int  # into the loop axis
    nll_per_token: list[float]
    gap: list[float]  # nll_per_token - best
    gap_ci: list[tuple[float, float]]
    p_best: list[float]  # share of resamples in which each loop count has the lowest NLL


def paired_depth_bootstrap(
    nll: ArrayLike, tokens: ArrayLike, resamples: int, confidence: float, seed: int
) -> DepthPreference:
    """``nll`` is (loops, examples) summed NLL, ``tokens`` (examples,) token counts (the
    same at every depth). One set of example indices is drawn per resample and every
    loop count is scored on it, so gaps and wins are paired across depths."""
    nll, tokens = np.asarray(nll, dtype=float), np.asarray(tokens, dtype=float)
    require_finite("nll: preferred depth", nll, tokens)
    loops = len(nll)
    point = ratio_of_sums(nll, tokens)
    best = int(np.argmin(point))
    nll_per_token = [float(v) for v in point]
    gap = [float(v - point[best]) for v in point]
    if nll.shape[1] < 2:  # the best still wins its only "resample": the data as they are
        return DepthPreference(best, nll_per_token, gap, [NAN_CI] * loops, [float(i == best) for i in range(loops)])

    def per_depth_and_gaps(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
        *rows, counts = samples
        ratios = np.stack([ratio_of_sums(row, counts, axis=axis) for row in rows])
        return np.concatenate([ratios, ratios - ratios[best]])

    result = paired_bootstrap((*nll, tokens), per_depth_and_gaps, resamples, confidence, seed)
    ratios = result.bootstrap_distribution[:loops]  # (loops, resamples)
    low, high = result.confidence_interval.low[loops:], result.confidence_interval.high[loops:]
    wins = np.bincount(np.argmin(ratios, axis=0), minlength=loops) / resamples
    return DepthPreference(
        best_index=best,
        nll_per_token=nll_per_token,
        gap=gap,
        gap_ci=[(float(a), float(b)) for a, b in zip(low, high, strict=True)],
        p_best=[float(v) for v in wins],
    )


def wilson_interval(correct: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of ``correct`` successes in ``n`` trials."""
    if n < 1 or not 0 <= correct <= n:
        raise StudyError(f"exact_match: {correct} correct of {n} is not a proportion; the interval is refused")
    ci = stats.binomtest(correct, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


# ---- the two-level bootstrap: replicate seeds, then questions ---------------------------------

# question draws gathered at once (resamples x questions): bounds memory, never changes the result
_BLOCK_ELEMENTS = 1 << 21


@dataclass(frozen=True)
class TwoLevelBootstrap:
    """Per curve (a depth of a model, or any row of ``nll``): the pooled token-weighted NLL
    and its bootstrap distribution, one column per resample."""

    point: np.ndarray  # [curves] mean over seeds of each seed's sum(nll) / sum(tokens)
    distribution: np.ndarray  # [curves, resamples] the same, on every resample
    seeds: int
    questions: int


def two_level_bootstrap(nll: ArrayLike, tokens: ArrayLike, resamples: int, seed: int) -> TwoLevelBootstrap:
    """Resample replicate seeds with replacement, then questions with replacement.

    ``nll`` is [seeds, curves, questions] summed NLL, ``tokens`` [questions] (the same for
    every seed and curve). A resample draws ``seeds`` seed indices and one set of
    ``questions`` question indices; every drawn seed and every curve is scored on those
    same questions (paired across depths, models and seeds), and the pooled value of a
    curve is the mean over the drawn seeds of each one's token-weighted NLL. Linear
    statistics of the curves (gaps, differences between models) are differences of rows
    of ``distribution``.

    Seeds are drawn before questions from ``np.random.default_rng(seed)``. One seed
    leaves nothing to draw at the seed level, so the question draws are then exactly
    those of ``paired_bootstrap`` (scipy draws ``integers(0, n, (resamples, n))``) and
    the result equals ``paired_depth_bootstrap``'s distribution: the two-level bootstrap
    of one seed is the question bootstrap."""
    nll, tokens = np.asarray(nll, dtype=float), np.asarray(tokens, dtype=float)
    if nll.ndim != 3 or tokens.shape != nll.shape[2:] or 0 in nll.shape or resamples < 1:
        raise StudyError(
            f"two-level bootstrap: nll of shape {nll.shape} and tokens of shape {tokens.shape} with {resamples} "
            "resamples; expected nll [seeds, curves, questions], tokens [questions], all non-empty"
        )
    require_finite("two-level bootstrap", nll, tokens)
    seeds, curves, questions = nll.shape
    rng = np.random.default_rng(seed)
    if seeds > 1:
        seed_draws = rng.integers(0, seeds, size=(resamples, seeds))
    else:
        seed_draws = np.zeros((resamples, 1), dtype=np.int64)
    question_draws = rng.integers(0, questions, size=(resamples, questions))
    distribution = np.empty((curves, resamples))
    block = max(1, _BLOCK_ELEMENTS // questions)
    for start in range(0, resamples, block):
        drawn = question_draws[start : start + block]  # [block, questions]
        drawn_tokens = np.sum(tokens[drawn], axis=-1)
        # every seed's token-weighted NLL on this block's question draws: [seeds, curves, block]; one
        # row at a time, summed as scipy sums a resampled row, so one seed reproduces it bit for bit
        ratios = np.array([[np.sum(row[drawn], axis=-1) / drawn_tokens for row in rows] for rows in nll])
        chosen = np.take_along_axis(ratios, seed_draws[start : start + block].T[:, None, :], axis=0)
        distribution[:, start : start + block] = np.mean(chosen, axis=0)
    point = np.mean(ratio_of_sums(nll, tokens), axis=0)
    return TwoLevelBootstrap(point=point, distribution=distribution, seeds=seeds, questions=questions)


def percentile_interval(distribution: ArrayLike, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """The percentile interval of each row of a [statistics, resamples] bootstrap
    distribution, computed as scipy's ``bootstrap(method="percentile")`` computes it."""
    alpha = (1 - confidence) / 2
    bounds = stats.quantile(np.asarray(distribution, dtype=float), np.array([alpha, 1 - alpha]), axis=-1)
    return bounds[..., 0], bounds[..., 1]


def bootstrap_p_value(point: ArrayLike, distribution: ArrayLike) -> np.ndarray:
    """Two-sided bootstrap p-value of "the statistic is 0", per row of ``distribution``
    ([statistics, resamples]): the share of resamples on the other side of 0 from the point
    estimate (0 itself counts as the other side), doubled and capped at 1; a point of
    exactly 0 gives 1. Its resolution is 2 / resamples, so 0 means p < 2 / resamples."""
    point, distribution = np.asarray(point, dtype=float), np.asarray(distribution, dtype=float)
    across = np.where(point[..., None] < 0, distribution >= 0, distribution <= 0)
    p = np.minimum(1.0, 2 * np.mean(across, axis=-1))
    return np.where(point == 0, 1.0, p)


@dataclass(frozen=True)
class AccuracyPreference:
    """Per-question correctness (0/1) at several depths, each against the most accurate."""

    best_index: int  # into the depth axis; ties go to the first (the fewest loops)
    accuracy: list[float]
    difference: list[float]  # accuracy - best accuracy (<= 0)
    difference_ci: list[tuple[float, float]]  # paired percentile bootstrap over questions
    p_best: list[float]  # share of resamples in which each depth is the most accurate (first on ties)
    only_best: list[int]  # questions right at the best depth and wrong at this one
    only_this: list[int]  # questions right at this depth and wrong at the best
    mcnemar_p: list[float]  # exact two-sided McNemar p-value of this depth against the best


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Exact two-sided McNemar p-value: the discordant questions (right under one condition
    only) as a binomial with p = 1/2. No discordant question: nothing tells them apart (1.0)."""
    if only_a < 0 or only_b < 0:
        raise StudyError(f"benchmarks: discordant counts {only_a}, {only_b} are not counts; the test is refused")
    if only_a + only_b == 0:
        return 1.0
    return float(stats.binomtest(only_a, only_a + only_b, 0.5).pvalue)


def paired_accuracy_depths(
    correct: ArrayLike, resamples: int, confidence: float, seed: int, what: str = "benchmarks"
) -> AccuracyPreference:
    """``correct`` is (depths, questions) of 0/1, the same questions at every depth. One set
    of question indices is drawn per resample and every depth is scored on it, so the
    accuracy gaps and the wins are paired across depths, as McNemar's test is."""
    table = np.asarray(correct, dtype=float)
    if table.ndim != 2 or table.shape[1] < 1:
        raise StudyError(f"{what}: expected correctness of shape (depths, questions), got {table.shape}")
    require_finite(what, table)
    if not np.isin(table, (0.0, 1.0)).all():
        raise StudyError(f"{what}: per-question correctness must be 0 or 1; the paired test is refused")
    depths = len(table)
    accuracy = table.mean(axis=1)
    best = int(np.argmax(accuracy))  # argmax takes the first maximum: the fewest loops on a tie
    only_best = [int(((table[best] == 1) & (row == 0)).sum()) for row in table]
    only_this = [int(((row == 1) & (table[best] == 0)).sum()) for row in table]
    mcnemar = [mcnemar_exact(a, b) for a, b in zip(only_best, only_this, strict=True)]
    difference = [float(v - accuracy[best]) for v in accuracy]
    if table.shape[1] < 2:
        wins = [float(i == best) for i in range(depths)]
        return AccuracyPreference(
            best, [float(v) for v in accuracy], difference, [NAN_CI] * depths, wins, only_best, only_this, mcnemar
        )

    def means_and_gaps(*rows: np.ndarray, axis: int = -1) -> np.ndarray:
        means = np.stack([np.mean(row, axis=axis) for row in rows])
        return np.concatenate([means, means - means[best]])

    result = paired_bootstrap(tuple(table), means_and_gaps, resamples, confidence, seed)
    resampled = result.bootstrap_distribution[:depths]  # (depths, resamples)
    low, high = result.confidence_interval.low[depths:], result.confidence_interval.high[depths:]
    shares = np.bincount(np.argmax(resampled, axis=0), minlength=depths) / resamples
    return AccuracyPreference(
        best_index=best,
        accuracy=[float(v) for v in accuracy],
        difference=difference,
        difference_ci=[(float(a), float(b)) for a, b in zip(low, high, strict=True)],
        p_best=[float(v) for v in shares],
        only_best=only_best,
        only_this=only_this,
        mcnemar_p=mcnemar,
    )
