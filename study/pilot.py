"""Pilots: what to loop, chosen before a study on data the study does not report.

``python -m study.pilot`` (a looped-decoder config's window and strategy) scores the
gold-answer NLL (``study.scoring``, the NLL stage's own scorer) of the base at every
(window, strategy, K) on GSM8K *train* questions that are outside the config's SFT
subset (so also outside its train diagnostics), and prints NLL per token with a
bootstrap CI, the executed loops and seconds per example::

    python -m study.pilot --version smol --examples 16 --windows 8-11 12-15 16-19 \\
        --strategies euler naive --loops 1 2 4 --out runs/pilot-smol.csv

``python -m study.pilot looping`` (once ``python -m study.looping``) is training-free
looping on a pretrained SmolLM2, without a config: the gold-answer NLL of the first
``--examples`` GSM8K *test* questions per strategy and loop count::

    python -m study.pilot looping --model smollm2 --window 12 15 --loops 1 2 3 4 \\
        --strategy euler naive --examples 50

For every (strategy, K): the token-weighted NLL of the gold GSM8K solutions
(``Question: {q}\\nAnswer:`` then the solution, teacher-forced, no BOS; sum of NLL over
sum of tokens), a seeded percentile bootstrap 95% CI over examples, the mean executed
loops, and seconds per example.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
from tqdm import tqdm

from study.config import ConfigError, load_config
from study.io import atomic_write_csv
from study.looping.policies import WindowFamily
from study.looping.spec import LoopSpec
from study.looping.strategies import STRATEGIES
from study.models.backbones import bind
from study.pipeline import RunContext, StudyError, configure_torch, resolve_device
from study.scoring import gold_token_nll, length_batches, right_pad, score_continuations
from study.stages.sweep import progress
from study.stats import ratio_ci, ratio_of_sums
from study.tasks.gsm8k import EncodedExample, encode_example, load_gsm8k

COLUMNS = ("window", "strategy", "loops", "policy", "examples", "nll_per_token", "ci_low", "ci_high",
           "executed_loops", "seconds_per_example")  # fmt: skip


def pilot_examples(ctx: RunContext, count: int):
    """``count`` train-split questions outside every SFT subset, drawn with the config's seed."""
    train = ctx.dataset.split("train")
    used = ctx.subsets.sft_union
    pool = [i for i in range(len(train)) if i not in used]
    chosen = np.random.default_rng(ctx.config.seed + 1).choice(pool, size=count, replace=False)
    return [train[int(i)] for i in sorted(chosen)]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m study.pilot [looping] ...``: the first word picks the tool."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["looping"]:
        return looping_main(argv[1:])
    return window_main(argv)


# ---- window pilot of a looped-decoder config (train questions) --------------------------


def window_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m study.pilot",
        description="Choose a looped decoder's window and strategy on train data.",
        epilog="python -m study.pilot looping --help: training-free looping of SmolLM2 (no config).",
    )
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


# ---- training-free looping of a pretrained SmolLM2 (python -m study.pilot looping) ------

LOOPING_PROG = "python -m study.pilot looping"
SMOLLM2_SOURCES = ("smollm2", "HuggingFaceTB/SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M")


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse prints usage too; one line is enough
        self.exit(2, f"{self.prog}: error: {message}\n")


def parse_looping_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = OneLineParser(
        prog=LOOPING_PROG, description="Training-free looping: gold-answer NLL on GSM8K test questions."
    )
    parser.add_argument("--model", default="smollm2", choices=SMOLLM2_SOURCES, help="smollm2 = the offline GGUF")
    parser.add_argument("--window", type=int, nargs=2, required=True, metavar=("A", "B"), help="layers a..b")
    parser.add_argument("--loops", type=int, nargs="+", default=[1, 2, 3, 4], metavar="K")
    parser.add_argument("--strategy", nargs="+", default=["euler", "naive"], choices=list(STRATEGIES))
    parser.add_argument("--mode", choices=("block", "layer"), default="block")
    parser.add_argument("--halt-tau", type=float, default=None, help="stop a row once its step is this small")
    parser.add_argument("--examples", type=int, default=50, help="the first N GSM8K test questions")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=2026, help="bootstrap seed")
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples")
    args = parser.parse_args(argv)
    for name in ("examples", "batch_size", "threads", "resamples"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    try:
        args.specs = [
            LoopSpec(tuple(args.window), k, strategy, args.mode, halt_tau=args.halt_tau)
            for strategy in args.strategy
            for k in args.loops
        ]
    except ValueError as error:
        parser.error(str(error))
    return args


@torch.inference_mode()
def score_looped(
    looped: Any, examples: list[EncodedExample], batch_size: int, bar: tqdm | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per example: summed NLL of the gold solution, its token count, and executed loops.

    Unlike ``score_continuations`` the padding is masked: per-row halting decides from
    every position of a row, and must never see the padding after it."""
    nll, tokens, loops = np.zeros(len(examples)), np.zeros(len(examples)), np.zeros(len(examples))
    for batch in length_batches([len(e.input_ids) for e in examples], batch_size):
        rows = [examples[i] for i in batch]
        input_ids, attention_mask = right_pad(rows)
        out = looped.base_forward(input_ids, attention_mask=attention_mask)
        token_nll = gold_token_nll(out.last_hidden_state, looped.model.lm_head, rows)
        for i, part, executed in zip(batch, token_nll, out.executed_loops.tolist(), strict=True):
            nll[i], tokens[i], loops[i] = float(part.sum()), len(part), executed
        if bar is not None:
            bar.update(len(rows))
    return nll, tokens, loops


def looping_main(argv: Sequence[str] | None = None) -> int:
    args = parse_looping_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    from study.models.looped_decoder import loop_decoder
    from study.models.smollm2 import ModelUnavailable, load_smollm2, provenance

    try:
        origin = provenance(args.model)
        start = time.perf_counter()
        model, tokenizer = load_smollm2(args.model)
    except ModelUnavailable as error:
        print(error, file=sys.stderr)
        return 1
    loaded = time.perf_counter() - start
    try:
        wrappers = [loop_decoder(model, spec) for spec in args.specs]
    except ValueError as error:  # e.g. a window beyond the model's layers
        print(f"{LOOPING_PROG}: error: {error}", file=sys.stderr)
        return 2
    test = load_gsm8k().test
    if args.examples > len(test):
        print(f"{LOOPING_PROG}: error: --examples {args.examples} > {len(test)} test questions", file=sys.stderr)
        return 2
    examples = [encode_example(tokenizer, e) for e in test[: args.examples]]
    total_tokens = sum(len(e.input_ids) - e.answer_start for e in examples)

    a, b = args.window
    print(f"model: {args.model} ({origin['weights']}), loaded in {loaded:.1f}s")
    print(
        f"window [{a}, {b}] of {model.config.num_hidden_layers} layers, {args.mode} mode"
        + (f", halt_tau {args.halt_tau:g} (per row)" if args.halt_tau is not None else "")
        + f"; {len(examples)} GSM8K test questions, {total_tokens} gold-answer tokens"
        + f"; {torch.get_num_threads()} threads"
    )
    print(f"{'strategy':<16}{'K':>3}{'nll/token':>11}  {'95% CI':<18}{'loops':>7}{'s/example':>11}")
    for spec, looped in zip(args.specs, wrappers, strict=True):
        with tqdm(total=len(examples), desc=spec.id, leave=False, file=sys.stderr) as bar:
            start = time.perf_counter()
            nll, tokens, loops = score_looped(looped, examples, args.batch_size, bar)
            seconds = (time.perf_counter() - start) / len(examples)
        low, high = ratio_ci(nll, tokens, args.resamples, 0.95, args.seed)
        print(
            f"{spec.strategy:<16}{spec.loops:>3}{nll.sum() / tokens.sum():>11.4f}  "
            f"[{low:.4f}, {high:.4f}]  {loops.mean():>5.2f}{seconds:>11.3f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
