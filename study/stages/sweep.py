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

A stage then aggregates the values into its results files in the main process. The
aggregate is the same whichever process computed which cell, and whether the cells
were computed now or read back after an interruption.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import torch
from tqdm.auto import tqdm

from study import distributed
from study.looping.policies import DepthPolicy
from study.models.backbones import PolicyRunner, bind
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

    def path(self, cell: Cell) -> Path:
        return self.ctx.cells_dir(self.stage) / f"{cell.name}{self.store.suffix}"

    def run(self, cells: list[Cell]) -> dict[Cell, V] | None:
        names = [c.name for c in cells]
        if len(set(names)) != len(names):
            twice = sorted(n for n in names if names.count(n) > 1)[0]
            raise StudyError(f"{self.stage}: two cells share the name {twice}")
        pending = [cell for cell in cells if self.store.read(self.path(cell), cell) is None]
        distributed.settle(None)  # every process has seen the same finished cells before any writes
        # latency (spread=False): the main process times every cell, one at a time
        share = distributed.split(pending) if self.spread else (pending if distributed.is_main() else [])
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

    def _compute(self, share: list[Cell], finished: int) -> None:
        if not share:
            return
        log(f"{self.stage}: {len(share)} cells to compute" + (f" ({finished} finished already)" if finished else ""))
        loaded: Loaded | None = None
        bar = progress(total=len(share), desc=f"{self.stage} cells")
        try:
            for cell in share:
                self.ctx.check_stop()
                if loaded is None or loaded.spec != cell.model:
                    loaded = None  # free the previous model before loading the next
                    if self.ctx.device.type == "cuda":
                        torch.cuda.empty_cache()
                    model, tokenizer = self.ctx.load_sweep_model(cell.model), self.ctx.load_tokenizer(cell.model)
                    loaded = Loaded(cell.model, model, tokenizer, {})
                start = time.perf_counter()
                bar.set_postfix_str(cell.name)
                value = self.compute(cell, loaded, progress)
                self.store.write(self.path(cell), cell, value)
                detail = self.describe(cell, value)
                log(f"{self.stage} {cell.name}: {detail} ({time.perf_counter() - start:.1f}s)".replace(":  (", " ("))
                bar.update(1)
        finally:
            bar.close()
