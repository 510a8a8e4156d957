"""study.stats: the one paired bootstrap, its CIs, the NaN policy and the Wilson interval."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from study.errors import StudyError
from study.io import atomic_write_csv
from study.stats import (
    ci_cells,
    paired_bootstrap,
    paired_depth_bootstrap,
    paired_gap_ci,
    ratio_ci,
    ratio_of_sums,
    require_finite,
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
