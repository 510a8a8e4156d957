"""Loading a run directory: the manifest, the config and every results file, as ``Results``.

A results file that is missing (its stage was not run) or unreadable is ``None`` on the
``Results``; ``Results.absent`` is the one check the figures and report.md ask.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import ValidationError

from study.config import EMBEDDED_BASE, StudyConfig, sft_model_label, sft_model_name
from study.io import read_json
from study.outputs import verify_results

# the NLL splits (study.stages.nll.SPLITS): test questions, train questions no SFT subset
# contains, and questions of the SFT subset (SFT data: never shown without saying so)
TEST, HELDOUT, SEEN = "test", "heldout", "seen"
SPLIT_LABELS = {TEST: "test", HELDOUT: "heldout (train questions outside SFT)", SEEN: "seen (SFT data)"}
REPLICATION_NEEDS = (
    "model", "seed", "split", "train_loops", "inference_loops", "best_loops", "gap_to_best", "gap_ci_low",
    "gap_ci_high", "best_is_train_loops", "seeds_best_at_train", "seeds", "note",
)  # fmt: skip
DEPTH_SHIFT_NEEDS = (
    "model_a", "model_b", "train_loops_a", "train_loops_b", "split", "seed", "statistic", "inference_loops", "value",
    "ci_low", "ci_high", "p_value", "seeds", "note",
)  # fmt: skip
# results file -> (Results attribute, the stage that writes it, columns the report needs)
RESULT_FILES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "checks.json": ("checks", "check", ()),
    "sft_loss.csv": ("sft_loss", "sft", ("model", "step", "loss")),
    "nll_summary.csv": ("nll", "nll", ("model", "split", "inference_loops", "nll_per_token", "ci_low", "ci_high")),
    "preferred_depth.csv": (
        "preferred",
        "nll",
        ("model", "split", "inference_loops", "best_loops", "best_nll", "gap_to_best", "gap_ci_low", "gap_ci_high"),
    ),
    "exact_match.csv": (
        "exact_match",
        "exact_match",
        ("model", "inference_loops", "extraction", "correct", "n", "accuracy", "ci_low", "ci_high"),
    ),
    "latency.csv": ("latency", "latency", ("model", "inference_loops", "median_s", "p10_s", "p90_s")),
    "latency_fit.csv": ("latency_fit", "latency", ("model", "slope_s_per_loop", "intercept_s", "r_squared")),
    # halting policies timed beside the fixed depths, each with its gold NLL (study.stages.latency)
    "adaptive_latency.csv": (
        "adaptive_latency",
        "latency",
        (
            "model",
            "policy",
            "halting",
            "rule",
            "tau",
            "loops_per_token",
            "s_per_sample",
            "nll_per_token",
            "quality_examples",
        ),
    ),
    "schedules.csv": (
        "schedules",
        "nll",
        ("model", "split", "policy", "steps", "uniform", "nll_per_token", "ci_low", "ci_high", "rank"),
    ),
    "adaptive.csv": (
        "adaptive",
        "adaptive",
        ("model", "split", "policy", "kind", "detail", "mean_loops", "nll_per_token", "gap_to_best_fixed"),
    ),
    "adaptive_calibrated.csv": (
        "adaptive_calibrated",
        "adaptive",
        ("model", "family", "rule", "target", "target_met", "tau", "mean_loops", "nll_per_token", "gap_ci_high"),
    ),
    "oracle_frontier.csv": ("oracle_frontier", "adaptive", ("model", "split", "mean_loops", "nll_per_token")),
    "adaptive_depths.csv": ("adaptive_depths", "adaptive", ("model", "split", "policy", "chosen_depth")),
    # replicate seeds and the depth-shift test (study.stages.nll_shift); older runs have neither
    "replication.csv": ("replication", "nll", REPLICATION_NEEDS),
    "depth_shift.csv": ("depth_shift", "nll", DEPTH_SHIFT_NEEDS),
    "benchmarks.csv": (
        "benchmarks",
        "benchmarks",
        ("model", "inference_loops", "task", "metric", "value", "ci_low", "ci_high", "n"),
    ),
    "benchmarks_depth.csv": (
        "benchmarks_depth",
        "benchmarks",
        ("model", "task", "metric", "inference_loops", "preferred", "difference", "diff_ci_low", "diff_ci_high"),
    ),
}
# the adaptive stage writes these together; its figures and report section need all three
ADAPTIVE_FILES = ("adaptive.csv", "oracle_frontier.csv", "adaptive_depths.csv")
# the files the depth-shift figure and report sections read (the nll stage writes them together)
SHIFT_FILES = ("depth_shift.csv", "replication.csv")
BOOL_COLUMNS = ("is_best", "train_test_match", "uniform", "preferred", "target_met", "halting")
# read as text, an empty field as "": seeds ("all", "2026", "" for the base), notes and three-way flags
TEXT_COLUMNS = ("seed", "note", "best_is_train_loops", "pairing")


@dataclass(frozen=True)
class ModelInfo:
    """How the report names and marks one model (a ``ModelSpec`` without its source)."""

    name: str  # the ``model`` column: "base", "train8", "train8-s2027", ...
    label: str  # "Base", "Train8", "Train8 (seed 2027)", ...
    train_loops: int | None  # the depth it was (pre)trained at
    seed: int | None = None  # an SFT model's replicate seed
    family: str = ""  # its replicates' shared name ("train8" for "train8-s2027"); the base: its own name
    family_label: str = ""  # "Train8"; the base: its label

    @classmethod
    def of(cls, name: str, label: str, train_loops: int | None, seed: int | None) -> ModelInfo:
        """A model of the config: an SFT model (a seed) belongs to the family of its training
        depth, named as a single-replicate run names it; anything else is its own family."""
        if seed is None or train_loops is None:
            return cls(name, label, train_loops, seed, name, label)
        return cls(name, label, train_loops, seed, sft_model_name(train_loops), sft_model_label(train_loops))


@dataclass
class Results:
    """Everything the report reads from one run directory; a missing file is ``None``."""

    run_dir: Path
    manifest: dict[str, Any] | None = None
    config: StudyConfig | None = None
    models: list[ModelInfo] = field(default_factory=list)
    checks: dict[str, Any] | None = None
    sft_loss: pd.DataFrame | None = None
    nll: pd.DataFrame | None = None
    preferred: pd.DataFrame | None = None
    exact_match: pd.DataFrame | None = None
    latency: pd.DataFrame | None = None
    latency_fit: pd.DataFrame | None = None
    adaptive_latency: pd.DataFrame | None = None
    schedules: pd.DataFrame | None = None
    adaptive: pd.DataFrame | None = None
    adaptive_calibrated: pd.DataFrame | None = None
    oracle_frontier: pd.DataFrame | None = None
    adaptive_depths: pd.DataFrame | None = None
    replication: pd.DataFrame | None = None
    depth_shift: pd.DataFrame | None = None
    benchmarks: pd.DataFrame | None = None
    benchmarks_depth: pd.DataFrame | None = None
    problems: list[str] = field(default_factory=list)  # files present but unreadable

    @property
    def model_label(self) -> str:
        """The base model's label (config.model.label), else its source."""
        if self.config is not None:
            return self.config.model.label or self.config.model.source
        model = (self.manifest or {}).get("model") or {}
        return str(model.get("label") or model.get("source") or "unknown model")

    @property
    def embedded(self) -> bool:
        """True when the run used the tiny embedded model rather than a released checkpoint."""
        if self.config is not None:
            return self.config.model.source == EMBEDDED_BASE
        return ((self.manifest or {}).get("model") or {}).get("source") == EMBEDDED_BASE

    @property
    def provenance(self) -> dict[str, Any] | None:
        """Where an offline base came from (file, sha256, quantization), from the manifest."""
        return ((self.manifest or {}).get("model") or {}).get("provenance")

    @property
    def backbone(self) -> str:
        """The run's ``model.backbone`` (from the config, else the manifest; LoopFormer by default)."""
        if self.config is not None:
            return self.config.model.backbone
        return ((self.manifest or {}).get("model") or {}).get("backbone") or "loopformer"

    @property
    def depth_label(self) -> str:
        """The x axis of the depth figures, as the backbone's registry entry names its depth."""
        from study.models.backbones import get_backbone  # lazy: the registry loads the models

        return get_backbone(self.backbone).depth_axis(self.config.looping if self.config is not None else None)

    @property
    def name(self) -> str:
        return self.config.name if self.config is not None else self.run_dir.name

    def model(self, name: str) -> ModelInfo:
        for info in self.models:
            if info.name == name:
                return info
        for info in self.models:  # a family of replicates (the pooled rows of replication.csv)
            if info.family == name:
                return ModelInfo(name, info.family_label, info.train_loops, None, name, info.family_label)
        return ModelInfo(name, name, _loops_from_name(name), family=name, family_label=name)

    def legend_label(self, name: str) -> str:
        info = self.model(name)
        return info.label if info.train_loops is None else f"{info.label} (trained at {info.train_loops} loops)"

    def models_in(self, frame: pd.DataFrame | None) -> list[str]:
        """Model names present in ``frame``, in the run's model order."""
        if frame is None or frame.empty:
            return []
        present = set(frame["model"].astype(str))
        return [m.name for m in self.models if m.name in present]

    def absent(self, *filenames: str) -> list[str]:
        """The results files among ``filenames`` that this run lacks (not run, or unreadable).

        The one missing-input check: the figures (``style.missing_inputs``), the figure
        writer and report.md all ask it, so they agree on what can be drawn."""
        return [f for f in filenames if getattr(self, RESULT_FILES[f][0]) is None]

    def missing(self, filename: str) -> str:
        """One sentence saying why ``results/<filename>`` is absent."""
        _, stage, _ = RESULT_FILES[filename]
        if any(p.startswith(f"results/{filename}") for p in self.problems):
            return f"`results/{filename}` could not be read ({self._problem(filename)})"
        return f"Not run: `results/{filename}` is missing (the `{stage}` stage has not run for this run directory)"

    def _problem(self, filename: str) -> str:
        return next(p.split(": ", 1)[-1] for p in self.problems if p.startswith(f"results/{filename}"))


def _loops_from_name(name: str) -> int | None:
    """The training depth in an SFT model's name: ``train8`` and ``train8-s2027`` -> 8."""
    match = re.fullmatch(r"train(\d+)(?:-s\d+)?", name)
    return int(match.group(1)) if match else None


def _read_frame(path: Path, columns: Sequence[str], problems: list[str], label: str) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    try:
        frame = pd.read_csv(path, dtype={column: str for column in TEXT_COLUMNS})
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as error:
        problems.append(f"{label}: {type(error).__name__}: {error}")
        return None
    absent = [c for c in columns if c not in frame.columns]
    if absent:
        problems.append(f"{label}: missing columns {', '.join(absent)}")
        return None
    if "model" in frame.columns:
        frame["model"] = frame["model"].astype(str)
    for column in TEXT_COLUMNS:
        if column in frame.columns:
            frame[column] = frame[column].fillna("")
    for column in BOOL_COLUMNS:
        if column in frame.columns and frame[column].dtype != bool:
            frame[column] = frame[column].astype(str).str.strip().str.lower().isin(("true", "1", "yes"))
    return frame


def load_results(
    run_dir: Path | str,
    models: Iterable[Any] | None = None,
    config: StudyConfig | None = None,
) -> Results:
    """Read a run directory's manifest and results files.

    ``models`` (e.g. ``RunContext.model_specs()``: anything with ``name``, ``label``,
    ``train_loops`` and ``seed``) fixes the model order and labels; without it they come
    from the config in the manifest (base first, then ``StudyConfig.sft_models``).
    """
    run_dir = Path(run_dir)
    verify_results(run_dir)  # results files that are not the bytes their stages wrote: one line (study.outputs)
    results = Results(run_dir=run_dir)
    manifest_path = run_dir / "manifest.json"
    if manifest_path.is_file():
        try:
            results.manifest = read_json(manifest_path)
        except (ValueError, OSError) as error:
            results.problems.append(f"manifest.json: {error}")
    if config is None and results.manifest and "config" in results.manifest:
        try:
            config = StudyConfig.model_validate(results.manifest["config"])
        except ValidationError as error:
            results.problems.append(f"manifest.json: config does not validate ({error.errors()[0]['msg']})")
    results.config = config

    for filename, (attribute, _, columns) in RESULT_FILES.items():
        path = run_dir / "results" / filename
        label = f"results/{filename}"
        if filename.endswith(".json"):
            if path.is_file():
                try:
                    setattr(results, attribute, read_json(path))
                except (ValueError, OSError) as error:
                    results.problems.append(f"{label}: {error}")
        else:
            setattr(results, attribute, _read_frame(path, columns, results.problems, label))

    results.models = _model_infos(results, models)
    return results


def _model_infos(results: Results, models: Iterable[Any] | None) -> list[ModelInfo]:
    if models is not None:
        infos = [ModelInfo.of(m.name, m.label, m.train_loops, getattr(m, "seed", None)) for m in models]
    else:
        base_loops = _base_train_loops(results)
        infos = [ModelInfo.of("base", "Base", base_loops, None)]
        if results.config is not None:
            infos += [ModelInfo.of(m.name, m.label, m.train_loops, m.seed) for m in results.config.sft_models()]
    # models that appear in the results but not in the config (an edited config, a renamed model)
    known = {m.name for m in infos}
    for frame in (results.nll, results.preferred, results.exact_match, results.latency, results.sft_loss):
        if frame is None:
            continue
        for name in dict.fromkeys(frame["model"].astype(str)):
            if name not in known:
                known.add(name)
                label = name.capitalize()
                infos.append(ModelInfo(name, label, _train_loops_in_results(results, name), None, name, label))
    return infos


def _train_loops_in_results(results: Results, name: str) -> int | None:
    for frame in (results.preferred, results.sft_loss):
        if frame is not None and "train_loops" in frame.columns:
            values = frame.loc[frame["model"] == name, "train_loops"].dropna()
            if not values.empty:
                return int(values.iloc[0])
    return _loops_from_name(name)


def _base_train_loops(results: Results) -> int | None:
    from_results = _train_loops_in_results(results, "base")
    if from_results is not None:
        return from_results
    recorded = ((results.manifest or {}).get("model") or {}).get("train_loops")
    return int(recorded) if recorded is not None else 8  # the pipeline's default for a base without config
