"""Processes of one run: one (``python run_study.py``) or several (``accelerate launch``).

Under ``accelerate launch --multi_gpu --num_processes N run_study.py ...`` (GPUs, or
CPU processes on a machine without one) every process runs the
pipeline: the main process alone writes the manifest, runs the check and report
stages and aggregates results; the sweep stages split their unfinished cells between
the processes (``PartialState.split_between_processes``), each process writing its
own cell files, and the main process then reads every cell back, exactly as a
resumed single-process run does; the SFT stage gives each process its own models
(one SFT per GPU on a two-GPU machine). A plain ``python run_study.py`` is one
process and nothing here costs anything.

Every collective call is reached by all processes, even after an error in one of
them: ``settle`` gathers each process's outcome, so a failure anywhere stops all of
them with its message instead of leaving the others waiting at a barrier.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from datetime import timedelta
from functools import cache
from typing import TypeVar

from study.errors import ProcessFailed as ProcessFailed  # re-exported: raised here

T = TypeVar("T")
COLLECTIVE_TIMEOUT = timedelta(hours=12)
# launcher variables a child process must not inherit, or it would join the process group
LAUNCHER_VARIABLES = (
    "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK", "ROLE_WORLD_SIZE",
    "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_MAX_RESTARTS",
)  # fmt: skip


def launched() -> bool:
    """True under a multi-process launcher (accelerate launch, torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def launch_identity() -> str | None:
    """What every process of one launch shares and no other launch does: the rendezvous
    address and port (one port serves one launch at a time) and torchrun's run id. None in
    a single process."""
    if not launched():
        return None
    return "/".join(os.environ.get(name, "?") for name in ("MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"))


@cache
def state():
    """accelerate's ``PartialState`` (initialises the process group once, when launched).
    Without a GPU the processes talk over gloo on the CPU (``accelerate launch --multi_gpu``
    starts them through torchrun either way; ``--cpu`` alone starts a single process)."""
    import torch
    from accelerate import PartialState

    # a process that finished its share waits at the next collective for the others: torch's
    # 30-minute default ends a CPU run whose SFT models or cells are unevenly long
    return PartialState(cpu=not torch.cuda.is_available(), timeout=COLLECTIVE_TIMEOUT)


def num_processes() -> int:
    return state().num_processes if launched() else 1


def process_index() -> int:
    return state().process_index if launched() else 0


def is_main() -> bool:
    return process_index() == 0


def split(items: Sequence[T]) -> list[T]:
    """This process's contiguous share of ``items`` (all of them in a single process)."""
    if num_processes() == 1:
        return list(items)
    with state().split_between_processes(list(items)) as share:
        return list(share)


def settle(error: BaseException | None) -> None:
    """Wait for every process; re-raise this process's error, or raise ``ProcessFailed``
    when another process failed (with its message)."""
    if num_processes() == 1:
        if error is not None:
            raise error
        return
    from accelerate.utils import gather_object

    message = "" if error is None else f"{type(error).__name__}: {error}"
    outcomes = gather_object([message])
    if error is not None:
        raise error
    failed = [m for m in outcomes if m]
    if failed:
        raise ProcessFailed(f"another process of this run failed ({failed[0][:250]})")


def run_everywhere(work: Callable[[], T]) -> T | None:
    """Run ``work`` in every process, then settle."""
    try:
        result = work()
    except ProcessFailed:
        raise  # every process has heard of it already (a settle inside ``work`` raised it)
    except BaseException as error:  # passed on to every process by settle
        settle(error)
        raise
    settle(None)
    return result


def run_on_main(work: Callable[[], T]) -> T | None:
    """Run ``work`` in the main process only; the others wait for it (and fail with it)."""
    return run_everywhere(work if is_main() else (lambda: None))


def from_main(work: Callable[[], T]) -> T | None:
    """Run ``work`` in the main process and give its result to every process (so all of
    them act on one answer, e.g. which finished stages must be recomputed)."""
    result = run_on_main(work)
    if num_processes() == 1:
        return result
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([result], from_process=0)[0]


def child_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without the launcher's variables, for a child that
    must run on its own (an SFT subprocess is not a member of the sweep's process group)."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES and not k.startswith("ACCELERATE_")}
    env.update(extra or {})
    return env
