"""Robustness of the looped-decoder path (policies x robust): stage keys fingerprint the
offline SmolLM2 by its GGUF file, per-model outputs are keyed by the looping settings,
and validation before writing neither writes nor applies LoopFormer-only checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from study.config import OFFLINE_SMOLLM2, LoopingConfig, ModelConfig
from study.fingerprint import clear_cache, file_digest
from study.models import smollm2
from study.pipeline import RunContext
from study.stages import stage_named
from study.stages.keys import refresh_model_outputs, stage_key
from study.validation import validate_before_writing
from tests.support.helpers_looped import looped_context


@pytest.fixture
def fake_gguf(tmp_path: Path, monkeypatch) -> Path:
    """A stand-in GGUF file where the offline SmolLM2 package would keep it."""
    gguf = tmp_path / "package" / smollm2.GGUF_FILE
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF one")
    monkeypatch.setattr(smollm2, "gguf_path", lambda: gguf)  # the one place every caller finds it
    return gguf


def offline_context(tmp_path: Path) -> RunContext:
    ctx = looped_context(tmp_path)
    model = ModelConfig(source=OFFLINE_SMOLLM2, backbone="looped_decoder", tokenizer="auto")
    config = ctx.config.model_copy(update={"model": model})
    return RunContext(config=config, run_dir=tmp_path / "offline-run", device=ctx.device)


def test_offline_base_is_keyed_by_its_gguf_before_anything_is_written(tmp_path: Path, fake_gguf: Path) -> None:
    ctx = offline_context(tmp_path)
    validate_before_writing(ctx)  # the dequantized base lives in the run directory: not made here
    key = stage_key(ctx, stage_named("check"))
    assert not ctx.run_dir.exists()
    base = key["inputs"]["base"]
    assert base["model"] == {"gguf": fake_gguf.name, "sha256": file_digest(fake_gguf)} == base["tokenizer"]

    fake_gguf.write_bytes(b"GGUF two, another quantization")
    clear_cache()
    assert stage_key(ctx, stage_named("check"))["inputs"]["base"] != base


def test_offline_base_is_dequantized_again_when_its_gguf_changes(tmp_path: Path, fake_gguf: Path, monkeypatch) -> None:
    target = tmp_path / "run" / "models" / "base"
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    recorded = {"sha256": file_digest(fake_gguf), "source": OFFLINE_SMOLLM2}
    (target / smollm2.PROVENANCE_FILE).write_text(json.dumps(recorded))
    assert smollm2.materialize_offline_smollm2(target) == recorded  # made from this file: reused

    fake_gguf.write_bytes(b"GGUF two")
    clear_cache()
    import transformers

    def refuse(*args, **kwargs):
        raise RuntimeError("dequantizing again")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", refuse)
    with pytest.raises(RuntimeError, match="dequantizing again"):
        smollm2.materialize_offline_smollm2(target)


def test_looped_base_folder_passes_validation(tmp_path: Path) -> None:
    ctx = looped_context(tmp_path)
    validate_before_writing(ctx)  # a Llama folder: not refused as "not a LoopFormer checkpoint"


def test_looping_change_discards_looped_sft_models(tmp_path: Path) -> None:
    ctx = looped_context(tmp_path, sft_loops=(2,))
    refresh_model_outputs(ctx, stage_named("sft"))  # records the inputs (outputs from before any record are discarded)
    folder = ctx.model_dir("train2")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text("{}")
    assert refresh_model_outputs(ctx, stage_named("sft")) == [] and folder.is_dir()

    looping = LoopingConfig(window=[1, 3], strategy="euler")  # another window: trained at another depth
    config = ctx.config.model_copy(update={"looping": looping})
    moved = RunContext(config=config, run_dir=ctx.run_dir, device=ctx.device)
    assert refresh_model_outputs(moved, stage_named("sft")) == ["train2"]
    assert not folder.exists()
