"""What a finished stage recorded, and whether it still holds: stage keys and markers.

A stage's *key* is the hash of the config sections it depends on plus the content
fingerprints of everything it read (its data splits, its models' weights and tokenizers).
A finished stage writes its key to ``stages/<stage>.json``; a later run skips the stage
only while the key it would compute is the recorded one. Per-model outputs (sweep cells,
SFT checkpoints) carry a key of their own, so one changed model redoes only its cells.
Every fact about a stage comes from its ``Stage`` declaration.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from study.config import OFFLINE_SMOLLM2, StudyConfig
from study.errors import BackboneError, StudyError
from study.fingerprint import file_digest, model_fingerprint, tokenizer_fingerprint
from study.io import atomic_write_json, read_json
from study.models import smollm2
from study.outputs import Fingerprints, fingerprint_outputs, recorded_outputs
from study.pipeline import BASE, ModelSpec, RunContext
from study.stages.stage import Stage
from study.tokenizer import GPT2_DIR

Key = dict[str, object]


def stage_hash(config: StudyConfig, stage: Stage) -> str:
    return config.section_hash(*stage.sections) if stage.sections else config.section_hash()


def stage_marker(run_dir: Path, stage: Stage) -> Path:
    return run_dir / "stages" / f"{stage.name}.json"


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


def stage_inputs(ctx: RunContext, stage: Stage) -> dict[str, object]:
    """Everything a stage reads, by content: its data splits and its models."""
    inputs: dict[str, object] = {f"data:{split}": ctx.dataset.sha256[split] for split in stage.splits}
    specs = {"none": [], "base": [ctx.base_spec], "models": ctx.model_specs()}[stage.reads]
    for spec in specs:
        inputs[spec.name] = model_inputs(ctx, spec)
    return inputs


def stage_key(ctx: RunContext, stage: Stage) -> Key:
    return {"config_hash": stage_hash(ctx.config, stage), "inputs": stage_inputs(ctx, stage)}


def recorded_stage_key(run_dir: Path, stage: Stage) -> Key | None:
    marker = stage_marker(run_dir, stage)
    try:
        recorded = read_json(marker) if marker.is_file() else None
    except (ValueError, OSError):
        return None  # torn or unreadable: the stage is not done
    if not isinstance(recorded, dict):
        return None
    return {"config_hash": recorded.get("config_hash"), "inputs": recorded.get("inputs")}


def stage_done(ctx: RunContext, stage: Stage, key: Key | None = None) -> bool:
    """Finished for this config *and* these inputs, with its outputs in place."""
    if recorded_stage_key(ctx.run_dir, stage) != (key or stage_key(ctx, stage)):
        return False
    return stage.complete(ctx)


def changed_inputs(ctx: RunContext, stage: Stage, key: Key) -> list[str]:
    """What differs from the stage's recorded key, for the log: "config" and input names."""
    recorded = recorded_stage_key(ctx.run_dir, stage)
    if recorded is None:
        return []
    changed = ["config"] if recorded["config_hash"] != key["config_hash"] else []
    old = recorded["inputs"] if isinstance(recorded["inputs"], dict) else {}
    new = key["inputs"]
    assert isinstance(new, dict)
    return changed + sorted(name for name in set(old) | set(new) if old.get(name) != new.get(name))


def mark_stage_done(ctx: RunContext, stage: Stage, key: Key) -> Fingerprints:
    """Record the stage's key and the fingerprints of the files it wrote; returns those."""
    outputs = fingerprint_outputs(ctx.run_dir, stage.outputs, previous=recorded_outputs(ctx.run_dir, stage.name))
    atomic_write_json(stage_marker(ctx.run_dir, stage), {"stage": stage.name, **key, "outputs": outputs})
    return outputs


# ---- per-model outputs keyed by their inputs -------------------------------------------------


def model_output_key(ctx: RunContext, stage: Stage, spec: ModelSpec) -> Key:
    """What one model's outputs of a stage (its sweep cells; for sft its checkpoints and
    final weights) were computed from. The model an SFT run *reads* is the base."""
    assert stage.cell_neutral is not None, f"{stage.name} keeps no per-model outputs"
    source = ctx.base_spec if stage.name == "sft" else spec
    settings = ctx.config.model_dump(mode="json")[stage.name] or {}  # an optional section may be absent
    return {
        "stage": stage.name,
        "seed": ctx.config.seed,
        # an SFT model's replicate seed (its SFT subset, its training seed): with one replicate
        # the name carries no seed, and another seed must not reuse its weights or cells
        "replicate": spec.seed,
        "data": ctx.config.data.model_dump(mode="json"),
        "data_sha256": {split: ctx.dataset.sha256[split] for split in stage.splits},
        "settings": {k: v for k, v in settings.items() if k not in stage.cell_neutral},
        # a looped decoder's window, strategy ...: the depth an SFT model trained at, the policies of the cells
        "backbone": ctx.config.model.backbone,
        "looping": None if ctx.config.looping is None else ctx.config.looping.model_dump(mode="json"),
        "device": str(ctx.device) if stage.name == "latency" else None,  # timings belong to their device
        # the weights' dtype of the sweeps (bf16 cells are never reused for fp32); absent for sft
        **({"sweep_dtype": ctx.config.sweep_dtype} if "sweep_dtype" in stage.sections else {}),
        **model_inputs(ctx, source),
    }


def model_outputs(ctx: RunContext, stage: Stage, name: str) -> list[Path]:
    if stage.name == "sft":
        candidates = [ctx.model_dir(name), ctx.run_dir / "sft" / name, ctx.cells_dir("sft") / f"{name}.csv"]
        return [p for p in candidates if p.exists()]
    cells = ctx.cells_dir(stage.name)
    return sorted(cells.glob(f"{name}-*")) if cells.is_dir() else []


def refresh_model_outputs(ctx: RunContext, stage: Stage) -> list[str]:
    """Discard each model's outputs of ``stage`` that were computed from other inputs
    than the current ones (a weight file or data file changed in place, a setting
    changed), so no stale cell or checkpoint is reused; record the current inputs.
    Returns the names of the models whose outputs were discarded."""
    if stage.cell_neutral is None:
        return []
    specs = ctx.sft_specs() if stage.name == "sft" else ctx.model_specs()
    discarded = []
    for spec in specs:
        sidecar = ctx.cells_dir(stage.name) / f"{spec.name}.inputs.json"
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
