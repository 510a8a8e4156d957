"""Calibrated halting thresholds: tau grids from a slice's signal, operating points chosen
for a target (cheapest within epsilon, equal compute), ties and unmet targets, no NaN."""

from __future__ import annotations

import math

import numpy as np
import pytest

from study.looping.calibration import (
    Point,
    candidate_taus,
    choose_equal_compute,
    choose_within_epsilon,
    depths_in_range,
    fixed_at_equal_compute,
    oracle_gap_closed,
    quantile_taus,
    tau_grid,
)
from study.looping.halting import Trace, halting_outcome

# a ladder-like signal: none at the first step
SIGNAL = np.array([[np.nan, 0.5, 0.01], [np.nan, 0.02, 0.2], [np.nan, 0.3, 0.4], [np.nan, 0.05, 0.03]])


def test_quantile_taus_spread_over_the_signal_values_and_skip_missing_steps():
    taus = quantile_taus(SIGNAL, [0.9, 0.1, 0.5])
    values = SIGNAL[np.isfinite(SIGNAL)]
    expected = np.quantile(values.astype(np.float32).astype(float), [0.1, 0.5, 0.9])
    assert taus == sorted(taus) and len(taus) == 3
    assert taus == pytest.approx(expected.tolist(), rel=1e-3)  # 4 significant digits
    assert all(len(f"{t:g}".replace("0.", "").lstrip("0")) <= 5 for t in taus)  # short, readable ids
    assert quantile_taus(np.full((2, 3), 0.25), [0.2, 0.8]) == [0.25]  # equal quantiles collapse
    for levels in ([], [0.0], [1.0], [1.5]):
        with pytest.raises(ValueError, match="levels"):
            quantile_taus(SIGNAL, levels)
    with pytest.raises(ValueError, match="no values"):
        quantile_taus(np.full((2, 2), np.nan), [0.5])


def test_tau_grid_is_the_union_and_keeps_never_stop():
    assert tau_grid([0.05, 0.01], []) == [0.01, 0.05]  # configured only: exactly those
    assert tau_grid([], [0.2, 0.1]) == [0.0, 0.1, 0.2]  # from quantiles: tau 0 is always a point
    assert tau_grid([0.1, 0.3], [0.1, 0.2]) == [0.0, 0.1, 0.2, 0.3]


def test_candidate_taus_reach_every_distinct_outcome():
    trace = Trace([1, 2, 3, 4], np.tile([1.0, 3.0, 7.0], (4, 1)), np.arange(12.0).reshape(4, 3), {"kl": SIGNAL})
    candidates = candidate_taus(SIGNAL)
    assert candidates[0] == 0.0 and len(candidates) == 1 + 8 + 1
    found = {tuple(halting_outcome(trace, "kl", tau).step) for tau in candidates}
    dense = np.concatenate([np.linspace(0, 0.6, 2001), SIGNAL[np.isfinite(SIGNAL)]])
    every = {tuple(halting_outcome(trace, "kl", float(tau)).step) for tau in dense}
    assert found == every  # no outcome a tau can give is missed
    assert tuple(halting_outcome(trace, "kl", candidates[-1]).step) == (1, 1, 1, 1)  # all stop at the first signal


def points(*triples: tuple[float, float, float]) -> list[Point]:
    return [Point(*t) for t in triples]


def test_within_epsilon_takes_the_cheapest_point_close_enough():
    grid = points((0.0, 8.0, 1.00), (0.1, 5.0, 1.004), (0.2, 3.0, 1.02), (0.3, 5.0, 1.003))
    choice = choose_within_epsilon(grid, reference_nll=1.0, epsilon=0.01)
    assert choice.met and choice.point.tau == 0.3  # 5 loops either way: the lower NLL
    assert choose_within_epsilon(grid, 1.0, 0.05).point.tau == 0.2
    assert choose_within_epsilon(grid, 1.0, 0.0).point.tau == 0.0  # only never-stop is that good


def test_within_epsilon_not_met_falls_back_to_the_lowest_nll():
    grid = points((0.0, 8.0, 1.10), (0.1, 4.0, 1.10), (0.2, 2.0, 1.30))
    choice = choose_within_epsilon(grid, reference_nll=1.0, epsilon=0.01)
    assert not choice.met and choice.point.tau == 0.1  # tied on NLL: the cheaper
    with pytest.raises(ValueError):
        choose_within_epsilon(grid, math.nan, 0.01)
    with pytest.raises(ValueError):
        choose_within_epsilon([], 1.0, 0.01)


def test_equal_compute_takes_the_closest_mean_loops_cheaper_on_ties():
    grid = points((0.0, 8.0, 1.0), (0.1, 5.0, 1.1), (0.2, 3.0, 1.2), (0.3, 6.6, 1.3))
    assert choose_equal_compute(grid, 4.0).point.tau == 0.2  # 3 and 5 are as close: the cheaper, though worse
    choice = choose_equal_compute(grid, 6.5)
    assert choice.point.tau == 0.3 and choice.met
    assert not choose_equal_compute(grid, 4.0).met  # a loop from any point
    assert depths_in_range(grid, [1, 2, 4, 8, 16]) == [2, 3]


def test_fixed_at_equal_compute_and_oracle_gap_closed():
    assert fixed_at_equal_compute([1, 2, 4], [1.3, 1.1, 1.0], 3.5) == 1
    assert fixed_at_equal_compute([1, 2, 4], [1.3, 1.1, 1.1], 9.0) == 1  # tied NLL: the cheaper
    assert fixed_at_equal_compute([2, 4], [1.0, 1.0], 1.5) is None
    assert oracle_gap_closed(1.2, 1.1, 1.0) == pytest.approx(0.5)
    assert oracle_gap_closed(1.2, 1.3, 1.2) is None  # the oracle gains nothing: no ratio, never NaN
    assert oracle_gap_closed(1.2, 1.3, 1.25) is None
    with pytest.raises(ValueError):
        oracle_gap_closed(1.2, math.inf, 1.0)


def test_points_refuse_nan():
    with pytest.raises(ValueError, match="not finite"):
        Point(0.1, math.nan, 1.0)
