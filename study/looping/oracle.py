"""The per-example depth oracle: the best NLL any per-input depth rule could reach.

Given every example's summed NLL at every fixed depth (the fixed-depth sweep), an
oracle picks one depth per example. Unconstrained it takes each example's best
depth; under a compute budget (mean executed loops per example at most B) it solves
the multiple-choice knapsack exactly by dynamic programming over the total loop
count, so its NLL at a budget is never above any fixed depth that fits the budget
(a fixed depth is one of the choices it weighs). Loop counts are integers, so the
table has ``examples * max(loops) + 1`` entries: 300 examples at 16 loops is 4,801.

The headline NLL is token-weighted (sum of NLL over sum of tokens), as in the NLL
stage; an example's token count does not depend on depth. Its confidence intervals
(paired gaps to fixed depths) are ``study.stats.paired_gap_ci``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from study.stats import require_finite


@dataclass(frozen=True)
class OracleChoice:
    """One oracle selection: each example's depth index, and what it costs and scores."""

    depth_index: np.ndarray  # (examples,) index into the depth axis
    mean_loops: float  # executed loops averaged over examples
    nll_per_token: float


def _finite(nll: np.ndarray, tokens: np.ndarray, loops: np.ndarray) -> None:
    if nll.ndim != 2 or nll.shape != (len(tokens), len(loops)):
        raise ValueError(f"nll must be (examples, depths) = ({len(tokens)}, {len(loops)}); got {nll.shape}")
    require_finite("oracle: per-example NLL", nll)  # the study's one NaN policy (study.stats)
    if np.any(tokens <= 0) or np.any(loops <= 0):
        raise ValueError("oracle: token counts and loop counts must be positive")


def _choice(nll: np.ndarray, tokens: np.ndarray, loops: np.ndarray, depth_index: np.ndarray) -> OracleChoice:
    rows = np.arange(len(depth_index))
    return OracleChoice(
        depth_index=depth_index,
        mean_loops=float(loops[depth_index].mean()),
        nll_per_token=float(nll[rows, depth_index].sum() / tokens.sum()),
    )


def best_per_example(nll: np.ndarray, tokens: np.ndarray, loops: np.ndarray) -> OracleChoice:
    """Each example's lowest-NLL depth (the cheapest one on ties)."""
    nll, tokens, loops = np.asarray(nll, float), np.asarray(tokens, float), np.asarray(loops, int)
    _finite(nll, tokens, loops)
    # sort depths by cost so argmin's first-index rule breaks ties towards fewer loops
    order = np.argsort(loops, kind="stable")
    return _choice(nll, tokens, loops, order[np.argmin(nll[:, order], axis=1)])


def oracle_frontier(nll: np.ndarray, tokens: np.ndarray, loops: np.ndarray) -> list[OracleChoice]:
    """The exact budgeted oracle at every total-loop budget where it improves: a
    staircase from the all-cheapest assignment to the unconstrained best, each point
    the lowest total NLL reachable with at most that many loops in total."""
    nll, tokens, loops = np.asarray(nll, float), np.asarray(tokens, float), np.asarray(loops, int)
    _finite(nll, tokens, loops)
    examples, depths = nll.shape
    capacity = examples * int(loops.max()) + 1
    best = np.zeros(capacity)  # best[c]: lowest summed NLL of the examples so far using exactly c loops
    best[1:] = np.inf
    picks = np.zeros((examples, capacity), dtype=np.int16)  # the depth example i took to reach c
    for i in range(examples):
        candidates = np.full((depths, capacity), np.inf)
        for d in range(depths):
            candidates[d, loops[d] :] = best[: capacity - loops[d]] + nll[i, d]
        picks[i] = np.argmin(candidates, axis=0)
        best = candidates[picks[i], np.arange(capacity)]

    frontier: list[OracleChoice] = []
    lowest = np.inf
    for total in range(capacity):
        if np.isfinite(best[total]) and (not frontier or best[total] < lowest - 1e-12 * abs(lowest)):
            lowest = best[total]
            frontier.append(_choice(nll, tokens, loops, _trace(picks, loops, total)))
    return frontier


def _trace(picks: np.ndarray, loops: np.ndarray, total: int) -> np.ndarray:
    chosen = np.empty(len(picks), dtype=int)
    for i in range(len(picks) - 1, -1, -1):
        chosen[i] = picks[i, total]
        total -= int(loops[chosen[i]])
    return chosen


def oracle_at_budget(frontier: list[OracleChoice], mean_loops: float) -> OracleChoice:
    """The frontier's best point whose mean loops fit ``mean_loops`` (the cheapest point
    when none does)."""
    fitting = [p for p in frontier if p.mean_loops <= mean_loops + 1e-9]
    return fitting[-1] if fitting else frontier[0]
