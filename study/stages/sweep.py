"""The one sweep-cell loop of the ``nll``, ``exact_match`` and ``latency`` stages.

A *cell* is one model run at one depth policy (and, for NLL, on one split). Each cell
is computed once and written atomically to ``results/cells/<stage>/<name><suffix>``
(``name`` = model, split, policy id, e.g. ``train4-test-M8``). ``sweep``:

1. reads every finished cell back (a cell whose file is missing, unreadable or for
   other examples or settings counts as unfinished);
2. splits the unfinished ones between the processes of the run
   (``accelerate launch``; a single process keeps them all), keeping each model's
   cells together so it is loaded once per process;
3. computes its share, model by model, loading a model (in the config's ``sweep_dtype``)
   only when a cell of it is missing, checking for Ctrl-C between cells, with a
   progress bar over cells (and one over examples inside a cell, from the stage) on a
   terminal, and one plain log line per finished cell everywhere;
4. waits for every process and returns every cell's value (in the main process).

*Cell groups.* A stage that gives ``compute_group`` lets cells share work: the
unfinished cells of one model whose ``group_key`` is equal (by default: the same split
and the same ``prefix_key`` of their policies, e.g. every K of a looped decoder's
window, or every LoopFormer schedule, on one NLL split) form one group, computed by
one ``compute_group(cells, loaded, progress)`` call that returns one value per cell, in
order. Each value is still written to its own cell file, so resuming works per cell: a
group that was cut short recomputes only its unfinished cells (the finished ones are
never regrouped). A group is never split between processes (the processes split the
groups); cells without a key (LoopFormer's uniform depths) or alone in their group go
through ``compute`` as before.
A new stage reuses this by passing ``compute_group`` (and, for another notion of
what cells share, ``group_key``) to ``Sweep``; its values must equal ``compute``'s
cell by cell (the NLL stage's test checks its cell files byte for byte).

A stage then aggregates the values into its results files in the main process. The
aggregate is the same whichever process computed which cell, and whether the cells
were computed now or read back after an interruption.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import torch
from tqdm.auto import tqdm

from study import distributed
from study.looping.policies import DepthPolicy
from study.models.backbones import PolicyRunner, bind, prefix_key
from study.pipeline import ModelSpec, RunContext, StudyError, cell_name

V = TypeVar("V")
V_co = TypeVar("V_co", covariant=True)


@dataclass(frozen=True)
class Cell:
    model: ModelSpec
    policy: DepthPolicy
    split: str | None = None  # NLL: "test" or "train"

    @property
    def name(self) -> str:
        parts = [self.model.name] + ([self.split] if self.split else []) + [self.policy.id]
        return cell_name(*parts)


class CellStore(Protocol[V]):
    """How a stage keeps one cell's value on disk."""

    suffix: str

    def read(self, path: Path, cell: Cell) -> V | None:
        """The finished value, or None when missing, unreadable or not for this config."""

    def write(self, path: Path, cell: Cell, value: V) -> None:
        """Write ``value`` atomically."""


@dataclass
class Loaded:
    """A model (and its tokenizer) loaded for the cells of one model."""

    spec: ModelSpec
    model: torch.nn.Module
    tokenizer: Any
    cache: dict[str, Any]  # per-model work a stage reuses across cells (encoded examples ...)

    def runner(self, policy: DepthPolicy) -> PolicyRunner:
        return bind(self.model, policy)


class Compute(Protocol[V_co]):
    def __call__(self, cell: Cell, loaded: Loaded, progress: Callable[..., tqdm]) -> V_co: ...


class ComputeGroup(Protocol[V_co]):
    """The values of several cells of one model and one ``group_key``, in their order."""

    def __call__(self, cells: list[Cell], loaded: Loaded, progress: Callable[..., tqdm]) -> Sequence[V_co]: ...


def shared_prefix(cell: Cell) -> Hashable | None:
    """The default ``group_key``: cells of one model group when they are on the same
    split and their policies share their first layers (``prefix_key``); None: alone."""
    key = prefix_key(cell.policy)
    return None if key is None else (cell.split, key)


def show_bars() -> bool:
    """Progress bars on a terminal only (logs stay plain lines), in the main process."""
    return sys.stderr.isatty() and distributed.is_main()


def progress(iterable: Iterable | None = None, total: int | None = None, desc: str = "", inner: bool = False) -> tqdm:
    """A tqdm bar (``inner``: the examples of a cell, below the bar of cells)."""
    return tqdm(
        iterable, total=total, desc=desc, leave=not inner, position=1 if inner else 0,
        disable=not show_bars(), dynamic_ncols=True,
    )  # fmt: skip


def log(message: str) -> None:
    prefix = f"[process {distributed.process_index()}] " if distributed.num_processes() > 1 else ""
    tqdm.write(prefix + message, file=sys.stdout)
    sys.stdout.flush()


@dataclass
class Sweep(Generic[V]):
    """One stage's cells: ``run`` computes the missing ones and returns all values."""

    ctx: RunContext
    stage: str
    store: CellStore[V]
    compute: Compute[V]
    describe: Callable[[Cell, V], str] = lambda cell, value: ""
    spread: bool = True  # False: only the main process computes (latency: timings must not compete)
    compute_group: ComputeGroup[V] | None = None  # None: every cell alone (see the module docstring)
    group_key: Callable[[Cell], Hashable | None] = shared_prefix

    def groups(self, cells: list[Cell]) -> list[list[Cell]]:
        """``cells`` as the units computed at once: one list per group (in the order of
        its first cell), a list of one for a cell without a group."""
        if self.compute_group is None:
            return [[cell] for cell in cells]
        units: list[list[Cell]] = []
        members: dict[tuple[ModelSpec, Hashable], list[Cell]] = {}
        for cell in cells:
            key = self.group_key(cell)
            if key is None:
                units.append([cell])
            elif (cell.model, key) in members:
                members[cell.model, key].append(cell)
            else:
                units.append(members.setdefault((cell.model, key), [cell]))
        return units

    def path(self, cell: Cell) -> Path:
        return self.ctx.cells_dir(self.stage) / f"{cell.name}{self.store.suffix}"

    def run(self, cells: list[Cell]) -> dict[Cell, V] | None:
        names = [c.name for c in cells]
        if len(set(names)) != len(names):
            twice = sorted(n for n in names if names.count(n) > 1)[0]
            raise StudyError(f"{self.stage}: two cells share the name {twice}")
        pending = [cell for cell in cells if self.store.read(self.path(cell), cell) is None]
        distributed.settle(None)  # every process has seen the same finished cells before any writes
        units = self.groups(pending)  # a group stays in one process
        # latency (spread=False): the main process times every cell, one at a time
        share = distributed.split(units) if self.spread else (units if distributed.is_main() else [])
        try:
            self._compute(share, len(cells) - len(pending))
        except BaseException as error:
            distributed.settle(error)
        distributed.settle(None)
        if not distributed.is_main():
            return None
        values: dict[Cell, V] = {}
        for cell in cells:
            value = self.store.read(self.path(cell), cell)
            if value is None:
                raise StudyError(f"{self.stage}: cell {self.path(cell)} is missing or unreadable after the sweep")
            values[cell] = value
        return values

    def _compute(self, share: list[list[Cell]], finished: int) -> None:
        count = sum(len(unit) for unit in share)
        if not count:
            return
        grouped = sum(len(unit) for unit in share if len(unit) > 1)
        log(
            f"{self.stage}: {count} cells to compute"
            + (f" ({finished} finished already)" if finished else "")
            + (f", {grouped} of them in {sum(len(u) > 1 for u in share)} groups" if grouped else "")
        )
        loaded: Loaded | None = None
        bar = progress(total=count, desc=f"{self.stage} cells")
        try:
            for unit in share:
                self.ctx.check_stop()
                model = unit[0].model
                if loaded is None or loaded.spec != model:
                    loaded = None  # free the previous model before loading the next
                    if self.ctx.device.type == "cuda":
                        torch.cuda.empty_cache()
                    loaded = Loaded(model, self.ctx.load_sweep_model(model), self.ctx.load_tokenizer(model), {})
                start = time.perf_counter()
                bar.set_postfix_str(unit[0].name if len(unit) == 1 else f"{unit[0].name} +{len(unit) - 1}")
                if len(unit) == 1:
                    values: Sequence[V] = [self.compute(unit[0], loaded, progress)]
                else:
                    assert self.compute_group is not None  # only then are there groups
                    values = self.compute_group(unit, loaded, progress)
                    if len(values) != len(unit):
                        raise StudyError(f"{self.stage}: a group of {len(unit)} cells gave {len(values)} values")
                seconds = time.perf_counter() - start
                timing = f"{seconds:.1f}s" if len(unit) == 1 else f"{seconds:.1f}s for a group of {len(unit)}"
                for cell, value in zip(unit, values, strict=True):
                    self.store.write(self.path(cell), cell, value)
                    detail = self.describe(cell, value)
                    log(f"{self.stage} {cell.name}: {detail} ({timing})".replace(":  (", " ("))
                bar.update(len(unit))
        finally:
            bar.close()
