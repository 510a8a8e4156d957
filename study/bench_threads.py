"""``python -m study.bench threads``: 1 vs 2 torch threads per stage kind and shape, in one command.

    python -m study.bench threads [--shapes mini smol] [--repeats 2] [--out bench-threads.json]

Shapes: ``mini``, the embedded mini LoopFormer (``study/assets/mini-base``) at M = 8 with
its own tokenizer; ``smol``, a random Llama of SmolLM2-135M's shape looped at window
12-15 with euler (``study.bench_smol``; SmolLM2's tokenizer when the offline GGUF is
installed), K = 4 and SFT at K = 2; ``tiny-llama``, the same on a tiny Llama (tests).
Stage kinds, each as its stage runs it:

- ``nll``: the NLL scorer (``score_continuations``) on one batch of ``--batch`` GSM8K test
  questions + answers of neighbouring length;
- ``sft``: one SFT step (``study.sft_cost.sft_step``: forward at the training depth, the
  completion-only loss, backward, AdamW) on one GSM8K train example;
- ``exact_match``: greedy decoding of ``--em-batch`` prompts at once, ``--new-tokens``
  tokens each (no early stop: the same token work every time);
- ``latency``: greedy decoding of one prompt, ``--new-tokens`` tokens (batch 1).

Each kind runs once untimed (allocator, kernels, AdamW's state), then at 1 and at 2
threads alternately (1, 2, 1, 2 ...: a drift in the machine's load hits both alike),
best of ``--repeats``. The 1-minute load average before and after is recorded: the
figures describe an idle machine only when it is low. ``--out`` holds
``{"threads": {shape: {kind: {"1": s, "2": s, "speedup": s1/s2}}}, "details": ...}``.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from study.bench_probes import best_time, torch_threads
from study.bench_smol import DEVICE, bench_tokenizer, looped_family, median_batch, random_llama
from study.io import atomic_write_json
from study.looping.policies import DepthPolicy, UniformLoops
from study.manifest import cpu_model, git_commit
from study.models.backbones import bind
from study.models.loopformer import LoopFormerForCausalLM
from study.pipeline import EMBEDDED_DIR
from study.scoring import score_continuations
from study.sft_cost import encode_sft, sft_step
from study.tasks.gsm8k import load_gsm8k
from study.tokenizer import has_tokenizer, load_tokenizer

SHAPES = ("mini", "smol", "tiny-llama")
KINDS = ("nll", "sft", "exact_match", "latency")
COUNTS = (1, 2)


def shape_model(shape: str, tokenizer_choice: str) -> tuple[Any, Any, DepthPolicy, DepthPolicy, int]:
    """(model, tokenizer, inference policy, SFT policy, context limit) of a shape."""
    if shape == "mini":
        model = LoopFormerForCausalLM.from_pretrained(str(EMBEDDED_DIR)).eval()
        tokenizer = load_tokenizer(str(EMBEDDED_DIR) if has_tokenizer(EMBEDDED_DIR) else None)
        return model, tokenizer, UniformLoops(8), UniformLoops(8), int(model.config.block_size)
    model = random_llama(shape)
    tokenizer, _ = bench_tokenizer(tokenizer_choice, model.config.vocab_size)
    family = looped_family(shape)
    return model, tokenizer, family.policy(4), family.policy(2), int(model.config.max_position_embeddings)


def stage_kinds(shape: str, args: argparse.Namespace) -> tuple[dict[str, Callable[[], object]], dict[str, Any]]:
    """One callable per stage kind of a shape (each does what the stage does once), and
    what they run on."""
    model, tokenizer, policy, sft_policy, context = shape_model(shape, args.tokenizer)
    runner, sft_runner = bind(model, policy), bind(model, sft_policy)
    batch = median_batch(tokenizer, args.batch, args.pool, context)
    test = load_gsm8k().test
    prompts = [e.prompt for e in test[: args.em_batch]]
    ids, labels = encode_sft(tokenizer, load_gsm8k().train[0], args.sft_max_length)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def sft() -> object:
        model.train()
        try:
            with torch.enable_grad():
                return sft_step(sft_runner, ids, labels, optimizer)
        finally:
            model.eval()

    kinds: dict[str, Callable[[], object]] = {
        "nll": lambda: score_continuations(runner, batch, len(batch)),
        "sft": sft,
        "exact_match": lambda: runner.generate(tokenizer, prompts, args.new_tokens, early_stop=False),
        "latency": lambda: runner.generate(tokenizer, prompts[:1], args.new_tokens, early_stop=False),
    }
    described = {
        "policy": policy.id, "sft_policy": sft_policy.id, "nll_batch": len(batch),
        "nll_tokens": [len(e.input_ids) for e in batch], "sft_tokens": int(ids.shape[1]),
        "em_batch": len(prompts), "new_tokens": args.new_tokens,
    }  # fmt: skip
    return {kind: kinds[kind] for kind in args.kinds}, described


def time_counts(fn: Callable[[], object], repeats: int) -> dict[str, float]:
    """Seconds of ``fn`` at each thread count of ``COUNTS``, alternated, best of ``repeats``."""
    with torch_threads(1):
        fn()  # warm-up
    times: dict[int, list[float]] = {n: [] for n in COUNTS}
    for _ in range(repeats):
        for n in COUNTS:
            with torch_threads(n):
                times[n] += best_time(fn, 1, DEVICE)[2]
    best = {str(n): min(t) for n, t in times.items()}
    return {**best, "speedup": best["1"] / best["2"]}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m study.bench threads", description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", choices=SHAPES, default=["mini", "smol"])
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--tokenizer", choices=("auto", "smollm2", "gpt2"), default="auto", help="smol shapes")
    parser.add_argument("--batch", type=int, default=6, help="NLL batch (the smol config's nll.batch_size)")
    parser.add_argument("--pool", type=int, default=64, help="first test questions the NLL batch is drawn from")
    parser.add_argument("--em-batch", type=int, default=4, help="prompts decoded at once for exact_match")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--sft-max-length", type=int, default=320)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench-threads.json"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    start, load_before = time.perf_counter(), os.getloadavg()
    results: dict[str, dict[str, Any]] = {}
    described: dict[str, Any] = {}
    for shape in args.shapes:
        kinds, described[shape] = stage_kinds(shape, args)
        results[shape] = {}
        for kind, fn in kinds.items():
            results[shape][kind] = time_counts(fn, args.repeats)
            timed = results[shape][kind]
            print(f"threads {shape} {kind}: 1 thread {timed['1']:.3f}s, 2 threads {timed['2']:.3f}s = "
                  f"{timed['speedup']:.2f}x", flush=True)  # fmt: skip
    elapsed = time.perf_counter() - start
    details = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "git_commit": git_commit(), "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "load_before": list(load_before), "load_after": list(os.getloadavg()), "repeats": args.repeats,
        "torch": torch.__version__, "shapes": described, "seconds": elapsed,
    }  # fmt: skip
    atomic_write_json(args.out, {"threads": results, "details": details})
    print(f"load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}; took {elapsed:.0f}s")
    print(f"wrote {args.out}")
    return 0
