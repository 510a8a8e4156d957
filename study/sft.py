"""SFT stage: fine-tune the base once per ``sft.train_loops`` entry with trl.

Each model trains at a fixed loop count, which reaches the model through its config
(``train_loops``): trl calls the backbone with input ids and mask only. Loss is on
the completion (the gold solution + EOS), never the prompt. Trainer checkpoints land
in ``sft/<name>/checkpoint-*`` every ``sft.save_steps`` optimizer steps; a rerun
resumes from the newest complete one. The final model is saved to ``models/<name>``
by writing a temporary folder and renaming it, so a folder there is always whole.

Entry point for one model, also under ``accelerate launch`` (DDP across GPUs/nodes)::

    accelerate launch -m study.sft --run-dir runs/v17-seed2026 --train-loops 8
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from study.config import StudyConfig
from study.io import atomic_write_csv, read_csv
from study.pipeline import (
    RunContext,
    StudyError,
    context_from_run_dir,
    make_deterministic,
    seed_everything,
)

LOSS_COLUMNS = ("model", "train_loops", "step", "epoch", "loss", "learning_rate")


def trainer_dir(ctx: RunContext, name: str) -> Path:
    return ctx.run_dir / "sft" / name


def loss_cell(ctx: RunContext, name: str) -> Path:
    return ctx.cells_dir("sft") / f"{name}.csv"


def last_complete_checkpoint(folder: Path) -> Path | None:
    """The newest ``checkpoint-N`` whose trainer state was written (the Trainer writes it
    last, so a checkpoint killed half-way has none and is discarded)."""
    if not folder.is_dir():
        return None
    complete = []
    for path in folder.glob("checkpoint-*"):
        if not path.name.split("-")[-1].isdigit():
            continue
        if (path / "trainer_state.json").is_file():
            complete.append(path)
        else:
            shutil.rmtree(path, ignore_errors=True)
    return max(complete, key=lambda p: int(p.name.split("-")[-1]), default=None)


def sft_dataset(ctx: RunContext):
    from datasets import Dataset

    return Dataset.from_list([{"prompt": ex.prompt, "completion": ex.completion} for ex in ctx.examples("sft")])


def training_arguments(config: StudyConfig, output_dir: Path, device: torch.device):
    from trl import SFTConfig

    sft = config.sft
    return SFTConfig(
        output_dir=str(output_dir),
        num_train_epochs=sft.epochs,
        per_device_train_batch_size=sft.batch_size,
        gradient_accumulation_steps=sft.grad_accum,
        learning_rate=sft.learning_rate,
        max_length=sft.max_length,
        completion_only_loss=True,
        # trl's defaults are bf16 + gradient checkpointing: the study is fp32, and the
        # looped stack is small enough to keep activations
        bf16=False,
        fp16=False,
        activation_checkpointing=False,
        seed=config.seed,
        data_seed=config.seed,
        full_determinism=sft.deterministic,
        logging_steps=1,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=sft.save_steps,
        save_total_limit=2,
        report_to=[],
        dataloader_num_workers=0,
        use_cpu=device.type == "cpu",
        disable_tqdm=True,
        dataset_num_proc=None,
    )


def _stop_on_ctrl_c(ctx: RunContext):
    """A callback that, after Ctrl-C, saves a checkpoint at the end of the current
    optimizer step and stops, so the rerun resumes from exactly there."""
    from transformers import TrainerCallback

    class StopOnCtrlC(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if ctx.stop_requested():
                control.should_save = True
                control.should_training_stop = True
            return control

    return StopOnCtrlC()


def train_one(ctx: RunContext, train_loops: int) -> None:
    """Fine-tune one model (resuming if a checkpoint exists) and save it to models/<name>."""
    from trl import SFTTrainer

    spec = ctx.sft_spec(train_loops)
    final_dir = ctx.model_dir(spec.name)
    if (final_dir / "config.json").is_file() and loss_cell(ctx, spec.name).is_file():
        return
    sft = ctx.config.sft
    seed_everything(ctx.config.seed)  # before the model is built, so any fresh init is seeded
    if sft.deterministic:
        make_deterministic(ctx.device)
    tokenizer = ctx.load_tokenizer()
    model = ctx.load_model(ctx.base_spec).train()
    model.config.train_loops = train_loops  # the loop count every training forward runs
    peft_config = None
    if sft.lora is not None:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=sft.lora.r,
            lora_alpha=sft.lora.alpha,
            lora_dropout=sft.lora.dropout,
            target_modules=list(sft.lora.target_modules),
            task_type="CAUSAL_LM",
        )
    output_dir = trainer_dir(ctx, spec.name)
    trainer = SFTTrainer(
        model=model,
        args=training_arguments(ctx.config, output_dir, ctx.device),
        train_dataset=sft_dataset(ctx),
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[_stop_on_ctrl_c(ctx)],
    )
    checkpoint = last_complete_checkpoint(output_dir)
    if checkpoint is not None:
        print(f"  {spec.name}: resuming from {checkpoint.name}", flush=True)
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    ctx.check_stop()  # stopped early by Ctrl-C: the checkpoint is saved, the model is not final
    if not trainer.is_world_process_zero():
        return

    trained = trainer.model
    if peft_config is not None:
        trained = trained.merge_and_unload()  # sweeps load a plain checkpoint
    trained.config.train_loops = train_loops
    staging = final_dir.with_name(f".{spec.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    trained.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    shutil.rmtree(final_dir, ignore_errors=True)
    staging.rename(final_dir)

    rows = [
        {
            "model": spec.name,
            "train_loops": train_loops,
            "step": entry["step"],
            "epoch": entry["epoch"],
            "loss": float(entry["loss"]),
            "learning_rate": float(entry["learning_rate"]),
        }
        for entry in trainer.state.log_history
        if "loss" in entry
    ]
    atomic_write_csv(loss_cell(ctx, spec.name), rows, LOSS_COLUMNS)


def _parallel_on_gpus(ctx: RunContext, pending: list[int]) -> None:
    """Kaggle's T4x2: one SFT per GPU at the same time, each a subprocess of this
    module's entry point seeing a single GPU."""
    gpus = torch.cuda.device_count()
    for start in range(0, len(pending), gpus):
        processes = []
        for gpu, loops in enumerate(pending[start : start + gpus]):
            env = dict(os.environ, CUDA_VISIBLE_DEVICES=str(gpu))
            command = [sys.executable, "-m", "study.sft", "--run-dir", str(ctx.run_dir), "--train-loops", str(loops)]
            processes.append((loops, subprocess.Popen(command, env=env)))
        failed = [loops for loops, process in processes if process.wait() != 0]
        if failed:
            raise StudyError(f"sft: training at train_loops {failed} failed on its GPU (see the log above)")


def run(ctx: RunContext) -> None:
    pending = [
        loops
        for loops in ctx.config.sft.train_loops
        if not (ctx.model_dir(f"train{loops}") / "config.json").is_file()
    ]
    if ctx.device.type == "cuda" and torch.cuda.device_count() > 1 and len(pending) > 1:
        _parallel_on_gpus(ctx, pending)
    for loops in ctx.config.sft.train_loops:
        ctx.check_stop()
        print(f"  sft: train_loops={loops}", flush=True)
        train_one(ctx, loops)
    rows = [row for loops in ctx.config.sft.train_loops for row in read_csv(loss_cell(ctx, f"train{loops}"))]
    atomic_write_csv(ctx.results_path("sft_loss.csv"), rows, LOSS_COLUMNS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fine-tune one LoopFormer of a run (used by run_study.py).")
    parser.add_argument("--run-dir", required=True, type=Path, help="run directory holding config.resolved.json")
    parser.add_argument("--train-loops", required=True, type=int, help="one entry of the config's sft.train_loops")
    args = parser.parse_args(argv)
    try:
        ctx = context_from_run_dir(args.run_dir)
    except StudyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.train_loops not in ctx.config.sft.train_loops:
        print(
            f"error: --train-loops {args.train_loops} is not in sft.train_loops {ctx.config.sft.train_loops}",
            file=sys.stderr,
        )
        return 2
    try:
        train_one(ctx, args.train_loops)
    except StudyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
