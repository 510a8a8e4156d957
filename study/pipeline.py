"""What every stage shares: the run directory layout, the models of a run, stage
bookkeeping (skip what is done, resume what is not) and the SIGINT flag.

Run directory (``runs/<version>-seed<seed>/`` by default)::

    manifest.json                 config, seed, versions, data/model sources, stage times
    stages/<stage>.json           written last by a finished stage: its config hash and the
                                  fingerprints of every input it read (data, weights, tokenizers)
    models/<name>/                SFT checkpoints (save_pretrained + tokenizer)
    sft/<name>/                   trainer checkpoints while SFT runs (resume points)
    results/                      checks.json, sft_loss.csv, nll*.csv, preferred_depth.csv,
                                  exact_match.csv, generations.jsonl, latency.csv
    results/cells/<stage>/        one file per finished sweep cell (resume points), and per
                                  model ``<model>.inputs.json``: the inputs its cells were computed from
    figures/, report.md           the report stage
"""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch
from transformers import PreTrainedModel

from study.config import EMBEDDED_BASE, OFFLINE_SMOLLM2, StudyConfig, sft_model_name
from study.fingerprint import file_digest, model_fingerprint, tokenizer_fingerprint
from study.io import atomic_write_json, read_json
from study.looping.policies import DepthPolicy, policies_for
from study.models import smollm2
from study.models.backbones import Backbone, get_backbone
from study.models.errors import BackboneError, CheckpointError
from study.tasks.gsm8k import Dataset, Example, Subsets, load_gsm8k, make_subsets
from study.tokenizer import GPT2_DIR, has_tokenizer, load_tokenizer

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
    train_loops: int  # the loop count (LoopFormer M, looped decoder K) it was (pre)trained at: "preferred depth"
    source: str  # folder or hub id
    revision: str | None = None


def configure_torch(config: StudyConfig) -> None:
    if config.torch_threads is not None:
        # tiny models run fastest on one thread: OpenMP barriers cost more than they share
        torch.set_num_threads(config.torch_threads)
    if config.sft.deterministic:
        # the Trainer's full_determinism sets this too, but cuBLAS reads it once, at its first
        # call: in a run the check stage has used the GPU by then
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":16:8")


def resolve_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise StudyError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def base_source(config: StudyConfig, run_dir: Path | None = None) -> str:
    """Where the base loads from. The offline SmolLM2 GGUF is dequantized once per run
    into ``models/base`` (see ``RunContext.prepare_base``)."""
    if config.model.source == EMBEDDED_BASE:
        return str(EMBEDDED_DIR)
    if config.model.source == OFFLINE_SMOLLM2:
        return str((run_dir or Path("runs")) / "models" / BASE)
    return config.model.source


@dataclass
class RunContext:
    config: StudyConfig
    run_dir: Path
    device: torch.device
    skip_checks: bool = False
    dataset_loader: Callable[[], Dataset] | None = None
    resolved_commit: str | None = None  # the hub commit the base's revision resolved to (hub bases)
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
        source = base_source(self.config, self.run_dir)
        try:  # a fractional or string train_loops in a LoopFormer config is refused, never rounded
            train_loops = self.backbone.training_depth(source)
        except CheckpointError as error:
            raise StudyError(str(error)) from None
        return ModelSpec(BASE, "Base", train_loops, source, self.config.model.revision)

    def sft_spec(self, train_loops: int) -> ModelSpec:
        name = sft_model_name(train_loops)
        return ModelSpec(name, f"Train{train_loops}", train_loops, str(self.model_dir(name)))

    def model_specs(self) -> list[ModelSpec]:
        """Base first, then one SFT model per ``sft.train_loops`` entry, in config order."""
        return [self.base_spec] + [self.sft_spec(loops) for loops in self.config.sft.train_loops]

    # ---- depth policies -------------------------------------------------------------
    @property
    def backbone(self) -> Backbone:
        """The registry entry of ``model.backbone`` (``study.models.backbones.BACKBONES``)."""
        return get_backbone(self.config.model.backbone)

    @cached_property
    def loop_family(self):
        return self.config.loop_family()

    def policies(self, loops: list[int]) -> list[DepthPolicy]:
        """The policies of a loop grid (``nll.inference_loops`` ...), in increasing loop order."""
        return policies_for(self.loop_family, loops)

    def prepare_base(self) -> dict | None:
        """Dequantize the offline SmolLM2 into ``models/base`` if not done yet; its provenance."""
        if self.config.model.source != OFFLINE_SMOLLM2:
            return None
        try:
            return smollm2.materialize_offline_smollm2(Path(self.base_spec.source))
        except BackboneError as error:
            raise StudyError(str(error)) from None

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
        if spec.name == BASE:
            self.prepare_base()
        source = self.tokenizer_source(spec)
        if source is None:
            return load_tokenizer(None)
        try:
            return load_tokenizer(source, revision=spec.revision if source == spec.source else None)
        except OSError:
            if self.config.model.tokenizer == "auto" and not Path(source).is_dir():
                return load_tokenizer(None)  # hub repo without tokenizer files: the model's GPT-2 BPE
            raise StudyError(f"model.tokenizer: cannot load a tokenizer from {source}") from None
        except Exception as error:  # tokenizers raises a bare Exception for a corrupt tokenizer.json
            reason = " ".join(str(error).split())[:120]
            where = "model.tokenizer" if self.config.model.tokenizer != "auto" else "model.source"
            raise StudyError(f"{where}: the tokenizer files in {source} are unreadable ({reason})") from None

    def load_model(self, spec: ModelSpec) -> PreTrainedModel:
        """The model of ``spec`` by the run's backbone, in fp32 and eval mode on the run's device."""
        if spec.name == BASE:
            self.prepare_base()  # the offline SmolLM2's folder is made on first use
        try:
            return self.backbone.load(spec.source, spec.revision, self.device)
        except (CheckpointError, BackboneError) as error:
            raise StudyError(str(error)) from None

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


def context_from_run_dir(run_dir: Path) -> RunContext:
    """The context of a started run, for a worker process (SFT per GPU or per launched
    process): its config comes from the run directory."""
    path = run_dir / RESOLVED_CONFIG
    if not path.is_file():
        raise StudyError(f"{path}: missing (start the run with run_study.py first)")
    try:
        config = StudyConfig.model_validate(read_json(path))
    except ValueError as error:  # torn JSON, or a config that no longer validates (pydantic's error is a ValueError)
        raise StudyError(f"{path}: unreadable ({' '.join(str(error).split())[:120]}); rerun run_study.py") from None
    configure_torch(config)
    device = resolve_device(config.device)
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:  # one GPU per process under accelerate/torchrun
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return RunContext(config=config, run_dir=run_dir, device=device)


# ---- stage bookkeeping ---------------------------------------------------------------
# the config sections each stage's outputs depend on: a change elsewhere reuses them
STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "check": ("seed", "model", "data", "checks", "looping"),
    "sft": ("seed", "model", "data", "sft", "looping"),
    "nll": ("seed", "model", "data", "sft", "nll", "looping", "schedules"),
    "adaptive": ("seed", "model", "data", "sft", "nll", "looping", "adaptive"),
    "exact_match": ("seed", "model", "data", "sft", "exact_match", "looping"),
    "latency": ("seed", "model", "sft", "latency", "looping"),
    "report": (),
}
STAGES = tuple(STAGE_SECTIONS)


def stage_hash(config: StudyConfig, stage: str) -> str:
    sections = STAGE_SECTIONS[stage]
    return config.section_hash(*sections) if sections else config.section_hash()


def stage_marker(run_dir: Path, stage: str) -> Path:
    return run_dir / "stages" / f"{stage}.json"


# the data splits each stage reads; check and sft read the base only, the sweeps every model
STAGE_SPLITS: dict[str, tuple[str, ...]] = {
    "check": ("train", "test"),
    "sft": ("train",),
    "nll": ("train", "test"),
    "adaptive": ("train", "test"),  # nll.csv of both splits; its halting cells score the test slice
    "exact_match": ("test",),
    "latency": ("test",),
    "report": (),
}
BASE_ONLY_STAGES = ("check", "sft")
# per-model settings that do not change a model's cells or weights: the loop grid (each
# cell is one loop count), the bootstrap (computed from the cells), resume points
CELL_NEUTRAL: dict[str, tuple[str, ...]] = {
    "sft": ("train_loops", "save_steps"),
    "nll": ("inference_loops", "bootstrap_resamples", "confidence"),
    "adaptive": ("taus",),  # each tau is its own cell (the policy id names it)
    "exact_match": ("inference_loops",),
    "latency": ("inference_loops",),
}


def model_inputs(ctx: RunContext, spec: ModelSpec) -> dict[str, object]:
    """Content fingerprints of a model folder (weights, config, tokenizer files) and of
    the tokenizer the study loads for it. The offline SmolLM2 base is its GGUF file (the
    run dequantizes its weights and tokenizer from it, so they exist only once a run has
    started): the file's sha256 names both."""
    if spec.name == BASE and ctx.config.model.source == OFFLINE_SMOLLM2:
        try:
            gguf = smollm2.gguf_path()
        except BackboneError as error:
            raise StudyError(str(error)) from None
        offline = {"gguf": gguf.name, "sha256": file_digest(gguf)}
        return {"model": offline, "tokenizer": offline}
    commit = ctx.resolved_commit if spec.name == BASE else None
    source = ctx.tokenizer_source(spec)
    tokenizer = tokenizer_fingerprint(GPT2_DIR if source is None else source, spec.revision)
    return {"model": model_fingerprint(spec.source, spec.revision, commit), "tokenizer": tokenizer}


def stage_inputs(ctx: RunContext, stage: str) -> dict[str, object]:
    """Everything a stage reads, by content: its data splits and its models."""
    inputs: dict[str, object] = {f"data:{split}": ctx.dataset.sha256[split] for split in STAGE_SPLITS[stage]}
    specs = [] if stage == "report" else [ctx.base_spec] if stage in BASE_ONLY_STAGES else ctx.model_specs()
    for spec in specs:
        inputs[spec.name] = model_inputs(ctx, spec)
    return inputs


def stage_key(ctx: RunContext, stage: str) -> dict[str, object]:
    return {"config_hash": stage_hash(ctx.config, stage), "inputs": stage_inputs(ctx, stage)}


def recorded_stage_key(run_dir: Path, stage: str) -> dict[str, object] | None:
    marker = stage_marker(run_dir, stage)
    try:
        recorded = read_json(marker) if marker.is_file() else None
    except (ValueError, OSError):
        return None  # torn or unreadable: the stage is not done
    if not isinstance(recorded, dict):
        return None
    return {"config_hash": recorded.get("config_hash"), "inputs": recorded.get("inputs")}


def stage_done(ctx: RunContext, stage: str, key: dict[str, object] | None = None) -> bool:
    """Finished for this config *and* these inputs (and, for sft, its models are there)."""
    if recorded_stage_key(ctx.run_dir, stage) != (key or stage_key(ctx, stage)):
        return False
    if stage == "sft":
        names = [sft_model_name(loops) for loops in ctx.config.sft.train_loops]
        return all((ctx.model_dir(name) / "config.json").is_file() for name in names)
    return True


def changed_inputs(ctx: RunContext, stage: str, key: dict[str, object]) -> list[str]:
    """What differs from the stage's recorded key, for the log: "config" and input names."""
    recorded = recorded_stage_key(ctx.run_dir, stage)
    if recorded is None:
        return []
    changed = ["config"] if recorded["config_hash"] != key["config_hash"] else []
    old = recorded["inputs"] if isinstance(recorded["inputs"], dict) else {}
    new = key["inputs"]
    assert isinstance(new, dict)
    return changed + sorted(name for name in set(old) | set(new) if old.get(name) != new.get(name))


def mark_stage_done(ctx: RunContext, stage: str, key: dict[str, object]) -> None:
    atomic_write_json(stage_marker(ctx.run_dir, stage), {"stage": stage, **key})


# ---- per-model outputs keyed by their inputs -------------------------------------------------


def model_output_key(ctx: RunContext, stage: str, spec: ModelSpec) -> dict[str, object]:
    """What one model's outputs of a stage (its sweep cells; for sft its checkpoints and
    final weights) were computed from. The model an SFT run *reads* is the base."""
    source = ctx.base_spec if stage == "sft" else spec
    settings = ctx.config.model_dump(mode="json")[stage] or {}  # an optional section may be absent
    return {
        "stage": stage,
        "seed": ctx.config.seed,
        "data": ctx.config.data.model_dump(mode="json"),
        "data_sha256": {split: ctx.dataset.sha256[split] for split in STAGE_SPLITS[stage]},
        "settings": {k: v for k, v in settings.items() if k not in CELL_NEUTRAL[stage]},
        # a looped decoder's window, strategy ...: the depth an SFT model trained at, the policies of the cells
        "backbone": ctx.config.model.backbone,
        "looping": None if ctx.config.looping is None else ctx.config.looping.model_dump(mode="json"),
        "device": str(ctx.device) if stage == "latency" else None,  # timings belong to their device
        **model_inputs(ctx, source),
    }


def model_outputs(ctx: RunContext, stage: str, name: str) -> list[Path]:
    if stage == "sft":
        candidates = [ctx.model_dir(name), ctx.run_dir / "sft" / name, ctx.cells_dir("sft") / f"{name}.csv"]
        return [p for p in candidates if p.exists()]
    cells = ctx.cells_dir(stage)
    return sorted(cells.glob(f"{name}-*")) if cells.is_dir() else []


def refresh_model_outputs(ctx: RunContext, stage: str) -> list[str]:
    """Discard each model's outputs of ``stage`` that were computed from other inputs
    than the current ones (a weight file or data file changed in place, a setting
    changed), so no stale cell or checkpoint is reused; record the current inputs.
    Returns the names of the models whose outputs were discarded."""
    if stage not in CELL_NEUTRAL:
        return []
    specs = [ctx.sft_spec(loops) for loops in ctx.config.sft.train_loops] if stage == "sft" else ctx.model_specs()
    discarded = []
    for spec in specs:
        sidecar = ctx.cells_dir(stage) / f"{spec.name}.inputs.json"
        key = model_output_key(ctx, stage, spec)
        try:
            recorded = read_json(sidecar) if sidecar.is_file() else None
        except (ValueError, OSError):
            recorded = None
        if recorded == key:
            continue
        stale = model_outputs(ctx, stage, spec.name)
        for path in stale:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        if stale:
            discarded.append(spec.name)
        atomic_write_json(sidecar, key)
    return discarded


def cell_name(*parts: object) -> str:
    """File-safe name of a sweep cell from its model, split (if any) and policy id, e.g.
    ``cell_name("train4", "test", "M8")`` -> ``train4-test-M8``."""
    return "-".join(str(p) for p in parts)
