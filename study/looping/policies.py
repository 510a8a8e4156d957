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

The halting policies (``RungLadder`` and its looped-decoder sibling ``WindowLadder``,
``HaltingWindow``) of one family share a *trace* (``LadderTrace``, ``WindowLadderTrace``,
``WindowTrace``): every step they may stop at with its halting signals, computed once,
from which each (rule, tau) is a lookup (``study.looping.halting``).

A *loop family* turns the loop counts of a config's grids (``nll.inference_loops``,
``sft.train_loops`` ...) into policies of one backbone: ``LoopFormerFamily`` gives
``UniformLoops``; ``WindowFamily`` (window, strategy, ...) gives ``LoopedWindow``.

This module is plain data: it imports neither models nor stages.
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import pairwise
from typing import TYPE_CHECKING, Any, ClassVar, cast

if TYPE_CHECKING:
    from study.looping.spec import CacheStrategy, DecodeMode, LoopSpec, Mode

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
    mode: Mode = "block"
    cache_strategy: CacheStrategy = "last"
    decode_mode: DecodeMode = "full"
    backbone: ClassVar[str] = LOOPED_DECODER

    def policy(self, loops: int) -> LoopedWindow:
        from study.looping.spec import LoopSpec  # the spec module validates strategies

        spec = LoopSpec(
            window=cast("tuple[int, int]", tuple(self.window)),  # a list when it comes from a config
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


# ---- halting policies: depth chosen per input (their backbones' entries run them) -----------

HALTING_RULES = ("residual", "kl")


def _check_tau(tau: float) -> None:
    if isinstance(tau, bool) or not isinstance(tau, int | float) or not math.isfinite(tau) or tau < 0:
        raise ValueError(f"halting threshold tau must be a finite number >= 0, got {tau!r}")


@dataclass(frozen=True)
class HaltingWindow(DepthPolicy):
    """A looped decoder that stops iterating its window per row, at most ``spec.loops``
    (K_max) times. The signal is measured on the row's prompt only (never on the tokens
    it is scored on): ``residual`` stops once ||x_k - x_{k-1}|| / ||x_{k-1}|| < tau over
    the prompt positions; ``kl`` once KL(p_k || p_{k-1}) < tau, with p the LM head's
    reading (final norm + head) of the window state at the last prompt position.
    tau = 0 never stops early: the policy is then ``LoopedWindow(spec)`` exactly."""

    spec: LoopSpec  # without halt_tau: the halting rule here replaces the spec's own
    rule: str
    tau: float
    backbone: ClassVar[str] = LOOPED_DECODER

    def __post_init__(self) -> None:
        from study.looping.strategies import STRATEGIES

        if self.rule not in HALTING_RULES:
            raise ValueError(f"halting rule must be one of {', '.join(HALTING_RULES)}, got {self.rule!r}")
        _check_tau(self.tau)
        if self.spec.halt_tau is not None:
            raise ValueError("HaltingWindow takes a spec without halt_tau (the policy's rule halts)")
        if not STRATEGIES[self.spec.strategy].halts or self.spec.mode != "block":
            raise ValueError(f"strategy {self.spec.strategy} in {self.spec.mode} mode cannot halt per row")

    @property
    def id(self) -> str:
        return f"{self.spec.id}-{self.rule}{self.tau:g}"

    @property
    def inference_loops(self) -> int:
        return self.spec.loops

    @property
    def halting(self) -> Any | None:
        return (self.rule, self.tau)

    @property
    def trace(self) -> WindowTrace:
        """Every step this policy may stop at, with every rule's signal: one computation
        for every (rule, tau) of the same spec (``study.looping.halting``)."""
        return WindowTrace(self.spec)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "loop_spec": self.spec.to_settings(), "rule": self.rule, "tau": self.tau}


@dataclass(frozen=True)
class RungLadder(DepthPolicy):
    """LoopFormer with M chosen per input from a ladder (e.g. 2, 4, 8, 16): run the
    first rung, then each next one while KL(p_M || p_previous) >= tau on the
    distribution of the first answer token (the last prompt position), and score the
    answer at the rung it stopped on. Every rung run counts as cost: stopping at 8
    costs 2 + 4 + 8 loops. tau = 0 climbs to the top rung: ``UniformLoops(ladder[-1])``'s
    NLL at the cost of the whole ladder."""

    ladder: tuple[int, ...]
    tau: float
    backbone: ClassVar[str] = LOOPFORMER

    def __post_init__(self) -> None:
        ladder = tuple(self.ladder)
        object.__setattr__(self, "ladder", ladder)
        if len(ladder) < 2 or any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in ladder):
            raise ValueError(f"a ladder needs at least two positive loop counts, got {list(ladder)}")
        if any(b <= a for a, b in pairwise(ladder)):
            raise ValueError(f"ladder rungs must increase, got {list(ladder)}")
        _check_tau(self.tau)

    @property
    def id(self) -> str:
        return "ladder-" + "-".join(str(m) for m in self.ladder) + f"-kl{self.tau:g}"

    @property
    def inference_loops(self) -> int:
        return sum(self.ladder)  # the most it may cost

    @property
    def halting(self) -> Any | None:
        return ("kl", self.tau)

    @property
    def trace(self) -> LadderTrace:
        """Every rung with its KL to the rung below: one computation for every tau."""
        return LadderTrace(self.ladder)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "ladder": list(self.ladder), "rule": "kl", "tau": self.tau}


def _window_ladder_stem(ladder: Sequence[int], spec: LoopSpec) -> str:
    """``ladder-<rungs>-`` and ``spec.id`` without its ``-K<loops>`` (the rungs differ in K alone)."""
    head = _SPEC_HEAD.match(spec.id)
    assert head is not None  # every LoopSpec id starts so
    rungs = "-".join(str(k) for k in ladder)
    return f"ladder-{rungs}-{head['strategy']}-w{head['a']}-{head['b']}{spec.id[head.end() :]}"


@dataclass(frozen=True)
class WindowLadder(RungLadder):
    """A looped decoder with K chosen per input from a ladder of fixed depths (e.g. 1,
    2, 4, 8): ``RungLadder`` with ``LoopedWindow`` rungs, each rung ``spec`` at K =
    that rung (``spec`` is the top rung's: K = ``ladder[-1]``, no halt_tau). Unlike
    ``HaltingWindow``, a row stops on a finished trajectory: its answer is scored at
    ``LoopedWindow(K)`` exactly (steps of 1/K), the fixed-depth sweep's NLL, and it pays
    for every rung run (stopping at 4 of 1, 2, 4 costs 1 + 2 + 4 loops). The signal is
    the KL of the first answer token's distribution (the last prompt position) to the
    rung below, read off a forward of the prompt alone at each rung: the decision reads
    the prompt only, exactly what generation sees, so scoring, the adaptive stage's
    trace and generation stop a row on the same rung. Id:
    ``ladder-1-2-4-8-euler-w12-15-decode-full-kl0.01`` (the spec's id without its K)."""

    spec: LoopSpec
    backbone: ClassVar[str] = LOOPED_DECODER

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.spec.halt_tau is not None:
            raise ValueError("WindowLadder takes a spec without halt_tau (the ladder's KL decides the depth)")
        if self.spec.loops != self.ladder[-1]:
            raise ValueError(f"WindowLadder's spec is its top rung's: loops {self.spec.loops} != {self.ladder[-1]}")
        for k in self.ladder:  # every rung must be a valid spec (e.g. aitken takes even K only)
            replace(self.spec, loops=k)

    @property
    def rungs(self) -> tuple[LoopedWindow, ...]:
        """The fixed depths it climbs, in order."""
        return tuple(LoopedWindow(replace(self.spec, loops=k)) for k in self.ladder)

    @property
    def id(self) -> str:
        return f"{_window_ladder_stem(self.ladder, self.spec)}-kl{self.tau:g}"

    @property
    def trace(self) -> WindowLadderTrace:
        return WindowLadderTrace(self.ladder, self.spec)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "loop_spec": self.spec.to_settings()}


# ---- traces: every step a halting policy may stop at, computed once -------------------------


class HaltingTrace(DepthPolicy):
    """What every halting policy of one family shares, computed once per example: each
    step it may stop at (a rung of a ladder, a step of a K_max-step window), the loops
    stopping there costs, the answer's NLL there, and each rule's signal at that step.
    A policy's result is then a lookup (``study.looping.halting``). A trace is not run
    as one depth: its runner's ``trace`` yields the steps."""

    signals: ClassVar[tuple[str, ...]]  # the rules whose signal every step records
    first_signal: ClassVar[int] = 0  # the first step with a signal (a ladder's first rung has none)

    @property
    def halting(self) -> Any | None:
        return None  # it never stops: the policies it serves do

    @property
    def sweep_steps(self) -> tuple[DepthPolicy, ...] | None:
        """The fixed-depth policy each step's NLL is, where the trace leaves its NLL to the
        fixed-depth sweep (``results/nll.csv``) and computes only cost and signals; None:
        the trace scores every step itself."""
        return None


@dataclass(frozen=True)
class LadderTrace(HaltingTrace):
    """Every rung of a LoopFormer ladder (``RungLadder``) on every example, each with the
    KL of its first-answer-token distribution to the rung below (none at the first rung)."""

    ladder: tuple[int, ...]
    backbone: ClassVar[str] = LOOPFORMER
    signals: ClassVar[tuple[str, ...]] = ("kl",)
    first_signal: ClassVar[int] = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "ladder", tuple(self.ladder))
        RungLadder(self.ladder, 0.0)  # the same checks as the ladders it serves

    @property
    def id(self) -> str:
        return "ladder-" + "-".join(str(m) for m in self.ladder) + "-trace"

    @property
    def inference_loops(self) -> int:
        return sum(self.ladder)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "ladder": list(self.ladder), "signals": list(self.signals)}


@dataclass(frozen=True)
class WindowLadderTrace(LadderTrace):
    """Every rung of a looped decoder's ladder (``WindowLadder``) on every example: rung
    K's NLL is ``LoopedWindow(K)``'s, with the KL to the rung below (none at the first),
    read off the prompt alone as the ladder decides. The trace computes only costs and
    signals (prompt-only forwards); each rung's NLL is the fixed-depth sweep's at K
    (``sweep_steps``), so every rung must be on ``nll.inference_loops``."""

    spec: LoopSpec  # the top rung's
    backbone: ClassVar[str] = LOOPED_DECODER

    def __post_init__(self) -> None:
        object.__setattr__(self, "ladder", tuple(self.ladder))
        WindowLadder(self.ladder, 0.0, self.spec)  # the same checks as the ladders it serves

    @property
    def rungs(self) -> tuple[LoopedWindow, ...]:
        return WindowLadder(self.ladder, 0.0, self.spec).rungs

    @property
    def sweep_steps(self) -> tuple[DepthPolicy, ...]:
        return self.rungs

    @property
    def id(self) -> str:
        return f"{_window_ladder_stem(self.ladder, self.spec)}-trace"

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "loop_spec": self.spec.to_settings()}


@dataclass(frozen=True)
class WindowTrace(HaltingTrace):
    """Every step of a looped window's K_max-step trajectory (``HaltingWindow``'s spec),
    each with both rules' signals. A row that halts at step k keeps the state of step k
    of *this* trajectory (steps of 1/K_max), so a trace serves the rules and taus of one
    spec only."""

    spec: LoopSpec
    backbone: ClassVar[str] = LOOPED_DECODER
    signals: ClassVar[tuple[str, ...]] = HALTING_RULES

    def __post_init__(self) -> None:
        HaltingWindow(self.spec, HALTING_RULES[0], 0.0)  # the same checks as the windows it serves

    @property
    def id(self) -> str:
        return f"{self.spec.id}-trace"

    @property
    def inference_loops(self) -> int:
        return self.spec.loops

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "loop_spec": self.spec.to_settings(), "signals": list(self.signals)}


# ---- policy ids -> policies ----------------------------------------------------------------

# ``f"{x:g}"`` of a float: 0.5, 3, 1e-05, -0.2, inf (exponents carry a hyphen, so ids are
# read with these patterns, never by splitting on "-")
_NUMBER = r"-?(?:\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?|-?inf"
_SPEC_HEAD = re.compile(r"(?P<strategy>[a-z_]+)-w(?P<a>\d+)-(?P<b>\d+)-K(?P<loops>\d+)")
# one ``-part`` of a LoopSpec id after the head, in the order ``LoopSpec.id`` writes them
_SPEC_PARTS = re.compile(
    r"-(?:(?P<layer>layer)"
    rf"|(?P<name>alphas|alpha|abeta|mom|m|beta)(?P<value>(?:{_NUMBER})(?:,(?:{_NUMBER}))*)"
    r"|(?P<rescale>rescale)"
    rf"|halt(?P<tau>{_NUMBER})(?P<batch>batch)?"
    r"|cache-(?P<cache>[a-z_]+)"
    r"|decode-(?:(?P<full>full)|first(?P<first>\d+)))"
)
_HALTING_TAIL = re.compile(rf"-(?P<rule>{'|'.join(HALTING_RULES)})(?P<tau>{_NUMBER})$")
_LADDER = re.compile(rf"ladder-(?P<rungs>\d+(?:-\d+)+)-kl(?P<tau>{_NUMBER})")
_LADDER_TRACE = re.compile(r"ladder-(?P<rungs>\d+(?:-\d+)+)-trace")
# a looped decoder's ladder: the rungs, then its spec's id without -K<loops> (a strategy starts
# with a letter, so the rungs end before it)
_WINDOW_LADDER = re.compile(
    rf"ladder-(?P<rungs>\d+(?:-\d+)+)-(?P<head>[a-z_]+-w\d+-\d+)(?P<rest>.*?)(?:-kl(?P<tau>{_NUMBER})|(?P<trace>-trace))"
)


def _parse_spec(text: str) -> LoopSpec:
    """A ``LoopSpec`` from its ``id``; settings the id leaves out take the spec's defaults."""
    from study.looping.spec import ID_NAMES, LoopSpec

    head = _SPEC_HEAD.match(text)
    if head is None:
        raise ValueError("expected <strategy>-w<a>-<b>-K<loops>[-...] (e.g. euler-w12-15-K3)")
    fields: dict[str, Any] = {"window": (int(head["a"]), int(head["b"])), "loops": int(head["loops"])}
    fields["strategy"] = head["strategy"]
    field_of = {short: name for name, short in ID_NAMES.items()}
    position = head.end()
    while position < len(text):
        part = _SPEC_PARTS.match(text, position)
        if part is None:
            raise ValueError(f"cannot read {text[position:]!r}")
        position = part.end()
        if part["layer"]:
            fields["mode"] = "layer"
        elif part["name"]:
            name = field_of[part["name"]]
            values = [float(v) for v in part["value"].split(",")]
            if name == "per_step_alphas":
                fields[name] = tuple(values)
            elif len(values) != 1:
                raise ValueError(f"{part['name']} takes one number, got {part['value']}")
            else:
                fields[name] = int(values[0]) if name == "anderson_m" else values[0]
        elif part["rescale"]:
            fields["anchor_rescale"] = True
        elif part["tau"] is not None:
            fields["halt_tau"] = float(part["tau"])
            fields["halt_scope"] = "batch" if part["batch"] else "row"
        elif part["cache"]:
            fields["cache_strategy"] = part["cache"]
        elif part["full"]:
            fields["decode_mode"] = "full"
        else:
            fields["decode_mode"], fields["decode_first_n"] = "first_n", int(part["first"])
    return LoopSpec(**fields)


def parse_policy(text: str) -> DepthPolicy:
    """The inverse of ``DepthPolicy.id`` for every policy: ``M8``, ``sched-0.5-0.5``,
    ``ladder-2-4-8-kl0.01``, ``euler-w12-15-K3`` (with any of ``LoopSpec.id``'s suffixes,
    e.g. ``-decode-full``), halting windows ``euler-w12-15-K8-residual0.05``, window
    ladders ``ladder-1-2-4-euler-w12-15-kl0.01`` and the traces ``ladder-2-4-8-trace``,
    ``ladder-1-2-4-euler-w12-15-trace`` and ``euler-w12-15-K8-trace``.

    Settings an id leaves out take their defaults. The id must be spelt as the policy
    spells it (the results files' spelling), so that one computation has one name: a
    different spelling of a valid policy is refused with the right one."""
    text = text.strip()
    try:
        if (text.startswith("M") and text[1:].isdigit()) or text.startswith("sched-"):
            return parse_loopformer_policy(text)
        ladder = _LADDER.fullmatch(text)
        ladder_trace = _LADDER_TRACE.fullmatch(text)
        window_ladder = _WINDOW_LADDER.fullmatch(text)
        if window_ladder is not None:
            rungs = tuple(int(k) for k in window_ladder["rungs"].split("-"))
            top = _parse_spec(f"{window_ladder['head']}-K{rungs[-1]}{window_ladder['rest']}")
            policy: DepthPolicy
            if window_ladder["trace"]:
                policy = WindowLadderTrace(rungs, top)
            else:
                policy = WindowLadder(rungs, float(window_ladder["tau"]), top)
        elif ladder is not None:
            policy = RungLadder(tuple(int(m) for m in ladder["rungs"].split("-")), float(ladder["tau"]))
        elif ladder_trace is not None:
            policy = LadderTrace(tuple(int(m) for m in ladder_trace["rungs"].split("-")))
        elif text.endswith("-trace"):
            policy = WindowTrace(_parse_spec(text.removesuffix("-trace")))
        else:
            tail = _HALTING_TAIL.search(text)
            if tail is not None:
                spec = _parse_spec(text[: tail.start()])
                policy = HaltingWindow(spec, tail["rule"], float(tail["tau"]))
            else:
                policy = LoopedWindow(_parse_spec(text))
    except ValueError as error:
        message = str(error).removeprefix(f"policy {text!r}: ")
        raise ValueError(f"policy {text!r}: {message}") from None
    if policy.id != text:
        raise ValueError(f"policy {text!r}: this policy's id is {policy.id!r} (spell it so)")
    return policy
