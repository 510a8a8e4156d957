"""What every stage shares: the run directory layout, the models of a run, stage
bookkeeping (skip what is done, resume what is not) and the SIGINT flag.

Run directory (``runs/<version>-seed<seed>/`` by default)::

    manifest.json                 config, seed, versions, data/model sources, stage times
    stages/<stage>.json           written last by a finished stage: its config hash
    models/<name>/                SFT checkpoints (save_pretrained + tokenizer)
    sft/<name>/                   trainer checkpoints while SFT runs (resume points)
    results/                      checks.json, sft_loss.csv, nll*.csv, preferred_depth.csv,
                                  exact_match.csv, generations.jsonl, latency.csv
    results/cells/<stage>/        one file per finished sweep cell (resume points)
    figures/, report.md           the report stage
"""

from __future__ import annotations

import os
import random
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from study.config import EMBEDDED_BASE, StudyConfig
from study.data import Dataset, Example, Subsets, load_gsm8k, make_subsets
from study.io import atomic_write_json, read_json
from study.model import CheckpointError, LoopFormerForCausalLM
from study.tokenizer import has_tokenizer, load_tokenizer

EMBEDDED_DIR = Path(__file__).parent / "assets" / "mini-base"
BASE = "base"
RESOLVED_CONFIG = "config.resolved.json"  # the run's validated config, for worker processes


class StudyError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


class Interrupted(Exception):
    """Ctrl-C arrived; the stage stopped at a cell boundary."""


@dataclass(frozen=True)
class ModelSpec:
    name: str  # "base", "train8", "train4": file names and the ``model`` column
    label: str  # how figures name it: "Base", "Train8", ...
    train_loops: int  # the loop count it was (pre)trained at: the reference for "preferred depth"
    source: str  # folder or hub id
    revision: str | None = None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_deterministic(device: torch.device) -> None:
    if device.type == "cuda":
        # cuBLAS needs a fixed workspace to be deterministic; must precede the first cuBLAS call
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def configure_torch(config: StudyConfig) -> None:
    if config.torch_threads is not None:
        # tiny models run fastest on one thread: OpenMP barriers cost more than they share
        torch.set_num_threads(config.torch_threads)


def resolve_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise StudyError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def base_source(config: StudyConfig) -> str:
    return str(EMBEDDED_DIR) if config.model.source == EMBEDDED_BASE else config.model.source


@dataclass
class RunContext:
    config: StudyConfig
    run_dir: Path
    device: torch.device
    skip_checks: bool = False
    dataset_loader: Callable[[], Dataset] | None = None
    only_models: frozenset[str] | None = None  # a worker process sweeping a share of the models
    _stop: list[bool] = field(default_factory=lambda: [False])

    # ---- layout -------------------------------------------------------------------
    @property
    def results_dir(self) -> Path:
        return self.run_dir / "results"

    def results_path(self, name: str) -> Path:
        return self.results_dir / name

    def cells_dir(self, stage: str) -> Path:
        return self.results_dir / "cells" / stage

    def model_dir(self, name: str) -> Path:
        return self.run_dir / "models" / name

    @property
    def figures_dir(self) -> Path:
        return self.run_dir / "figures"

    # ---- data ---------------------------------------------------------------------
    @cached_property
    def dataset(self) -> Dataset:
        if self.dataset_loader is not None:
            return self.dataset_loader()
        directory = Path(self.config.data.directory) if self.config.data.directory else None
        return load_gsm8k(self.config.data.source, directory)

    @cached_property
    def subsets(self) -> Subsets:
        d = self.config.data
        return make_subsets(
            self.dataset, self.config.seed, d.sft_examples, d.nll_test_examples, d.nll_train_examples, d.em_examples
        )

    def examples(self, subset: str) -> list[Example]:
        """Examples of ``sft``, ``nll_test``, ``nll_train`` or ``em``, in subset order."""
        split = "test" if subset in ("nll_test", "em") else "train"
        rows = self.dataset.split(split)
        return [rows[i] for i in getattr(self.subsets, subset)]

    # ---- models -------------------------------------------------------------------
    @cached_property
    def base_spec(self) -> ModelSpec:
        source = base_source(self.config)
        config_train_loops = 8
        local = Path(source)
        if (local / "config.json").is_file():
            import json

            config_train_loops = int(json.loads((local / "config.json").read_text()).get("train_loops", 8))
        return ModelSpec(BASE, "Base", config_train_loops, source, self.config.model.revision)

    def sft_spec(self, train_loops: int) -> ModelSpec:
        name = f"train{train_loops}"
        return ModelSpec(name, f"Train{train_loops}", train_loops, str(self.model_dir(name)))

    def model_specs(self) -> list[ModelSpec]:
        """Base first, then one SFT model per ``sft.train_loops`` entry, in config order."""
        specs = [self.base_spec] + [self.sft_spec(loops) for loops in self.config.sft.train_loops]
        return [s for s in specs if self.only_models is None or s.name in self.only_models]

    def tokenizer_source(self, spec: ModelSpec) -> str | None:
        choice = self.config.model.tokenizer
        if choice == "gpt2":
            return None
        if choice != "auto":
            return choice
        local = Path(spec.source)
        if local.is_dir():
            return str(local) if has_tokenizer(local) else None
        return spec.source  # hub: the repo's own tokenizer; load_model falls back to GPT-2

    def load_tokenizer(self, spec: ModelSpec | None = None):
        spec = spec or self.base_spec
        source = self.tokenizer_source(spec)
        if source is None:
            return load_tokenizer(None)
        try:
            return load_tokenizer(source, revision=spec.revision if source == spec.source else None)
        except OSError:
            if self.config.model.tokenizer == "auto" and not Path(source).is_dir():
                return load_tokenizer(None)  # hub repo without tokenizer files: the model's GPT-2 BPE
            raise StudyError(f"model.tokenizer: cannot load a tokenizer from {source}") from None

    def load_model(self, spec: ModelSpec) -> LoopFormerForCausalLM:
        try:
            model = LoopFormerForCausalLM.from_pretrained(
                spec.source, revision=spec.revision, dtype=torch.float32
            )
        except CheckpointError as error:
            raise StudyError(str(error)) from None
        except OSError as error:
            raise StudyError(f"{spec.source}: cannot load checkpoint ({' '.join(str(error).split())[:300]})") from None
        return model.to(self.device).eval()

    # ---- interruption ---------------------------------------------------------------
    def stop_requested(self) -> bool:
        return self._stop[0]

    def check_stop(self) -> None:
        """Call between cells: raises ``Interrupted`` after Ctrl-C."""
        if self._stop[0]:
            raise Interrupted()

    @contextmanager
    def sigint_between_cells(self) -> Iterator[None]:
        def handler(signum, frame):
            if self._stop[0]:  # a second Ctrl-C stops at once
                raise KeyboardInterrupt
            self._stop[0] = True
            print("\nCtrl-C: stopping after the current cell (press again to stop at once)", flush=True)

        previous = signal.signal(signal.SIGINT, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)


def context_from_run_dir(run_dir: Path, only_models: frozenset[str] | None = None) -> RunContext:
    """The context of a started run, for a worker process (SFT per GPU, accelerate
    launch, sweep shares): its config comes from the run directory."""
    path = run_dir / RESOLVED_CONFIG
    if not path.is_file():
        raise StudyError(f"{path}: missing (start the run with run_study.py first)")
    config = StudyConfig.model_validate(read_json(path))
    configure_torch(config)
    device = resolve_device(config.device)
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:  # one GPU per process under accelerate/torchrun
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return RunContext(config=config, run_dir=run_dir, device=device, only_models=only_models)


# ---- stage bookkeeping ---------------------------------------------------------------
# the config sections each stage's outputs depend on: a change elsewhere reuses them
STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "check": ("seed", "model", "data", "checks"),
    "sft": ("seed", "model", "data", "sft"),
    "nll": ("seed", "model", "data", "sft", "nll"),
    "exact_match": ("seed", "model", "data", "sft", "exact_match"),
    "latency": ("seed", "model", "sft", "latency"),
    "report": (),
}
STAGES = tuple(STAGE_SECTIONS)


def stage_hash(config: StudyConfig, stage: str) -> str:
    sections = STAGE_SECTIONS[stage]
    return config.section_hash(*sections) if sections else config.section_hash()


def stage_marker(run_dir: Path, stage: str) -> Path:
    return run_dir / "stages" / f"{stage}.json"


def stage_done(run_dir: Path, config: StudyConfig, stage: str) -> bool:
    marker = stage_marker(run_dir, stage)
    if not marker.is_file():
        return False
    try:
        return read_json(marker).get("config_hash") == stage_hash(config, stage)
    except (ValueError, OSError):
        return False


def mark_stage_done(run_dir: Path, config: StudyConfig, stage: str) -> None:
    atomic_write_json(stage_marker(run_dir, stage), {"stage": stage, "config_hash": stage_hash(config, stage)})


def cell_name(*parts: object) -> str:
    """File-safe name of a sweep cell, e.g. ``cell_name("train4", "test", 8)`` -> ``train4-test-L8``."""
    *head, loops = parts
    return "-".join(str(p) for p in head) + f"-L{loops}"
