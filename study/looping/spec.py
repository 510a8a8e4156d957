"""``LoopSpec``: what to loop, how many times, with which strategy, and how it meets the KV cache."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, Literal

from study.looping.strategies import STRATEGIES, HaltScope

Mode = Literal["block", "layer"]
CacheStrategy = Literal["first", "last", "none", "per_loop"]
DecodeMode = Literal["bypass", "full", "first_n"]

# Short names of hyperparameters in ``LoopSpec.id``.
ID_NAMES = {
    "ema_alpha": "alpha",
    "momentum_beta": "mom",
    "anderson_m": "m",
    "anderson_beta": "abeta",
    "per_step_alphas": "alphas",
    "anchor_beta": "beta",
    "anchor_rescale": "rescale",
}


@dataclass(frozen=True)
class LoopSpec:
    """Re-apply layers ``window`` = (a, b) (inclusive) of a frozen decoder ``loops`` = K times.

    Layers 0..a-1 run once, then the loop, then layers b+1..N-1. ``mode="block"``
    iterates the whole window as one map g = L_b o ... o L_a; ``mode="layer"`` iterates
    each window layer on its own (L_a K times, then L_{a+1} K times, ...).

    Hyperparameters default to the reference's values; a strategy may only be given
    the ones it reads (``STRATEGIES[name].hyperparameters``), and ``halt_tau`` only if
    it can halt.

    KV cache: loop-body passes never leave KV entries. After the loop one more pass
    over the window writes its KV from the window's input (``cache_strategy="first"``)
    or from the loop's output (``"last"``); ``"none"`` writes nothing, and then the
    window's layers attend within the current tokens only. ``"per_loop"`` (ours) has no
    extra pass: every pass of a window layer keeps its own KV slot, so a token decoded at
    pass j attends to the earlier tokens' pass-j keys and values, as in a teacher-forced
    forward; cached decoding then gives the teacher-forced logits. It costs one KV slot
    per pass and window layer, needs ``decode_mode="full"`` (every pass must run for every
    token) and refuses strategies and halting that read other positions (not causal).

    Decode calls (a cache that already holds tokens) loop under ``decode_mode="full"``,
    run the window once under ``"bypass"``, and under ``"first_n"`` loop for the first
    ``decode_first_n`` decode calls after each prefill, then bypass.

    Executed loops: the number of loops a row actually ran, K unless ``halt_tau``
    stopped it earlier (an aitken step counts as two loops); in layer mode the mean
    over the window's layers, each of which halts on its own; 1 for a bypassed decode
    call. The wrapper reports it per row with every output.
    """

    window: tuple[int, int]
    loops: int
    strategy: str = "naive"
    mode: Mode = "block"
    ema_alpha: float = 0.5
    momentum_beta: float = 0.3
    anderson_m: int = 2
    anderson_beta: float = 1.0
    per_step_alphas: tuple[float, ...] | None = None
    anchor_beta: float = 0.0
    anchor_rescale: bool = False
    halt_tau: float | None = None
    halt_scope: HaltScope = "row"
    cache_strategy: CacheStrategy = "last"
    decode_mode: DecodeMode = "bypass"
    decode_first_n: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "window", tuple(self.window))
        if self.per_step_alphas is not None:
            object.__setattr__(self, "per_step_alphas", tuple(float(a) for a in self.per_step_alphas))
        self._validate()

    def _validate(self) -> None:
        def fail(message: str) -> None:
            raise ValueError(f"LoopSpec: {message}")

        if self.strategy not in STRATEGIES:
            fail(f"unknown strategy {self.strategy!r} (choose from {', '.join(STRATEGIES)})")
        entry = STRATEGIES[self.strategy]
        a, b = self.window if len(self.window) == 2 else (None, None)
        if not (isinstance(a, int) and isinstance(b, int) and 0 <= a <= b):
            fail(f"window must be two layer indices 0 <= a <= b, got {self.window}")
        if not isinstance(self.loops, int) or self.loops < 1:
            fail(f"loops must be an integer >= 1, got {self.loops!r}")
        for name, value, choices in (
            ("mode", self.mode, ("block", "layer")),
            ("cache_strategy", self.cache_strategy, ("first", "last", "none", "per_loop")),
            ("decode_mode", self.decode_mode, ("bypass", "full", "first_n")),
            ("halt_scope", self.halt_scope, ("row", "batch")),
        ):
            if value not in choices:
                fail(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        if self.mode not in entry.modes:
            fail(f"strategy {self.strategy} runs in {entry.modes[0]} mode only, got mode={self.mode}")
        defaults = {f.name: f.default for f in fields(LoopSpec)}
        for name in ID_NAMES:
            if name not in entry.hyperparameters and getattr(self, name) != defaults[name]:
                fail(f"strategy {self.strategy} does not use {name}")
        if self.halt_tau is not None and not entry.halts:
            fail(f"strategy {self.strategy} cannot halt early (halt_tau is for {', '.join(_halting())})")
        if self.halt_tau is not None and not (math.isfinite(self.halt_tau) and self.halt_tau > 0):
            fail(f"halt_tau must be a positive number, got {self.halt_tau}")
        if self.strategy == "aitken" and self.loops % 2:
            fail(f"aitken takes two passes per step, so loops must be even, got {self.loops}")
        wanted = {"ema_sched": self.loops, "poly_blend": self.loops + 1}.get(self.strategy)
        if wanted is not None and (self.per_step_alphas is None or len(self.per_step_alphas) != wanted):
            got = "none" if self.per_step_alphas is None else len(self.per_step_alphas)
            fail(f"{self.strategy} needs per_step_alphas of length {wanted} with loops={self.loops}, got {got}")
        if not isinstance(self.anderson_m, int) or self.anderson_m < 1:
            fail(f"anderson_m must be an integer >= 1, got {self.anderson_m!r}")
        if (self.decode_mode == "first_n") != (self.decode_first_n > 0):
            fail(f"decode_first_n={self.decode_first_n} needs decode_mode='first_n' and vice versa (n >= 1)")
        if self.cache_strategy == "per_loop":
            self._validate_per_loop(fail)

    def _validate_per_loop(self, fail: Callable[[str], None]) -> None:
        """per_loop equals teacher forcing only if each pass of a token reads nothing but
        that token's own state and the earlier tokens' KV of the same pass."""
        if STRATEGIES[self.strategy].mixes_positions:
            fail(f"strategy {self.strategy} mixes positions (not causal): it cannot go with cache_strategy per_loop")
        if self.halt_tau is not None:
            fail("halting reads a whole row's norms (not causal): halt_tau cannot go with cache_strategy per_loop")
        if self.decode_mode != "full":
            fail(f"cache_strategy per_loop needs decode_mode='full' (a KV slot per pass), got {self.decode_mode!r}")

    @property
    def hyperparameters(self) -> dict[str, Any]:
        """The strategy's hyperparameters as keyword arguments of its rule (without halt_tau)."""
        values = {name: getattr(self, name) for name in STRATEGIES[self.strategy].hyperparameters}
        if values.get("per_step_alphas") is not None:
            values["per_step_alphas"] = list(values["per_step_alphas"])
        return values

    @property
    def id(self) -> str:
        """Stable readable name, e.g. ``euler-w12-15-K3``; non-default settings are appended
        (``-layer``, ``-alpha0.7``, ``-halt0.1``, ``-cache-first``, ``-decode-full`` ...)."""
        defaults = {f.name: f.default for f in fields(LoopSpec)}
        parts = [self.strategy, f"w{self.window[0]}-{self.window[1]}", f"K{self.loops}"]
        if self.mode != "block":
            parts.append(self.mode)
        for name in STRATEGIES[self.strategy].hyperparameters:
            value = getattr(self, name)
            if value != defaults[name]:
                shown = ",".join(f"{a:g}" for a in value) if isinstance(value, tuple) else f"{value:g}"
                parts.append(ID_NAMES[name] if isinstance(value, bool) else f"{ID_NAMES[name]}{shown}")
        if self.halt_tau is not None:
            parts.append(f"halt{self.halt_tau:g}" + ("batch" if self.halt_scope == "batch" else ""))
        if self.cache_strategy != "last":
            parts.append(f"cache-{self.cache_strategy}")
        if self.decode_mode != "bypass":
            parts.append("decode-" + (f"first{self.decode_first_n}" if self.decode_mode == "first_n" else "full"))
        return "-".join(parts)

    @classmethod
    def from_settings(cls, entry: dict[str, Any]) -> LoopSpec:
        """A spec from one entry of the conformance fixture's ``settings.json``. The fixture
        was made by the reference, whose halting is batch-wide, hence ``halt_scope="batch"``."""
        return cls(
            window=tuple(entry["window"]),
            loops=entry["K"],
            strategy=entry["strategy"],
            mode=entry["mode"],
            cache_strategy=entry["cache_strategy"],
            decode_mode=entry["decode_mode"],
            halt_scope="batch",
            **entry["hyperparameters"],
        )

    def to_settings(self) -> dict[str, Any]:
        """The inverse of ``from_settings`` (the fields an entry describes the loop with)."""
        hyperparameters = self.hyperparameters
        if STRATEGIES[self.strategy].halts:
            hyperparameters["halt_tau"] = self.halt_tau
        return {
            "strategy": self.strategy,
            "mode": self.mode,
            "window": list(self.window),
            "K": self.loops,
            "hyperparameters": hyperparameters,
            "cache_strategy": self.cache_strategy,
            "decode_mode": self.decode_mode,
        }


def _halting() -> list[str]:
    return [name for name, entry in STRATEGIES.items() if entry.halts]
