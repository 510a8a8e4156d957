"""Calibrated halting thresholds: tau grids and operating points chosen on one slice.

A halting rule's tau means nothing on its own: the same tau stops a KL signal and a
residual signal at very different depths, and a hand-written grid may put every point at
one end of the cost range. So the grid of each (model, family, rule) is read off that
rule's own signal on a calibration slice (``quantile_taus``), and an operating point is
chosen there (``choose_within_epsilon``, ``choose_equal_compute``) before it is scored,
once, on the slice it is reported on. Nothing here reads a reporting slice.

Every function is pure and refuses NaN: a point without a finite cost and NLL is not a
point to choose.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

TAU_DIGITS = 4  # quantile taus keep 4 significant digits: readable policy ids, same spread
EQUAL_COMPUTE_TOLERANCE = 0.5  # loops: an equal-compute target is met when the mean rounds to the depth


@dataclass(frozen=True)
class Point:
    """One tau on the calibration slice: its mean executed loops and NLL per token."""

    tau: float
    mean_loops: float
    nll_per_token: float

    def __post_init__(self) -> None:
        values = (self.tau, self.mean_loops, self.nll_per_token)
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"calibration point {values} is not finite")


@dataclass(frozen=True)
class Choice:
    """The operating point a target picked, and whether it met the target."""

    point: Point
    met: bool


def finite_signal(signal: np.ndarray) -> np.ndarray:
    """The signal values of the steps that have one (a ladder's first rung has none), pooled, as
    the runners compare them (float32)."""
    values = np.asarray(signal, dtype=np.float32).ravel()
    values = values[~np.isnan(values)]
    if values.size == 0 or not np.all(np.isfinite(values)):
        raise ValueError("calibration: the signal has no values at any step, or infinite ones")
    return values


def quantile_taus(signal: np.ndarray, levels: Sequence[float]) -> list[float]:
    """The ``levels`` quantiles (each in (0, 1)) of ``signal``'s values, rounded to
    ``TAU_DIGITS`` significant digits, distinct and increasing."""
    if not levels or any(not 0.0 < level < 1.0 for level in levels):
        raise ValueError(f"quantile levels must lie in (0, 1), got {list(levels)}")
    quantiles = np.quantile(finite_signal(signal).astype(np.float64), sorted(levels))
    return sorted({float(f"{q:.{TAU_DIGITS}g}") for q in quantiles})


def tau_grid(configured: Sequence[float], from_quantiles: Sequence[float]) -> list[float]:
    """The taus tried: the configured ones and those from quantiles, increasing. A grid from
    quantiles also holds 0 (never stop early: the family's most expensive point)."""
    extra = {0.0} if from_quantiles else set()
    return sorted({float(t) for t in configured} | {float(t) for t in from_quantiles} | extra)


def candidate_taus(signal: np.ndarray) -> list[float]:
    """Every tau that gives a distinct outcome, exactly: a rule stops at the first step whose
    signal is below tau, so the outcome only changes where tau passes a signal value. 0
    (never stop), each distinct value, and the next float32 above the largest (stop at the
    first step with a signal)."""
    values = np.unique(finite_signal(signal))
    above = np.nextafter(values[-1], np.float32(np.inf), dtype=np.float32)
    return sorted({0.0, *(float(v) for v in values if v > 0), float(above)})


def cheapest(points: Sequence[Point]) -> Point:
    """The lowest mean loops (then the lowest NLL, then the lowest tau)."""
    return min(points, key=lambda p: (p.mean_loops, p.nll_per_token, p.tau))


def choose_within_epsilon(points: Sequence[Point], reference_nll: float, epsilon: float) -> Choice:
    """The cheapest point whose NLL per token is at most ``reference_nll + epsilon``; when
    none is, the lowest-NLL point (the cheaper on ties), not met."""
    if not points or not (math.isfinite(reference_nll) and math.isfinite(epsilon)) or epsilon < 0:
        raise ValueError(f"within_eps needs points, a finite reference and epsilon >= 0 ({reference_nll}, {epsilon})")
    within = [p for p in points if p.nll_per_token <= reference_nll + epsilon]
    if within:
        return Choice(cheapest(within), True)
    return Choice(min(points, key=lambda p: (p.nll_per_token, p.mean_loops, p.tau)), False)


def choose_equal_compute(
    points: Sequence[Point], target_loops: float, tolerance: float = EQUAL_COMPUTE_TOLERANCE
) -> Choice:
    """The point whose mean loops is closest to ``target_loops`` (the cheaper on ties, then the
    lower NLL); met when it is within ``tolerance`` loops of it."""
    if not points or not math.isfinite(target_loops):
        raise ValueError(f"equal_compute needs points and a finite target, got {target_loops}")
    best = min(points, key=lambda p: (abs(p.mean_loops - target_loops), p.mean_loops, p.nll_per_token, p.tau))
    return Choice(best, abs(best.mean_loops - target_loops) <= tolerance)


def depths_in_range(points: Sequence[Point], fixed_loops: Sequence[float]) -> list[int]:
    """Indices of the fixed depths inside the family's cost range [cheapest, dearest mean loops]."""
    low, high = min(p.mean_loops for p in points), max(p.mean_loops for p in points)
    return [d for d, loops in enumerate(fixed_loops) if low - 1e-9 <= loops <= high + 1e-9]


def fixed_at_equal_compute(fixed_loops: Sequence[float], fixed_nll: Sequence[float], budget: float) -> int | None:
    """The fixed depth a budget of ``budget`` mean loops affords with the lowest NLL (the
    cheaper on ties); None when none is that cheap."""
    fitting = [d for d, loops in enumerate(fixed_loops) if loops <= budget + 1e-9]
    if not fitting:
        return None
    return min(fitting, key=lambda d: (fixed_nll[d], fixed_loops[d]))


def oracle_gap_closed(fixed_nll: float, rule_nll: float, oracle_nll: float) -> float | None:
    """The share of the oracle's gain over the fixed depth that the rule reaches,
    (fixed - rule) / (fixed - oracle); None (an empty cell, never NaN) when the oracle gains
    nothing there (or less than nothing: a budget below the fixed depth's loops)."""
    values = (fixed_nll, rule_nll, oracle_nll)
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"oracle_gap_closed of non-finite NLL {values}")
    gain = fixed_nll - oracle_nll
    if gain <= 1e-12 * max(1.0, abs(fixed_nll)):
        return None
    return (fixed_nll - rule_nll) / gain
