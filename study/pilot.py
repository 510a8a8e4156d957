"""Pilot for a looped-decoder config: which window and strategy to loop, chosen on
train-split data only (never on the test questions the study reports).

Scores the gold-answer NLL (the NLL stage's own scorer) of the base at every
(window, strategy, K) on GSM8K *train* questions that are outside the config's SFT
subset (so also outside its train diagnostics), and prints NLL per token with a
bootstrap CI, the executed loops and seconds per example::

    python -m study.pilot --version smol --examples 16 --windows 8-11 12-15 16-19 \\
        --strategies euler naive --loops 1 2 4 --out runs/pilot-smol.csv
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from study.config import ConfigError, load_config
from study.io import atomic_write_csv
from study.looping.policies import WindowFamily
from study.models.backbones import bind
from study.pipeline import RunContext, StudyError, configure_torch, resolve_device
from study.scoring import score_continuations
from study.stages.sweep import progress
from study.stats import ratio_ci, ratio_of_sums
from study.tasks.gsm8k import encode_example

COLUMNS = ("window", "strategy", "loops", "policy", "examples", "nll_per_token", "ci_low", "ci_high",
           "executed_loops", "seconds_per_example")  # fmt: skip


def pilot_examples(ctx: RunContext, count: int):
    """``count`` train-split questions outside the SFT subset, drawn with the config's seed."""
    train = ctx.dataset.split("train")
    used = set(ctx.subsets.sft)
    pool = [i for i in range(len(train)) if i not in used]
    chosen = np.random.default_rng(ctx.config.seed + 1).choice(pool, size=count, replace=False)
    return [train[int(i)] for i in sorted(chosen)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Choose a looped decoder's window and strategy on train data.")
    parser.add_argument("--version", default="smol", help="a looped_decoder config (its base, data and seed)")
    parser.add_argument("--examples", type=int, default=16)
    parser.add_argument("--windows", nargs="+", default=["12-15"], help="inclusive layer windows a-b")
    parser.add_argument("--strategies", nargs="+", default=["euler", "naive"])
    parser.add_argument("--loops", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--run-dir", type=Path, default=Path("runs/pilot-smol"), help="where the base is prepared")
    parser.add_argument("--out", type=Path, default=None, help="CSV of the table")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.version)
        if config.looping is None:
            raise ConfigError(f"--version {args.version}: not a looped_decoder config")
        windows = [tuple(int(v) for v in w.split("-")) for w in args.windows]
    except (ConfigError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    configure_torch(config)
    ctx = RunContext(config=config, run_dir=args.run_dir, device=resolve_device(config.device))
    try:
        model, tokenizer = ctx.load_model(ctx.base_spec), ctx.load_tokenizer()
    except StudyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    examples = pilot_examples(ctx, args.examples)
    encoded = [encode_example(tokenizer, e) for e in examples]
    print(f"pilot: {len(examples)} train questions outside the SFT subset (ids {[e.id for e in examples][:8]}...)")
    rows = []
    settings = [(w, s, k) for w in windows for s in args.strategies for k in args.loops]
    try:  # e.g. a position-mixing strategy with the config's per_loop cache: refused before any work
        for window, strategy, loops in settings:
            WindowFamily(window=(window[0], window[1]), strategy=strategy, cache_strategy=config.looping.cache_strategy,
                         decode_mode=config.looping.decode_mode).policy(loops)  # fmt: skip
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    plain_done = False
    for window, strategy, loops in progress(settings, desc="pilot settings"):
        if loops == 1 and plain_done:
            continue  # K = 1 is the plain model whatever the window and strategy: scored once
        plain_done = plain_done or loops == 1
        family = WindowFamily(window=window, strategy=strategy, cache_strategy=config.looping.cache_strategy,
                              decode_mode=config.looping.decode_mode)  # fmt: skip
        policy = family.policy(loops)
        start = time.perf_counter()
        scores = score_continuations(bind(model, policy), encoded, args.batch_size)
        seconds = (time.perf_counter() - start) / len(encoded)
        nll = np.array([s.nll_sum for s in scores])
        tokens = np.array([s.answer_tokens for s in scores])
        low, high = ratio_ci(nll, tokens, 2000, 0.95, config.seed)
        row = {
            "window": f"{window[0]}-{window[1]}", "strategy": strategy, "loops": loops, "policy": policy.id,
            "examples": len(scores), "nll_per_token": float(ratio_of_sums(nll, tokens)), "ci_low": low,
            "ci_high": high, "executed_loops": float(np.mean([s.executed_loops for s in scores])),
            "seconds_per_example": seconds,
        }  # fmt: skip
        rows.append(row)
        print(
            f"{row['policy']:<24} NLL {row['nll_per_token']:.4f} [{low:.4f}, {high:.4f}]  "
            f"executed {row['executed_loops']:.1f}  {seconds:.2f} s/example",
            flush=True,
        )
    if args.out is not None:
        atomic_write_csv(args.out, rows, COLUMNS)
        print(f"table: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
