"""SFT stage: fine-tune the base once per ``sft.train_loops`` entry and replicate seed with trl.

Each replicate seed (config ``replicates``; one, the run's seed, by default) draws its own
SFT subset (``study.tasks.gsm8k``) and seeds its training (python, numpy, torch, the
Trainer's data order): ``train4-s2027`` is Train4 fine-tuned on seed 2027's subset with
seed 2027. With a single replicate the names carry no seed (``train4``).

Each model trains at a fixed depth policy, with the trainer its backbone's registry
entry gives (``study.models.backbones``: ``sft_trainer``, ``set_train_depth``).
LoopFormer: the loop count reaches the model through its config (``train_loops``):
trl calls the backbone with input ids and mask only. A looped decoder (training-free
looping of a pretrained decoder): every training forward runs through
``loop_decoder(model, spec)`` at K = the entry, so the gradients flow through every
pass of the window; the saved model is the plain decoder (``save_pretrained``) with
``loop_policy.json`` beside it, never the wrapper. Loss is on
the completion (the gold solution + EOS), never the prompt. Trainer checkpoints land
in ``sft/<name>/checkpoint-*`` every ``sft.save_steps`` optimizer steps; a rerun
resumes from the newest complete one. The final model is saved to ``models/<name>`` by
writing a temporary folder and renaming it, so a folder there is always whole; then its
trainer checkpoints are removed.

Entry point for one model, also under ``accelerate launch`` (DDP across GPUs/nodes)::

    accelerate launch -m study.stages.sft --run-dir runs/v17-seed2026 --train-loops 8 --replicate 2026

Under ``accelerate launch run_study.py`` (several processes) the models are split
between the processes and each trains its own in a child process of its own (one SFT
per GPU on Kaggle's T4 x2), outside the sweep's process group.
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch

from study import distributed
from study.config import StudyConfig
from study.errors import CheckpointError
from study.io import atomic_write_csv, atomic_write_json, read_csv, read_json
from study.models.validation import validate_safetensors
from study.pipeline import ModelSpec, RunContext, StudyError, context_from_run_dir
from study.stages.stage import Stage

LOSS_COLUMNS = ("model", "seed", "train_loops", "step", "epoch", "loss", "learning_rate")
LOOP_POLICY_FILE = "loop_policy.json"  # beside a looped decoder's SFT weights: the policy it trained at


def trainer_dir(ctx: RunContext, name: str) -> Path:
    return ctx.run_dir / "sft" / name


def loss_cell(ctx: RunContext, name: str) -> Path:
    return ctx.cells_dir("sft") / f"{name}.csv"


def checkpoint_problem(path: Path) -> str | None:
    """Why a trainer checkpoint cannot be resumed from, or None when it can. The Trainer
    writes ``trainer_state.json`` last, so a checkpoint killed half-way lacks it; a kill
    during that very write leaves it empty or torn."""
    state = path / "trainer_state.json"
    if not state.is_file():
        return "no trainer_state.json (written last: the save was cut short)"
    try:
        if not isinstance(read_json(state), dict):
            return "trainer_state.json is not a JSON object"
    except (OSError, ValueError):
        return "trainer_state.json is empty or torn"
    for weights in sorted(path.glob("*.safetensors")):
        try:
            validate_safetensors(weights)
        except CheckpointError:
            return f"{weights.name} is truncated or corrupt"
    for pickled in ("optimizer.pt", "scheduler.pt"):
        if (path / pickled).is_file() and not zipfile.is_zipfile(path / pickled):
            return f"{pickled} is truncated or corrupt"
    return None


def last_complete_checkpoint(folder: Path, log: Callable[[str], None] | None = None) -> Path | None:
    """The newest ``checkpoint-N`` that can be resumed from. Newer ones that cannot are
    removed (a rerun would otherwise crash on them forever), each reported to ``log``."""
    if not folder.is_dir():
        return None
    numbered = [p for p in folder.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    for path in sorted(numbered, key=lambda p: -int(p.name.split("-")[-1])):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        if log is not None:
            log(f"{path.name} is incomplete ({problem}): discarded")
        shutil.rmtree(path, ignore_errors=True)
    return None


# a write that failed for want of room: torch's zip writer reports it as a C++ enforce
# failure (RuntimeError), safetensors as its own error, Python as OSError
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES)
DISK_MESSAGES = ("file write failed", "No space left", "Disk quota", "StorageFull", "unexpected pos", "Read-only")


def disk_write_failure(error: BaseException) -> str | None:
    """A short reason when ``error`` is a failed write to disk, else None."""
    if isinstance(error, OSError) and error.errno in DISK_ERRNOS:
        return error.strerror or str(error)
    text = " ".join(str(error).split())
    if not isinstance(error, OSError) and any(m in text for m in DISK_MESSAGES):
        return next(m for m in DISK_MESSAGES if m in text)
    return None


def sft_dataset(ctx: RunContext, seed: int):
    """The SFT subset of replicate ``seed`` as trl reads it."""
    from datasets import Dataset

    examples = ctx.sft_examples(seed)
    return Dataset.from_list([{"prompt": ex.prompt, "completion": ex.completion} for ex in examples])


def training_arguments(config: StudyConfig, output_dir: Path, device: torch.device, seed: int):
    """The Trainer's arguments for one model; ``seed`` is its replicate seed (init, data order)."""
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
        seed=seed,
        data_seed=seed,
        full_determinism=sft.deterministic,
        logging_steps=1,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=sft.save_steps,
        save_total_limit=2,
        report_to=[],
        dataloader_num_workers=0,
        use_cpu=device.type == "cpu",
        disable_tqdm=False,  # the Trainer's step bar, shown by SFTProgress
        dataset_num_proc=None,
    )


def _log_text(logs: dict) -> str:
    """A logged step as a short readable text: loss, learning rate, epoch."""
    parts = []
    if "loss" in logs:
        parts.append(f"loss {float(logs['loss']):.4f}")
    if "learning_rate" in logs:
        parts.append(f"lr {float(logs['learning_rate']):.2e}")
    if "epoch" in logs:
        parts.append(f"epoch {float(logs['epoch']):.2f}")
    return ", ".join(parts)


def sft_progress(name: str, interactive: bool | None = None):
    """The Trainer's own step bar (its ``ProgressCallback``), named after the model and
    showing the latest loss as its postfix instead of printing a dict per logged step.
    Off a terminal (a CI log), where a redrawn bar piles up, it prints one plain line at
    the first step, every tenth of the run and at the end."""
    from tqdm.auto import tqdm
    from transformers.trainer_callback import ProgressCallback

    class SFTProgress(ProgressCallback):
        def __init__(self) -> None:
            super().__init__()
            self.interactive = sys.stderr.isatty() if interactive is None else interactive
            self.every, self.started = 1, 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            self.current_step, self.started = state.global_step, time.perf_counter()
            self.every = max(1, state.max_steps // 10)
            if state.is_world_process_zero and self.interactive:
                self.training_bar = tqdm(  # type: ignore[assignment]  # transformers initialises it to None, untyped
                    total=state.max_steps, initial=state.global_step, desc=f"  sft {name}", unit="step",
                    dynamic_ncols=True,
                )  # fmt: skip

        def on_step_end(self, args, state, control, **kwargs):
            if self.training_bar is not None:
                self.training_bar.update(state.global_step - self.current_step)
            self.current_step = state.global_step

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            if "train_runtime" in logs:  # the Trainer's closing summary
                text = f"  sft {name}: {state.global_step} steps in {time.perf_counter() - self.started:.1f} s"
                if "train_loss" in logs:
                    text += f", mean loss {float(logs['train_loss']):.4f}"
                (self.training_bar.write if self.training_bar is not None else print)(text)
                return
            if self.training_bar is not None:
                self.training_bar.set_postfix_str(_log_text(logs))
            elif not self.interactive:
                step = state.global_step
                if step <= 1 or step % self.every == 0 or step == state.max_steps:
                    print(f"  sft {name}: step {step}/{state.max_steps}, {_log_text(logs)}", flush=True)

        def on_train_end(self, args, state, control, **kwargs):
            if self.training_bar is not None:
                self.training_bar.close()
                self.training_bar = None

    return SFTProgress()


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


def _stop_on_non_finite_loss(name: str, learning_rate: float):
    """A callback that stops training with a one-line error as soon as a logged loss is
    NaN or infinite (every step is logged): a diverged model must never reach the sweeps."""
    from transformers import TrainerCallback

    class StopOnNonFiniteLoss(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            loss = (logs or {}).get("loss")
            if loss is not None and not math.isfinite(float(loss)):
                raise StudyError(
                    f"sft: {name}: the training loss became {loss} at step {state.global_step}: training diverged "
                    f"(sft.learning_rate {learning_rate}); lower it and rerun. No final model was saved"
                )
            return control

    return StopOnNonFiniteLoss()


def _all_finite(model) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def build_trainer(ctx: RunContext, spec: ModelSpec):
    """The SFTTrainer of one SFT model: the base at its ``train_loops`` loops, the config's
    training arguments with its replicate seed, that seed's SFT subset, and the Ctrl-C and
    progress callbacks."""
    from transformers import set_seed
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    assert spec.seed is not None, f"{spec.name} is not an SFT model"
    train_loops = spec.train_loops
    sft = ctx.config.sft
    # python, numpy and torch seeded before the model is built, so any fresh init (LoRA's
    # adapters) is seeded; deterministic kernels are the Trainer's (full_determinism)
    set_seed(spec.seed)
    tokenizer = ctx.load_tokenizer()
    model = ctx.load_model(ctx.base_spec).train()
    policy = ctx.loop_family.policy(train_loops)  # the depth every training forward runs
    trainer_class = ctx.backbone.sft_trainer(policy)
    ctx.backbone.set_train_depth(model, train_loops)
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
    trainer = trainer_class(
        model=model,
        args=training_arguments(ctx.config, trainer_dir(ctx, spec.name), ctx.device, spec.seed),
        train_dataset=sft_dataset(ctx, spec.seed),
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[_stop_on_ctrl_c(ctx), _stop_on_non_finite_loss(spec.name, sft.learning_rate)],
    )
    for default in (ProgressCallback, PrinterCallback):
        trainer.remove_callback(default)
    trainer.add_callback(sft_progress(spec.name))
    return trainer


def train_one(ctx: RunContext, spec: ModelSpec) -> None:
    """Fine-tune one SFT model (resuming if a checkpoint exists) and save it to models/<name>."""
    train_loops = spec.train_loops
    final_dir = ctx.model_dir(spec.name)
    if (final_dir / "config.json").is_file() and loss_cell(ctx, spec.name).is_file():
        return
    sft = ctx.config.sft
    trainer = build_trainer(ctx, spec)
    tokenizer = trainer.processing_class
    output_dir = trainer_dir(ctx, spec.name)
    checkpoint = last_complete_checkpoint(output_dir, log=lambda line: print(f"  {spec.name}: {line}", flush=True))
    if checkpoint is not None:
        print(f"  {spec.name}: resuming from {checkpoint.name}", flush=True)
    staging = final_dir.with_name(f".{spec.name}.partial")
    try:
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        ctx.check_stop()  # stopped early by Ctrl-C: the checkpoint is saved, the model is not final
        if not trainer.is_world_process_zero():
            return

        trained = trainer.model
        if sft.lora is not None:
            trained = trained.merge_and_unload()  # sweeps load a plain checkpoint
        if not _all_finite(trained):  # the last update overflowed after the last logged loss
            raise StudyError(
                f"sft: {spec.name}: the trained weights hold NaN or infinite values: training diverged "
                f"(sft.learning_rate {sft.learning_rate}); lower it and rerun. No final model was saved"
            )
        ctx.backbone.set_train_depth(trained, train_loops)
        shutil.rmtree(staging, ignore_errors=True)
        trained.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        # what it trained at (the sweeps run their own policies on it; the wrapper is not in the weights)
        policy = ctx.loop_family.policy(train_loops)
        atomic_write_json(staging / LOOP_POLICY_FILE, {"train_loops": train_loops, **policy.describe()})
    except Exception as error:
        reason = disk_write_failure(error)
        if reason is None:
            raise
        shutil.rmtree(staging, ignore_errors=True)
        raise StudyError(
            f"{output_dir}: writing {spec.name}'s checkpoint failed ({reason}): free disk space and rerun, "
            "training resumes from the last complete checkpoint"
        ) from None
    shutil.rmtree(final_dir, ignore_errors=True)
    staging.rename(final_dir)

    rows = [
        {
            "model": spec.name,
            "seed": spec.seed,
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
    # the model and its loss curve are final: its resume points (0.5-1.6 GB each for SmolLM2,
    # two kept per model) would otherwise pile up over every model and replicate
    shutil.rmtree(output_dir, ignore_errors=True)


def _entry_command(ctx: RunContext, spec: ModelSpec) -> list[str]:
    """This module's entry point training ``spec``."""
    command = [sys.executable, "-m", "study.stages.sft", "--run-dir", str(ctx.run_dir)]
    return [*command, "--train-loops", str(spec.train_loops), "--replicate", str(spec.seed)]


def _train_in_child(ctx: RunContext, spec: ModelSpec) -> None:
    """Under ``accelerate launch``: train one model in a child process that is not a
    member of the run's process group (the Trainer would otherwise average gradients
    with the other processes' different models), on this process's device."""
    extra = {}
    if ctx.device.type == "cuda":
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        index = ctx.device.index or 0
        extra["CUDA_VISIBLE_DEVICES"] = visible.split(",")[index] if visible else str(index)
    code = subprocess.run(_entry_command(ctx, spec), env=distributed.child_environment(extra), check=False).returncode
    if code != 0:
        raise StudyError(f"sft: training {spec.name} failed in process {distributed.process_index()}")


def _parallel_on_gpus(ctx: RunContext, pending: list[ModelSpec]) -> None:
    """Kaggle's T4x2: one SFT per GPU at the same time, each a subprocess of this
    module's entry point seeing a single GPU."""
    gpus = torch.cuda.device_count()
    for start in range(0, len(pending), gpus):
        processes = []
        for gpu, spec in enumerate(pending[start : start + gpus]):
            env = dict(os.environ, CUDA_VISIBLE_DEVICES=str(gpu))
            processes.append((spec.name, subprocess.Popen(_entry_command(ctx, spec), env=env)))
        failed = [name for name, process in processes if process.wait() != 0]
        if failed:
            raise StudyError(f"sft: training {', '.join(failed)} failed on its GPU (see the log above)")


def run(ctx: RunContext) -> None:
    specs = ctx.sft_specs()
    pending = [spec for spec in specs if not (ctx.model_dir(spec.name) / "config.json").is_file()]
    if distributed.num_processes() > 1:  # accelerate launch: each process trains its share of the models
        distributed.settle(None)  # every process has listed the same pending models before any is written
        for spec in distributed.split(pending):
            ctx.check_stop()
            _train_in_child(ctx, spec)
        distributed.settle(None)
        if not distributed.is_main():
            return
    elif ctx.device.type == "cuda" and torch.cuda.device_count() > 1 and len(pending) > 1:
        _parallel_on_gpus(ctx, pending)
    for spec in specs:
        ctx.check_stop()
        print(f"  sft: {spec.name} (train_loops={spec.train_loops}, seed {spec.seed})", flush=True)
        train_one(ctx, spec)
    rows = [row for spec in specs for row in read_csv(loss_cell(ctx, spec.name))]
    atomic_write_csv(ctx.results_path("sft_loss.csv"), rows, LOSS_COLUMNS)


def _models_there(ctx: RunContext) -> bool:
    return all((ctx.model_dir(spec.name) / "config.json").is_file() for spec in ctx.sft_specs())


STAGE = Stage(
    name="sft",
    run=run,
    sections=("seed", "replicates", "model", "data", "sft", "looping"),
    splits=("train",),
    reads="base",
    outputs=("results/sft_loss.csv", "models/train*"),
    cell_neutral=("train_loops", "save_steps"),
    complete=_models_there,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fine-tune one LoopFormer of a run (used by run_study.py).")
    parser.add_argument("--run-dir", required=True, type=Path, help="run directory holding config.resolved.json")
    parser.add_argument("--train-loops", required=True, type=int, help="one entry of the config's sft.train_loops")
    parser.add_argument("--replicate", type=int, help="one seed of the config's replicates (optional with one)")
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
    replicates = ctx.config.replicates
    if args.replicate is None and len(replicates) > 1:
        print(f"error: --replicate: required with several replicates (one of {replicates})", file=sys.stderr)
        return 2
    if args.replicate is not None and args.replicate not in replicates:
        print(f"error: --replicate {args.replicate} is not in replicates {replicates}", file=sys.stderr)
        return 2
    try:
        train_one(ctx, ctx.sft_spec(args.train_loops, args.replicate))
    except StudyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
