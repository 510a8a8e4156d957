"""The per-example depth oracle: exact against brute force, never above a fixed depth."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from study.errors import StudyError
from study.looping.oracle import (
    best_per_example,
    oracle_at_budget,
    oracle_frontier,
)

LOOPS = np.array([2, 4, 8])


def brute_force(nll: np.ndarray, tokens: np.ndarray, loops: np.ndarray, budget_total: int) -> float:
    best = np.inf
    for choice in itertools.product(range(len(loops)), repeat=len(tokens)):
        if sum(loops[d] for d in choice) <= budget_total:
            best = min(best, sum(nll[i, d] for i, d in enumerate(choice)))
    return best / tokens.sum()


@pytest.mark.parametrize("seed", range(6))
def test_frontier_equals_brute_force_at_every_budget(seed: int) -> None:
    rng = np.random.default_rng(seed)
    nll = rng.uniform(5, 20, size=(5, len(LOOPS)))
    tokens = rng.integers(3, 9, size=5).astype(float)
    frontier = oracle_frontier(nll, tokens, LOOPS)
    for total in range(5 * LOOPS.min(), 5 * LOOPS.max() + 1):
        expected = brute_force(nll, tokens, LOOPS, total)
        got = oracle_at_budget(frontier, total / 5)
        assert got.nll_per_token == pytest.approx(expected, rel=1e-12)
        assert got.mean_loops <= total / 5 + 1e-9
        # the choice it reports really costs and scores what it says
        rows = np.arange(5)
        assert got.nll_per_token == pytest.approx(nll[rows, got.depth_index].sum() / tokens.sum())
        assert got.mean_loops == pytest.approx(LOOPS[got.depth_index].mean())


def test_frontier_is_a_strict_staircase_ending_at_the_unconstrained_best() -> None:
    rng = np.random.default_rng(1)
    nll, tokens = rng.uniform(5, 20, size=(40, 3)), rng.integers(3, 30, size=40).astype(float)
    frontier = oracle_frontier(nll, tokens, LOOPS)
    costs = [p.mean_loops for p in frontier]
    values = [p.nll_per_token for p in frontier]
    assert costs == sorted(costs) and all(a > b for a, b in itertools.pairwise(values))
    best = best_per_example(nll, tokens, LOOPS)
    assert values[-1] == pytest.approx(best.nll_per_token)
    assert frontier[-1].mean_loops <= best.mean_loops + 1e-9


def test_oracle_never_above_any_fixed_depth_at_its_cost() -> None:
    rng = np.random.default_rng(2)
    nll, tokens = rng.uniform(5, 20, size=(60, 3)), rng.integers(3, 30, size=60).astype(float)
    frontier = oracle_frontier(nll, tokens, LOOPS)
    for d, loops in enumerate(LOOPS):
        fixed = nll[:, d].sum() / tokens.sum()
        assert oracle_at_budget(frontier, float(loops)).nll_per_token <= fixed + 1e-12


def test_best_per_example_breaks_ties_towards_fewer_loops() -> None:
    nll = np.array([[3.0, 3.0, 3.0], [5.0, 1.0, 1.0]])
    choice = best_per_example(nll, np.array([1.0, 1.0]), np.array([8, 2, 4]))
    assert list(choice.depth_index) == [1, 1]  # loops 2 in both rows
    assert choice.mean_loops == 2.0


def test_non_finite_nll_is_refused() -> None:
    nll = np.array([[1.0, np.nan, 2.0]])
    with pytest.raises(StudyError, match="NaN or infinite"):  # the one NaN policy of study.stats
        oracle_frontier(nll, np.array([3.0]), LOOPS)
    with pytest.raises(StudyError, match="NaN or infinite"):
        best_per_example(nll, np.array([3.0]), LOOPS)
