"""Halting policies as lookups on their trace.

A halting policy (``RungLadder``, ``WindowLadder``, ``HaltingWindow``) stops each example at the first
step whose signal is below tau, or at its last step. What it stops *on* does not depend
on tau or (for a window) on the rule: the rungs of a ladder are fixed depths, and a
window row frozen at step k keeps step k of the one K_max-step trajectory while its
batch mates run on. So a family's *trace* (``HaltingTrace``: every step's NLL, cost and
every rule's signal, per example) is computed once, and each (rule, tau) is a lookup.

What is shared, and what is not:

- LoopFormer ladder (``RungLadder``): one trace per ladder serves every tau. A rung's
  NLL is ``UniformLoops(M)``'s (the fixed-depth sweep's, when M is on its grid); its
  signal is the KL of the first answer token's distribution to the rung below.
- Looped-decoder ladder (``WindowLadder``): the same with rungs ``LoopedWindow(K)`` of
  one spec (window, strategy, cache and decode modes): one trace per (ladder, spec)
  serves every tau; a rung's NLL is the fixed-depth sweep's at K (a finished K-step
  trajectory), and stopping at a rung pays for every rung below it too. Its signal
  is read off a forward of each prompt alone (what generation sees), so the trace
  computes only costs and signals, over prompt tokens; each rung's NLL is read from
  ``results/nll.csv`` (every rung must be on ``nll.inference_loops``).
- Looped-decoder window (``HaltingWindow``): one trace per spec (window, strategy,
  K_max) serves both rules and every tau. Its steps are steps of size 1/K_max: a row
  stopped at step k has *not* run ``LoopedWindow(K=k)`` (step 1/k), so its NLL is not
  the fixed-depth sweep's (an unfinished trajectory), and a different K_max is a
  different trace.

The comparison is the runners' own: torch compares a float32 signal with tau in float32
(``kl_rows(...) < tau``), so ``stop_steps`` does too; a step without a signal (a
ladder's first rung) never stops an example.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Trace:
    """One model's trace on one slice: N examples x S steps."""

    example_ids: list[int]
    cost: np.ndarray  # [N, S] loops paid by stopping at each step
    nll_sum: np.ndarray  # [N, S] summed NLL of the whole solution when stopped there
    signals: dict[str, np.ndarray]  # rule -> [N, S] float32 signal (NaN: none at that step)

    def __post_init__(self) -> None:
        shape = (len(self.example_ids), self.cost.shape[1] if self.cost.ndim == 2 else -1)
        arrays = [self.cost, self.nll_sum, *self.signals.values()]
        if self.cost.ndim != 2 or any(a.shape != shape for a in arrays):
            raise ValueError(f"trace arrays must all be (examples, steps) = {shape}")


def stop_steps(signal: np.ndarray, tau: float) -> np.ndarray:
    """[N] each example's step: the first whose ``signal`` [N, S] is below ``tau``
    (compared in float32, as the runners compare; NaN never is), else the last."""
    below = np.asarray(signal, dtype=np.float32) < np.float32(tau)
    return np.where(below.any(axis=1), below.argmax(axis=1), signal.shape[1] - 1)


@dataclass(frozen=True)
class Outcome:
    """A halting policy's per-example result, as its runner would have scored it."""

    step: np.ndarray  # [N] index of the step each example stopped at
    executed_loops: np.ndarray  # [N] loops it paid
    nll_sum: np.ndarray  # [N]


def halting_outcome(trace: Trace, rule: str, tau: float) -> Outcome:
    """The result of halting by ``rule`` at ``tau``, read off ``trace``."""
    if rule not in trace.signals:
        raise ValueError(f"this trace records the signals {sorted(trace.signals)}, not {rule!r}")
    step = stop_steps(trace.signals[rule], tau)
    rows = np.arange(len(step))
    return Outcome(step, trace.cost[rows, step], trace.nll_sum[rows, step])
