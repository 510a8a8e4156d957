"""SFT stage on a tiny random base: completion-only loss at the config's train loops,
resumable checkpoints, LoRA as a config switch."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from study.config import DataConfig, LoraConfig, ModelConfig, SFTConfig, StudyConfig
from study.io import read_csv
from study.pipeline import RunContext
from study.stages.sft import last_complete_checkpoint, run, trainer_dir

from .helpers_sweep import one_thread, tiny_model


def _context(tmp_path: Path, **sft) -> RunContext:
    base = tmp_path / "base"
    tiny_model(seed=0, block_size=512).save_pretrained(base)
    config = StudyConfig(
        name="sft-test",
        seed=3,
        device="cpu",
        model=ModelConfig(source=str(base), tokenizer="gpt2"),
        data=DataConfig(sft_examples=4, nll_test_examples=2, nll_train_examples=2, em_examples=2),
        sft=SFTConfig(
            **{"train_loops": [2], "epochs": 1, "grad_accum": 2, "max_length": 256, "learning_rate": 1e-3} | sft
        ),
    )
    return RunContext(config=config, run_dir=tmp_path / "run", device=torch.device("cpu"))


def test_sft_trains_at_its_loop_count_and_logs_every_step(tmp_path: Path) -> None:
    ctx = _context(tmp_path, save_steps=1)
    with one_thread():
        run(ctx)
    trained = ctx.model_dir("train2")
    assert (trained / "config.json").is_file() and (trained / "tokenizer.json").is_file()
    model = ctx.load_model(ctx.sft_spec(2))
    assert model.config.train_loops == 2
    base = load_file(Path(ctx.base_spec.source) / "model.safetensors")
    tuned = load_file(trained / "model.safetensors")
    assert set(base) == set(tuned)
    assert any(not torch.equal(base[k], tuned[k]) for k in base)
    rows = read_csv(ctx.results_path("sft_loss.csv"))
    assert [int(r["step"]) for r in rows] == [1, 2] and {r["train_loops"] for r in rows} == {"2"}
    # every checkpoint is complete, so a rerun would resume from the last one
    assert last_complete_checkpoint(trainer_dir(ctx, "train2")).name == "checkpoint-2"


def test_half_written_checkpoint_is_discarded(tmp_path: Path) -> None:
    folder = tmp_path / "sft"
    (folder / "checkpoint-4").mkdir(parents=True)
    (folder / "checkpoint-4" / "trainer_state.json").write_text("{}")
    (folder / "checkpoint-6").mkdir()  # killed before its trainer state was written
    assert last_complete_checkpoint(folder) == folder / "checkpoint-4"
    assert not (folder / "checkpoint-6").exists()


def test_lora_is_a_config_switch_and_saves_a_merged_model(tmp_path: Path) -> None:
    ctx = _context(tmp_path, lora=LoraConfig(r=2, alpha=4, target_modules=["c_attn", "c_fc"]))
    with one_thread():
        run(ctx)
    base = load_file(Path(ctx.base_spec.source) / "model.safetensors")
    tuned = load_file(ctx.model_dir("train2") / "model.safetensors")
    assert set(tuned) == set(base)  # merged: no adapter tensors left
    changed = {k for k in base if not torch.equal(base[k], tuned[k])}
    assert changed and all(".c_attn." in k or ".c_fc." in k for k in changed)
