"""How many CPU threads torch uses: a config's ``torch_threads`` (a number, ``auto`` or null).

``auto`` decides once, when a process configures torch (``study.pipeline.configure_torch``):

    threads = 2  if the machine has at least 2 cores and the 1-minute load average
                 leaves at least ``AUTO_IDLE_CORES`` (1.5) cores free
                 (cpu_count - load_1min >= 1.5: on a 2-core machine, load <= 0.5),
              1  otherwise.

Why: on an idle 2-core machine two threads nearly halve the looped SmolLM2's forward
(4.61 s -> 2.23 s, issue 23); on a crowded one two threads lose, because OpenMP threads
wait on each other at every small op while other processes hold a core. The load
average is the kernel's (``os.getloadavg``), smoothed over a minute, so a job that just
ended still counts for a while: the rule errs towards 1 thread. It is not revisited
during a run. What was decided, and the load seen, is recorded in the run's manifest
(``hardware.torch_threads_choice``). This module does not import torch.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

AUTO = "auto"
AUTO_THREADS = 2  # what auto uses on an idle machine
AUTO_IDLE_CORES = 1.5  # free cores (cpu_count - 1-minute load) for the machine to count as idle


@dataclass(frozen=True)
class ThreadChoice:
    setting: int | str | None  # the config's torch_threads
    threads: int | None  # what torch is set to (None: torch's default, left alone)
    load_1min: float | None  # the load average seen (auto only)
    cpu_count: int | None
    rule: str  # how ``threads`` follows from the setting

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


_last: ThreadChoice | None = None


def choose_threads(setting: int | str | None, load_1min: float | None = None, cpus: int | None = None) -> ThreadChoice:
    """The thread count of a ``torch_threads`` setting; ``auto`` reads the load average and
    the core count unless they are given (the tests give them)."""
    if setting != AUTO:
        rule = "torch's default" if setting is None else "fixed by the config"
        return ThreadChoice(setting, None if setting is None else int(setting), None, os.cpu_count(), rule)
    if cpus is None:
        cpus = os.cpu_count() or 1
    if load_1min is None:
        try:
            load_1min = os.getloadavg()[0]
        except OSError:  # no load average on this platform: assume busy
            load_1min = float(cpus)
    idle = cpus >= AUTO_THREADS and cpus - load_1min >= AUTO_IDLE_CORES
    rule = (
        f"auto: {cpus} cores - 1-minute load {load_1min:.2f} = {cpus - load_1min:.2f} free cores "
        f"{'>=' if idle else '<'} {AUTO_IDLE_CORES}: {'idle' if idle else 'loaded'}"
    )
    return ThreadChoice(setting, AUTO_THREADS if idle else 1, round(load_1min, 3), cpus, rule)


def record(choice: ThreadChoice) -> None:
    """Remember the process's choice for its manifest."""
    global _last
    _last = choice


def last_choice() -> ThreadChoice | None:
    """The choice ``configure_torch`` made in this process (None before it ran)."""
    return _last
