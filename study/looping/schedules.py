"""Every LoopFormer schedule of M steps on a grid of step sizes.

The LoopFormer authors compare all schedules of a fixed number of steps M whose step
sizes are multiples of 1/G and sum to 1 (G = 8, M = 4 gives 35 schedules) and find
that the order of coarse and fine steps matters. A schedule is one composition of G
into M positive parts, each part divided by G: there are C(G - 1, M - 1) of them.
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

from study.looping.policies import StepSchedule


def compositions(total: int, parts: int) -> list[tuple[int, ...]]:
    """Every ordered way to write ``total`` as ``parts`` positive integers, in
    lexicographic order (so the list, and the ranks built on it, never change)."""
    if parts < 1 or total < parts:
        return []
    # choose the parts - 1 cut points among the total - 1 gaps between units
    result = []
    for cuts in itertools.combinations(range(1, total), parts - 1):
        bounds = (0, *cuts, total)
        result.append(tuple(b - a for a, b in itertools.pairwise(bounds)))
    return result


def enumerate_schedules(loops: int, granularity: int) -> list[StepSchedule]:
    """All schedules of ``loops`` steps with step sizes k / ``granularity`` (k >= 1)."""
    if loops < 1 or granularity < 1:
        raise ValueError(f"schedules need loops >= 1 and granularity >= 1, got {loops} and {granularity}")
    if granularity < loops:
        raise ValueError(f"{loops} steps of at least 1/{granularity} each cannot sum to 1")
    found = [
        StepSchedule(tuple(float(Fraction(part, granularity)) for part in parts))
        for parts in compositions(granularity, loops)
    ]
    assert len(found) == math.comb(granularity - 1, loops - 1)
    return found


def uniform_schedule(loops: int) -> StepSchedule:
    """M equal steps of 1/M: the schedule of ``UniformLoops(M)``, marked in the figure."""
    return StepSchedule(tuple([1.0 / loops] * loops))
