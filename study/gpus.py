"""Spread a sweep stage's models over several GPUs (Kaggle's T4x2).

Each GPU gets a worker process (this module's entry point, seeing one GPU) that
sweeps its share of the models and leaves one finished cell file per cell. The
parent then runs the stage as usual: every cell is found finished and read back, so
the aggregated results are exactly those of a single-device run. Latency is not
spread: two models timed at once would compete for the host and skew each other.

    python -m study.gpus --run-dir runs/v17-seed2026 --stage nll --models base train8
"""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
from pathlib import Path

import torch

from study.pipeline import RunContext, StudyError, context_from_run_dir

SPREAD_STAGES = {"nll": "study.stages.nll", "exact_match": "study.stages.exact_match"}


def gpu_count(ctx: RunContext) -> int:
    return torch.cuda.device_count() if ctx.device.type == "cuda" else 0


def spread_over_gpus(ctx: RunContext, stage: str) -> None:
    """Run ``stage``'s models in parallel, one worker per GPU (no-op with < 2 GPUs)."""
    gpus = gpu_count(ctx)
    names = [spec.name for spec in ctx.model_specs()]
    if stage not in SPREAD_STAGES or gpus < 2 or len(names) < 2:
        return
    shares = [names[i::gpus] for i in range(gpus)]
    processes = []
    for gpu, share in enumerate(shares):
        if not share:
            continue
        command = [sys.executable, "-m", "study.gpus", "--run-dir", str(ctx.run_dir), "--stage", stage, "--models"]
        env = dict(os.environ, CUDA_VISIBLE_DEVICES=str(gpu))
        processes.append((share, subprocess.Popen([*command, *share], env=env)))
    failed = [share for share, process in processes if process.wait() != 0]
    if failed:
        raise StudyError(f"{stage}: the worker for models {failed} failed (see its log above)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Sweep a share of a run's models on this process's device.")
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--stage", required=True, choices=sorted(SPREAD_STAGES))
    parser.add_argument("--models", required=True, nargs="+", help="model names: base, train8, train4, ...")
    args = parser.parse_args(argv)
    try:
        ctx = context_from_run_dir(args.run_dir, only_models=frozenset(args.models))
    except StudyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    known = {"base"} | {f"train{loops}" for loops in ctx.config.sft.train_loops}
    if not set(args.models) <= known:
        print(f"error: --models: {sorted(set(args.models) - known)} are not models of this run", file=sys.stderr)
        return 2
    importlib.import_module(SPREAD_STAGES[args.stage]).run(ctx)
    return 0


if __name__ == "__main__":
    sys.exit(main())
