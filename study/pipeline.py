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
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch
from transformers import PreTrainedModel

from study.config import EMBEDDED_BASE, OFFLINE_SMOLLM2, StudyConfig
from study.errors import BackboneError, CheckpointError
from study.errors import Interrupted as Interrupted
from study.errors import StudyError as StudyError  # re-exported: raised here
from study.io import read_json
from study.looping.policies import DepthPolicy, policies_for
from study.models import smollm2
from study.models.backbone import cast_weights
from study.models.backbones import Backbone, get_backbone
from study.tasks.gsm8k import Dataset, Example, Subsets, load_gsm8k, make_subsets
from study.threads import ThreadChoice, choose_threads, record
from study.tokenizer import has_tokenizer, load_tokenizer

EMBEDDED_DIR = Path(__file__).parent / "assets" / "mini-base"
BASE = "base"
RESOLVED_CONFIG = "config.resolved.json"  # the run's validated config, for worker processes
SWEEP_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}  # the config's sweep_dtype


@dataclass(frozen=True)
class ModelSpec:
    name: str  # "base", "train8", "train4-s2027": file names and the ``model`` column
    label: str  # how figures name it: "Base", "Train8", "Train4 (seed 2027)"
    train_loops: int  # the loop count (LoopFormer M, looped decoder K) it was (pre)trained at: "preferred depth"
    source: str  # folder or hub id
    revision: str | None = None
    seed: int | None = None  # an SFT model's replicate seed (its SFT subset and training seed); None: the base


def configure_torch(config: StudyConfig) -> ThreadChoice:
    """Threads (``study.threads``: a number, or ``auto`` by the machine's load) and the
    determinism settings of a run; the thread choice is remembered for the manifest."""
    choice = choose_threads(config.torch_threads)
    record(choice)
    if choice.threads is not None:
        # tiny models run fastest on one thread: OpenMP barriers cost more than they share
        torch.set_num_threads(choice.threads)
    if config.sft.deterministic:
        # the Trainer's full_determinism sets this too, but cuBLAS reads it once, at its first
        # call: in a run the check stage has used the GPU by then
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    return choice


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
            self.dataset,
            self.config.seed,
            replicates=self.config.replicates,
            sft_examples=d.sft_examples,
            nll_test_examples=d.nll_test_examples,
            nll_heldout_examples=d.nll_heldout_examples,
            nll_seen_examples=d.nll_seen_examples,
            em_examples=d.em_examples,
        )

    def examples(self, subset: str) -> list[Example]:
        """Examples of ``nll_test``, ``nll_heldout``, ``nll_seen`` or ``em``, in subset order."""
        if subset not in ("nll_test", "nll_heldout", "nll_seen", "em"):
            raise ValueError(f"unknown subset {subset!r} (the SFT data is sft_examples(seed))")
        split = "test" if subset in ("nll_test", "em") else "train"
        rows = self.dataset.split(split)
        return [rows[i] for i in getattr(self.subsets, subset)]

    def sft_examples(self, seed: int) -> list[Example]:
        """The SFT subset of replicate ``seed`` (a ``replicates`` entry), in subset order."""
        rows = self.dataset.split("train")
        return [rows[i] for i in self.subsets.sft[seed]]

    # ---- models -------------------------------------------------------------------
    @cached_property
    def base_spec(self) -> ModelSpec:
        source = base_source(self.config, self.run_dir)
        try:  # a fractional or string train_loops in a LoopFormer config is refused, never rounded
            train_loops = self.backbone.training_depth(source)
        except CheckpointError as error:
            raise StudyError(str(error)) from None
        return ModelSpec(BASE, "Base", train_loops, source, self.config.model.revision)

    def sft_specs(self) -> list[ModelSpec]:
        """One SFT model per ``sft.train_loops`` entry and replicate seed (``StudyConfig.sft_models``)."""
        return [
            ModelSpec(m.name, m.label, m.train_loops, str(self.model_dir(m.name)), seed=m.seed)
            for m in self.config.sft_models()
        ]

    def sft_spec(self, train_loops: int, seed: int | None = None) -> ModelSpec:
        """The SFT model trained at ``train_loops`` with replicate ``seed`` (None: the first replicate)."""
        seed = self.config.replicates[0] if seed is None else seed
        for spec in self.sft_specs():
            if (spec.train_loops, spec.seed) == (train_loops, seed):
                return spec
        raise StudyError(f"no SFT model trains at {train_loops} loops with seed {seed} in this config")

    def model_specs(self) -> list[ModelSpec]:
        """Base first, then the SFT models (``sft_specs``)."""
        return [self.base_spec, *self.sft_specs()]

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

    def load_sweep_model(self, spec: ModelSpec) -> PreTrainedModel:
        """The model of ``spec`` as the sweeps run it: in ``sweep_dtype`` (SFT and the check
        gate always load fp32 through ``load_model``)."""
        model = self.load_model(spec)
        dtype = SWEEP_DTYPES[self.config.sweep_dtype]
        return model if dtype == torch.float32 else cast_weights(model, dtype)  # type: ignore[return-value]

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


def cell_name(*parts: object) -> str:
    """File-safe name of a sweep cell from its model, split (if any) and policy id, e.g.
    ``cell_name("train4", "test", "M8")`` -> ``train4-test-M8``."""
    return "-".join(str(p) for p in parts)
