"""Depth policies: what one sweep cell runs and what one training run trains at.

A depth policy says how deep a looped backbone computes for an input:

- ``UniformLoops(M)`` (LoopFormer): M loops of step 1/M; id ``M8``;
- ``StepSchedule(steps)`` (LoopFormer): an explicit schedule of step sizes summing
  to 1; id ``sched-0.5-0.25-0.125-0.125``;
- ``LoopedWindow(spec)`` (a training-free looped decoder): a ``LoopSpec`` (window,
  K, strategy and its hyperparameters, cache and decode modes); id ``spec.id``, e.g.
  ``euler-w12-15-K3``.

Every policy has a stable readable ``id`` (it names the cell files, so it must never
change for the same computation), the number of loops it runs (``inference_loops``:
the cost axis, the FLOPs and the ``inference_loops`` column of the results), and a
``halting`` rule or None. A policy with a halting rule may stop some inputs early:
the backbone then reports the loops each example actually executed, and the sweeps
record them per example (``executed_loops``); a fixed-depth policy executes
``inference_loops`` for every example.

A *loop family* turns the loop counts of a config's grids (``nll.inference_loops``,
``sft.train_loops`` ...) into policies of one backbone: ``LoopFormerFamily`` gives
``UniformLoops``; ``WindowFamily`` (window, strategy, ...) gives ``LoopedWindow``.

This module is plain data: it imports neither models nor stages.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from study.looping.spec import LoopSpec

LOOPFORMER = "loopformer"
LOOPED_DECODER = "looped_decoder"
BACKBONES = (LOOPFORMER, LOOPED_DECODER)
SCHEDULE_TOLERANCE = 1e-6


class DepthPolicy(ABC):
    """How deep one forward pass (or one generation) runs; see the module docstring."""

    backbone: ClassVar[str]

    @property
    @abstractmethod
    def id(self) -> str:
        """Stable, file-safe, readable name of the policy."""

    @property
    @abstractmethod
    def inference_loops(self) -> int:
        """Loops the policy runs (for a halting policy: the most it may run)."""

    @property
    def halting(self) -> Any | None:
        """The halting rule, or None for a fixed depth (every example runs ``inference_loops``)."""
        return None

    def describe(self) -> dict[str, Any]:
        """What a cell file and the manifest record about the policy."""
        return {"policy": self.id, "backbone": self.backbone, "inference_loops": self.inference_loops}


@dataclass(frozen=True)
class UniformLoops(DepthPolicy):
    """LoopFormer at M uniform steps of 1/M."""

    loops: int
    backbone: ClassVar[str] = LOOPFORMER

    def __post_init__(self) -> None:
        if isinstance(self.loops, bool) or not isinstance(self.loops, int) or self.loops < 1:
            raise ValueError(f"uniform loops must be a positive integer, got {self.loops!r}")

    @property
    def id(self) -> str:
        return f"M{self.loops}"

    @property
    def inference_loops(self) -> int:
        return self.loops

    def loopformer_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``LoopFormerForCausalLM.forward`` that run this policy."""
        return {"num_loops": self.loops}


@dataclass(frozen=True)
class StepSchedule(DepthPolicy):
    """LoopFormer along an explicit schedule of step sizes (they sum to 1)."""

    steps: tuple[float, ...]
    backbone: ClassVar[str] = LOOPFORMER

    def __post_init__(self) -> None:
        steps = tuple(float(s) for s in self.steps)
        object.__setattr__(self, "steps", steps)
        if not steps or any(not s > 0 for s in steps):
            raise ValueError(f"a schedule needs positive step sizes, got {list(steps)}")
        if abs(math.fsum(steps) - 1.0) > SCHEDULE_TOLERANCE:
            raise ValueError(f"schedule {list(steps)} sums to {math.fsum(steps)!r}, not 1")

    @property
    def id(self) -> str:
        return "sched-" + "-".join(f"{s:g}" for s in self.steps)

    @property
    def inference_loops(self) -> int:
        return len(self.steps)

    @property
    def is_uniform(self) -> bool:
        return all(abs(s - 1.0 / len(self.steps)) <= SCHEDULE_TOLERANCE for s in self.steps)

    def loopformer_kwargs(self) -> dict[str, Any]:
        return {"schedule": list(self.steps)}


@dataclass(frozen=True)
class LoopedWindow(DepthPolicy):
    """A training-free looped decoder run as ``spec`` says (``study.looping.LoopSpec``)."""

    spec: LoopSpec
    backbone: ClassVar[str] = LOOPED_DECODER

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def inference_loops(self) -> int:
        return self.spec.loops

    @property
    def halting(self) -> Any | None:
        return self.spec.halt_tau

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "loop_spec": self.spec.to_settings()}


# ---- loop families: loop counts of a config -> policies ------------------------------


@dataclass(frozen=True)
class LoopFormerFamily:
    """LoopFormer's loop counts: ``UniformLoops``."""

    backbone: ClassVar[str] = LOOPFORMER

    def policy(self, loops: int) -> UniformLoops:
        return UniformLoops(loops)

    def describe(self) -> dict[str, Any]:
        return {"backbone": self.backbone}


@dataclass(frozen=True)
class WindowFamily:
    """A looped decoder's loop counts: K passes over one window with one strategy."""

    window: tuple[int, int]
    strategy: str
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)
    mode: str = "block"
    cache_strategy: str = "last"
    decode_mode: str = "full"
    backbone: ClassVar[str] = LOOPED_DECODER

    def policy(self, loops: int) -> LoopedWindow:
        from study.looping.spec import LoopSpec  # the spec module validates strategies

        spec = LoopSpec(
            window=tuple(self.window),
            loops=loops,
            strategy=self.strategy,
            mode=self.mode,
            cache_strategy=self.cache_strategy,
            decode_mode=self.decode_mode,
            **dict(self.hyperparameters),
        )
        return LoopedWindow(spec)

    def describe(self) -> dict[str, Any]:
        return {
            "backbone": self.backbone,
            "window": list(self.window),
            "strategy": self.strategy,
            "hyperparameters": dict(self.hyperparameters),
            "mode": self.mode,
            "cache_strategy": self.cache_strategy,
            "decode_mode": self.decode_mode,
        }


LoopFamily = LoopFormerFamily | WindowFamily


def policies_for(family: LoopFamily, loops: Sequence[int]) -> list[DepthPolicy]:
    """One policy per distinct loop count, in increasing order (the sweep's order)."""
    return [family.policy(k) for k in sorted(set(loops))]


def parse_loopformer_policy(text: str) -> UniformLoops | StepSchedule:
    """The inverse of ``id`` for LoopFormer policies: ``M8`` or ``sched-0.5-0.5``."""
    try:
        if text.startswith("M") and text[1:].isdigit():
            return UniformLoops(int(text[1:]))
        if text.startswith("sched-"):
            return StepSchedule(tuple(float(s) for s in text[len("sched-") :].split("-")))
    except ValueError as error:
        raise ValueError(f"policy {text!r}: {error}") from None
    raise ValueError(f"policy {text!r}: expected M<loops> (e.g. M8) or sched-<steps> (e.g. sched-0.5-0.25-0.25)")
