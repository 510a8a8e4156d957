"""study.stats: the one paired bootstrap, its CIs, the NaN policy and the Wilson interval."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from study import stats as study_stats
from study.errors import StudyError
from study.io import atomic_write_csv
from study.stats import (
    bootstrap_p_value,
    ci_cells,
    paired_bootstrap,
    paired_depth_bootstrap,
    paired_gap_ci,
    percentile_interval,
    ratio_ci,
    ratio_of_sums,
    require_finite,
    two_level_bootstrap,
    wilson_interval,
)


def test_ratio_ci_equals_scipy():
    rng = np.random.default_rng(0)
    tokens = rng.integers(20, 200, size=40)
    nll = tokens * rng.uniform(0.5, 2.0, size=40)
    ours = ratio_ci(nll, tokens, resamples=500, confidence=0.9, seed=3)
    direct = stats.bootstrap(
        (nll, tokens.astype(float)),
        lambda a, b, axis: a.sum(axis=axis) / b.sum(axis=axis),
        paired=True,
        vectorized=True,
        n_resamples=500,
        confidence_level=0.9,
        method="percentile",
        rng=np.random.default_rng(3),
    ).confidence_interval
    assert ours == (direct.low, direct.high)
    assert ours[0] < ratio_of_sums(nll, tokens) < ours[1]


def test_paired_bootstrap_dominant_loop_always_wins():
    rng = np.random.default_rng(1)
    tokens = rng.integers(10, 100, size=30).astype(float)
    base = tokens * rng.uniform(1.0, 3.0, size=30)
    # loop index 1 is better on every single example, so it wins every resample
    nll = np.stack([base + 0.2 * tokens, base, base + 0.05 * tokens, base + rng.uniform(0.01, 1.0, 30) * tokens])
    result = paired_depth_bootstrap(nll, tokens, resamples=300, confidence=0.95, seed=5)
    assert result.best_index == 1
    assert result.p_best == [0.0, 1.0, 0.0, 0.0]
    assert result.gap[1] == 0.0 and result.gap_ci[1] == (0.0, 0.0)
    assert all(low > 0 for i, (low, _) in enumerate(result.gap_ci) if i != 1)
    assert result.gap[2] == pytest.approx(0.05)
    again = paired_depth_bootstrap(nll, tokens, resamples=300, confidence=0.95, seed=5)
    assert again == result


def test_ratio_of_sums_along_an_axis():
    nll = np.array([[1.0, 3.0], [2.0, 2.0]])
    assert ratio_of_sums(nll, np.array([1.0, 3.0])).tolist() == [1.0, 1.0]
    assert ratio_of_sums(nll, np.array([[1.0, 1.0], [2.0, 2.0]]), axis=0).tolist() == [1.0, 5 / 3]


def test_percentile_bootstrap_by_hand_on_two_examples():
    """Two examples of one token, NLL 1 and 3: a resample holds (1, 1), (1, 3) or (3, 3),
    so the ratio is 1, 2 or 3 with chances 1/4, 1/2, 1/4. A 90% percentile interval over
    many resamples cuts 5% from each end, which lies inside the outer quarters: [1, 3]."""
    result = paired_bootstrap((np.array([1.0, 3.0]), np.array([1.0, 1.0])), ratio_of_sums, 2000, 0.9, seed=0)
    assert set(np.unique(result.bootstrap_distribution)) == {1.0, 2.0, 3.0}
    assert (result.confidence_interval.low, result.confidence_interval.high) == (1.0, 3.0)
    shares = [np.mean(result.bootstrap_distribution == v) for v in (1.0, 2.0, 3.0)]
    assert shares == pytest.approx([0.25, 0.5, 0.25], abs=0.04)


def test_paired_gap_ci_equals_scipy_and_sees_a_real_difference():
    rng = np.random.default_rng(3)
    tokens = rng.integers(5, 40, size=200).astype(float)
    base = tokens * rng.uniform(1.0, 2.0, size=200)
    better = base - 0.1 * tokens * rng.uniform(0.5, 1.5, size=200)
    point, low, high = paired_gap_ci(better, base, tokens, 500, 0.95, seed=0)
    direct = stats.bootstrap(
        (better, base, tokens),
        lambda a, b, t, axis: (a.sum(axis=axis) - b.sum(axis=axis)) / t.sum(axis=axis),
        paired=True,
        vectorized=True,
        n_resamples=500,
        confidence_level=0.95,
        method="percentile",
        rng=np.random.default_rng(0),
    ).confidence_interval
    assert (low, high) == (direct.low, direct.high)
    assert point == pytest.approx((better.sum() - base.sum()) / tokens.sum())
    assert low <= point <= high < 0  # every example improves: the paired CI excludes 0


def test_a_depth_against_itself_has_a_zero_gap_and_a_zero_width_ci():
    nll, tokens = np.array([3.0, 5.0, 4.0]), np.array([2.0, 3.0, 2.0])
    assert paired_gap_ci(nll, nll, tokens, 100, 0.95, seed=1) == (0.0, 0.0, 0.0)


# ---- the NaN policy ----------------------------------------------------------------------

BAD = [np.nan, np.inf, -np.inf]


@pytest.mark.parametrize("bad", BAD, ids=["nan", "inf", "-inf"])
def test_every_statistic_refuses_non_finite_input(bad: float):
    good, tokens = np.array([1.0, 2.0, 3.0]), np.array([3.0, 4.0, 5.0])
    worse = np.array([1.0, bad, 3.0])
    calls = [
        lambda: ratio_ci(worse, tokens, 50, 0.95, 0),
        lambda: ratio_ci(good, worse, 50, 0.95, 0),
        lambda: paired_gap_ci(good, worse, tokens, 50, 0.95, 0),
        lambda: paired_gap_ci(worse, good, tokens, 50, 0.95, 0),
        lambda: paired_depth_bootstrap(np.stack([good, worse]), tokens, 50, 0.95, 0),
        lambda: require_finite("x", good, worse),
    ]
    for call in calls:
        with pytest.raises(StudyError, match=r"1 of \d+ input values are NaN or infinite"):
            call()
    require_finite("x", good, tokens)  # finite: no error


def test_fewer_than_two_examples_give_nan_intervals_and_finite_points():
    nll, tokens = np.array([3.0]), np.array([2.0])
    assert all(math.isnan(v) for v in ratio_ci(nll, tokens, 50, 0.95, 0))
    point, low, high = paired_gap_ci(nll, nll + 1.0, tokens, 50, 0.95, 0)
    assert point == -0.5 and math.isnan(low) and math.isnan(high)
    result = paired_depth_bootstrap(np.array([[3.0], [1.0]]), tokens, 50, 0.95, 0)
    assert (result.best_index, result.nll_per_token, result.gap, result.p_best) == (
        1,
        [1.5, 0.5],
        [1.0, 0.0],
        [0.0, 1.0],
    )
    assert all(math.isnan(v) for ci in result.gap_ci for v in ci)


def test_an_interval_of_one_example_is_written_as_empty_cells_never_nan(tmp_path):
    """NaN bounds become empty cells (ci_cells); the CSV writer refuses a NaN outright."""
    assert ci_cells(*ratio_ci([3.0], [2.0], 50, 0.95, 0)) == ("", "")
    assert ci_cells(0.25, 0.5) == (0.25, 0.5)
    path = tmp_path / "summary.csv"
    atomic_write_csv(
        path, [{"nll_per_token": 1.5, "ci_low": "", "ci_high": ""}], ("nll_per_token", "ci_low", "ci_high")
    )
    assert path.read_text() == "nll_per_token,ci_low,ci_high\n1.5,,\n"
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="column ci_low would be written as"):
            atomic_write_csv(tmp_path / "bad.csv", [{"ci_low": bad}], ("ci_low",))
        assert not (tmp_path / "bad.csv").exists()  # nothing written


# ---- Wilson -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("correct", "n", "expected"),
    [
        (0, 10, (0.0, 0.27753)),  # upper bound z^2 / (n + z^2)
        (5, 10, (0.23659, 0.76341)),  # the textbook 5 of 10
        (10, 10, (0.72247, 1.0)),
        (1, 1, (0.20654, 1.0)),
    ],
)
def test_wilson_known_values(correct: int, n: int, expected: tuple[float, float]):
    assert wilson_interval(correct, n) == pytest.approx(expected, abs=5e-5)


@pytest.mark.parametrize(("correct", "n"), [(0, 40), (7, 40), (40, 40), (1, 3)])
def test_wilson_equals_scipy(correct, n):
    direct = stats.binomtest(correct, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert wilson_interval(correct, n) == (direct.low, direct.high)
    low, high = wilson_interval(correct, n)
    assert 0.0 <= low <= correct / n <= high <= 1.0


@pytest.mark.parametrize(("correct", "n"), [(0, 0), (-1, 5), (6, 5)])
def test_wilson_refuses_what_is_not_a_proportion(correct: int, n: int):
    with pytest.raises(StudyError, match="not a proportion"):
        wilson_interval(correct, n)


# ---- the two-level bootstrap -------------------------------------------------------------------


def _curves(seeds: int, depths: int, questions: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(10, 100, size=questions).astype(float)
    return tokens * rng.uniform(1.0, 3.0, size=(seeds, depths, questions)), tokens


def test_two_level_bootstrap_of_one_seed_is_the_question_bootstrap_bit_for_bit():
    nll, tokens = _curves(1, 4, 30)
    two_level = two_level_bootstrap(nll, tokens, 600, seed=9)
    reference = paired_depth_bootstrap(nll[0], tokens, 600, 0.9, 9)
    best = reference.best_index
    assert two_level.point.tolist() == reference.nll_per_token
    low, high = percentile_interval(two_level.distribution - two_level.distribution[best], 0.9)
    assert list(zip(low.tolist(), high.tolist(), strict=True)) == reference.gap_ci
    wins = np.bincount(np.argmin(two_level.distribution, axis=0), minlength=4) / 600
    assert wins.tolist() == reference.p_best


def test_two_level_bootstrap_matches_a_resample_by_resample_reference():
    """Seeds drawn first, then questions, from one generator; the pooled value is the mean
    over the drawn seeds of each one's token-weighted NLL on the drawn questions."""
    nll, tokens = _curves(3, 2, 25, seed=1)
    result = two_level_bootstrap(nll, tokens, 50, seed=4)
    rng = np.random.default_rng(4)
    seed_draws, question_draws = rng.integers(0, 3, (50, 3)), rng.integers(0, 25, (50, 25))
    for r in range(50):
        q = question_draws[r]
        per_seed = [nll[s][:, q].sum(axis=1) / tokens[q].sum() for s in seed_draws[r]]
        assert result.distribution[:, r] == pytest.approx(np.mean(per_seed, axis=0), rel=1e-12)
    assert result.point == pytest.approx(np.mean(nll.sum(axis=2) / tokens.sum(), axis=0), rel=1e-12)
    assert (result.seeds, result.questions) == (3, 25)


def test_two_level_bootstrap_resamples_seeds(monkeypatch):
    """Seeds that differ only by a level, on questions that do not vary: the spread is all
    seed-level, and every resample is a mean of three drawn seed levels."""
    tokens = np.full(8, 10.0)
    levels = np.array([1.0, 1.3, 2.2])
    nll = levels[:, None, None] * tokens * np.ones((3, 1, 8))
    result = two_level_bootstrap(nll, tokens, 400, seed=2)
    means = {round(float(np.mean(c)), 12) for c in np.array(np.meshgrid(levels, levels, levels)).reshape(3, -1).T}
    assert {round(float(v), 12) for v in result.distribution[0]} <= means
    assert result.distribution.min() == pytest.approx(1.0) and result.distribution.max() == pytest.approx(2.2)
    # the resamples are computed in blocks; the block size bounds memory and never changes a bit
    nll, tokens = _curves(3, 3, 40, seed=5)
    whole = two_level_bootstrap(nll, tokens, 300, seed=6)
    monkeypatch.setattr(study_stats, "_BLOCK_ELEMENTS", 7 * 40)
    assert np.array_equal(two_level_bootstrap(nll, tokens, 300, seed=6).distribution, whole.distribution)


def test_two_level_bootstrap_refuses_bad_shapes_and_nan():
    nll, tokens = _curves(2, 3, 10)
    with pytest.raises(StudyError, match="expected nll \\[seeds, curves, questions\\]"):
        two_level_bootstrap(nll[0], tokens, 10, seed=0)
    with pytest.raises(StudyError, match="expected nll"):
        two_level_bootstrap(nll, tokens[:9], 10, seed=0)
    with pytest.raises(StudyError, match="expected nll"):
        two_level_bootstrap(nll[:, :, :0], tokens[:0], 10, seed=0)
    nll[1, 2, 3] = np.inf
    with pytest.raises(StudyError, match="1 of 70 input values are NaN or infinite"):
        two_level_bootstrap(nll, tokens, 10, seed=0)


def test_percentile_interval_is_scipys():
    nll, tokens = _curves(1, 1, 40, seed=3)
    result = paired_bootstrap((nll[0, 0], tokens), ratio_of_sums, 500, 0.8, 1)
    low, high = percentile_interval(result.bootstrap_distribution[None], 0.8)
    assert (low[0], high[0]) == (result.confidence_interval.low, result.confidence_interval.high)


@pytest.mark.parametrize(
    ("point", "distribution", "p"),
    [
        (-1.0, [-3.0, -2.0, -1.0, 0.5], 0.5),  # one of four resamples above 0, doubled
        (-1.0, [-3.0, -2.0, 0.0, 0.5], 1.0),  # 0 counts as the other side
        (2.0, [1.0, 2.0, 3.0, -0.1], 0.5),
        (2.0, [1.0, 2.0, 3.0, 4.0], 0.0),  # no resample across: below the 2 / resamples resolution
        (1.0, [-1.0, -2.0, 3.0, -4.0], 1.0),  # capped at 1
        (0.0, [1.0, 2.0, 3.0, 4.0], 1.0),
    ],
)
def test_bootstrap_p_value(point, distribution, p):
    assert bootstrap_p_value(point, distribution) == p
    assert bootstrap_p_value([point, -point], [distribution, [-v for v in distribution]]).tolist() == [p, p]
