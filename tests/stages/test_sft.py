"""SFT stage on a tiny random base: completion-only loss at the config's train loops,
resumable checkpoints, LoRA as a config switch."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from study.config import DataConfig, LoraConfig, ModelConfig, SFTConfig, StudyConfig
from study.io import read_csv
from study.models.loopformer import LoopFormerConfig, LoopFormerModel
from study.pipeline import RunContext
from study.stages.sft import build_trainer, last_complete_checkpoint, run, sft_progress, trainer_dir
from tests.support.helpers_sweep import one_thread, tiny_model


def _context(tmp_path: Path, replicates: list[int] | None = None, **sft) -> RunContext:
    base = tmp_path / "base"
    tiny_model(seed=0, block_size=512).save_pretrained(base)
    config = StudyConfig(
        name="sft-test",
        seed=3,
        device="cpu",
        model=ModelConfig(source=str(base), tokenizer="gpt2"),
        data=DataConfig(
            sft_examples=4, nll_test_examples=2, nll_heldout_examples=2, nll_seen_examples=2, em_examples=2
        ),
        sft=SFTConfig(
            **{"train_loops": [2], "epochs": 1, "grad_accum": 2, "max_length": 256, "learning_rate": 1e-3} | sft
        ),
        **({} if replicates is None else {"replicates": replicates}),
    )
    return RunContext(config=config, run_dir=tmp_path / "run", device=torch.device("cpu"))


def test_sft_trains_at_its_loop_count_and_logs_every_step(tmp_path: Path, capsys) -> None:
    """The base is configured for 8 loops; SFT at 2 must run 2 loop steps in every
    training forward (counted by forward hooks while the stage runs), not the default."""
    ctx = _context(tmp_path, save_steps=1)
    calls = {"backbone": 0, "block": 0}

    def count(module, args, output) -> None:
        if isinstance(module, LoopFormerModel):
            calls["backbone"] += 1
        elif module.__class__.__name__ == "LoopBlock":
            calls["block"] += 1

    hook = torch.nn.modules.module.register_module_forward_hook(count)
    try:
        with one_thread():
            run(ctx)
    finally:
        hook.remove()
    n_layer = LoopFormerConfig.from_pretrained(ctx.base_spec.source).n_layer
    assert LoopFormerConfig.from_pretrained(ctx.base_spec.source).train_loops == 8
    assert calls["backbone"] == 4  # 4 examples, batch 1, one epoch
    assert calls["block"] == calls["backbone"] * n_layer * 2
    # readable progress off a terminal: one line per logged step here (2 steps), no raw dicts
    out = capsys.readouterr().out
    assert "  sft train2: step 1/2, loss " in out and "  sft train2: step 2/2, loss " in out
    assert "  sft train2: 2 steps in " in out and "{'loss'" not in out
    trained = ctx.model_dir("train2")
    assert (trained / "config.json").is_file() and (trained / "tokenizer.json").is_file()
    model = ctx.load_model(ctx.sft_spec(2))
    assert model.config.train_loops == 2
    base = load_file(Path(ctx.base_spec.source) / "model.safetensors")
    tuned = load_file(trained / "model.safetensors")
    assert set(base) == set(tuned)
    assert any(not torch.equal(base[k], tuned[k]) for k in base)
    rows = read_csv(ctx.results_path("sft_loss.csv"))
    assert [int(r["step"]) for r in rows] == [1, 2] and {(r["train_loops"], r["seed"]) for r in rows} == {("2", "3")}
    # the model is final: its resume points (one per step here) are gone, not left to fill the disk
    assert not trainer_dir(ctx, "train2").exists()


def test_each_replicate_trains_on_its_own_subset_with_its_own_seed(tmp_path: Path) -> None:
    ctx = _context(tmp_path, replicates=[3, 4])
    specs = ctx.sft_specs()
    assert [(s.name, s.seed) for s in specs] == [("train2-s3", 3), ("train2-s4", 4)]
    for spec in specs:
        trainer = build_trainer(ctx, spec)
        assert (trainer.args.seed, trainer.args.data_seed) == (spec.seed, spec.seed)
        prompts = [row["prompt"] for row in trainer.train_dataset]
        assert prompts == [ex.prompt for ex in ctx.sft_examples(spec.seed)]
    assert ctx.subsets.sft[3] != ctx.subsets.sft[4]
    with one_thread():
        run(ctx)
    first, second = (load_file(ctx.model_dir(s.name) / "model.safetensors") for s in specs)
    assert any(not torch.equal(first[k], second[k]) for k in first)
    rows = read_csv(ctx.results_path("sft_loss.csv"))
    assert {(r["model"], r["seed"]) for r in rows} == {("train2-s3", "3"), ("train2-s4", "4")}


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


def test_loss_is_on_the_completion_only(tmp_path: Path) -> None:
    """In a collated training batch every prompt position (and padding) is -100; the
    completion (gold solution + EOS) keeps its token ids."""
    ctx = _context(tmp_path, batch_size=2)
    trainer = build_trainer(ctx, ctx.sft_spec(2))
    tokenizer = trainer.processing_class
    examples = {ex.prompt: ex for ex in ctx.sft_examples(3)}
    seen = truncated = 0
    for batch in trainer.get_train_dataloader():
        for ids, labels in zip(batch["input_ids"].tolist(), batch["labels"].tolist(), strict=True):
            scored = [i for i, label in enumerate(labels) if label != -100]
            assert scored, "a row with nothing to learn"
            start = scored[0]
            prompt = tokenizer.decode(ids[:start])
            assert prompt in examples, prompt
            assert scored == list(range(start, scored[-1] + 1))  # one contiguous completion
            assert [labels[i] for i in scored] == [ids[i] for i in scored]
            completion = examples[prompt].completion + tokenizer.eos_token
            learned = tokenizer.decode([ids[i] for i in scored])
            if scored[-1] + 1 < ctx.config.sft.max_length:
                assert learned == completion
            else:  # cut at max_length: a prefix of the completion
                assert completion.startswith(learned)
                truncated += 1
            seen += 1
    assert seen == 4 and truncated < seen


def test_progress_bar_shows_the_loss_on_a_terminal() -> None:
    from transformers import TrainerControl, TrainerState, TrainingArguments

    state = TrainerState(max_steps=10, global_step=0)
    progress = sft_progress("train8", interactive=True)
    args, control = TrainingArguments(output_dir="unused", report_to=[]), TrainerControl()
    progress.on_train_begin(args, state, control)
    bar = progress.training_bar
    assert bar.total == 10 and "sft train8" in bar.desc
    state.global_step = 3
    progress.on_step_end(args, state, control)
    progress.on_log(args, state, control, logs={"loss": 1.23456, "learning_rate": 5e-6, "epoch": 0.3})
    assert bar.n == 3 and bar.postfix == "loss 1.2346, lr 5.00e-06, epoch 0.30"
    progress.on_train_end(args, state, control)
    assert progress.training_bar is None
