"""Pilots: what to loop and how to train, tried before a study.

``python -m study.pilot`` (a looped-decoder config's window and strategy) scores the
gold-answer NLL (``study.scoring``, the NLL stage's own scorer) of the base at every
(window, strategy, K) on GSM8K *train* questions that are outside the config's SFT
subset (so also outside its train diagnostics), and prints NLL per token with a
bootstrap CI, the executed loops and seconds per example. It reads no test question;
whether a window was chosen blind to test data depends on what else was run before it
(the README says so for smol's 12-15, which the ``looping`` tool below had scored on test
questions first)::

    python -m study.pilot --version smol --examples 16 --windows 8-11 12-15 16-19 \\
        --strategies euler naive --loops 1 2 4 --out runs/pilot-smol.csv

``python -m study.pilot looping`` (once ``python -m study.looping``) is training-free
looping on a pretrained SmolLM2, without a config: the gold-answer NLL of the first
``--examples`` GSM8K *test* questions per strategy and loop count (so anything chosen
after looking at it was not chosen on held-out data only)::

    python -m study.pilot looping --model smollm2 --window 12 15 --loops 1 2 3 4 \\
        --strategy euler naive --examples 50

For every (strategy, K): the token-weighted NLL of the gold GSM8K solutions
(``Question: {q}\\nAnswer:`` then the solution, teacher-forced, no BOS; sum of NLL over
sum of tokens), a seeded percentile bootstrap 95% CI over examples, the mean executed
loops, and seconds per example.

``python -m study.pilot lr`` chooses the SFT learning rate: a short
SFT per (learning rate, training depth) with the SFT stage's trainer, scored on the heldout
train questions (never test)::

    python -m study.pilot lr --version smol --lrs 1e-5,2e-5,5e-5 --steps 100
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

from study.config import ConfigError, StudyConfig, load_config
from study.io import atomic_write_csv, atomic_write_json, read_json
from study.looping.policies import WindowFamily
from study.looping.spec import LoopSpec
from study.looping.strategies import STRATEGIES
from study.models.backbones import bind
from study.pipeline import RunContext, StudyError, configure_torch, resolve_device
from study.scoring import gold_token_nll, length_batches, right_pad, score_continuations
from study.stages.sweep import progress
from study.stats import NO_CI, ci_cells, ratio_ci, ratio_of_sums
from study.tasks.gsm8k import EncodedExample, Example, encode_example, load_gsm8k

COLUMNS = ("window", "strategy", "loops", "policy", "examples", "nll_per_token", "ci_low", "ci_high",
           "executed_loops", "seconds_per_example")  # fmt: skip


def ci_text(low: float | str, high: float | str) -> str:
    """A CI as the pilots print it: ``[low, high]``, or ``no CI (n < 2)`` (``ci_cells``' empty cells)."""
    return NO_CI if low == "" or high == "" else f"[{low:.4f}, {high:.4f}]"


def pilot_examples(ctx: RunContext, count: int):
    """``count`` train-split questions outside every SFT subset, drawn with the config's seed."""
    train = ctx.dataset.split("train")
    used = ctx.subsets.sft_union
    pool = [i for i in range(len(train)) if i not in used]
    chosen = np.random.default_rng(ctx.config.seed + 1).choice(pool, size=count, replace=False)
    return [train[int(i)] for i in sorted(chosen)]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m study.pilot [looping|lr] ...``: the first word picks the tool."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["looping"]:
        return looping_main(argv[1:])
    if argv[:1] == ["lr"]:
        return lr_main(argv[1:])
    return window_main(argv)


# ---- window pilot of a looped-decoder config (train questions) --------------------------


def window_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m study.pilot",
        description="Choose a looped decoder's window and strategy on train data.",
        epilog="python -m study.pilot looping --help: training-free looping of SmolLM2 (no config); "
        "python -m study.pilot lr --help: the SFT learning rate, on held-out train questions.",
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
        low, high = ci_cells(*ratio_ci(nll, tokens, 2000, 0.95, config.seed))  # empty for one example
        row = {
            "window": f"{window[0]}-{window[1]}", "strategy": strategy, "loops": loops, "policy": policy.id,
            "examples": len(scores), "nll_per_token": float(ratio_of_sums(nll, tokens)), "ci_low": low,
            "ci_high": high, "executed_loops": float(np.mean([s.executed_loops for s in scores])),
            "seconds_per_example": seconds,
        }  # fmt: skip
        rows.append(row)
        print(
            f"{row['policy']:<24} NLL {row['nll_per_token']:.4f} {ci_text(low, high)}  "
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
        low, high = ci_cells(*ratio_ci(nll, tokens, args.resamples, 0.95, args.seed))
        print(
            f"{spec.strategy:<16}{spec.loops:>3}{nll.sum() / tokens.sum():>11.4f}  "
            f"{ci_text(low, high):<18}{loops.mean():>5.2f}{seconds:>11.3f}",
            flush=True,
        )
    return 0


# ---- the learning-rate pilot (python -m study.pilot lr) --------------------------------
#
# The learning-rate pilot: ``python -m study.pilot lr``.
#
# For each learning rate of ``--lrs``, a short SFT of the base at every training depth of
# the config's ``sft.train_loops`` (the SFT stage's own trainer, ``study.stages.sft.
# build_trainer``: the same SFT subset, collator, completion-only loss, seeds and
# callbacks; only the learning rate and the number of optimizer steps, ``--steps``,
# differ), then the gold-answer NLL of the trained model at its training depth (the NLL
# stage's scorer, ``study.scoring.score_continuations``) on the run's heldout slice
# (``data.nll_heldout_examples`` GSM8K *train* questions that no SFT subset contains, the
# calibration set for anything tuned; no test question is read)::
#
#     python -m study.pilot lr --version smol --lrs 1e-5,2e-5,5e-5 --steps 100
#
# Writes ``lr_pilot.csv`` (per lr and training depth: held-out NLL per token with its
# bootstrap CI, the last logged training loss) and ``lr_pilot_loss.csv`` (every logged
# step's loss) under ``--run-dir``, and prints the chosen learning rate (the lowest mean
# held-out NLL over the training depths) and whether the training depths rank the same
# at every learning rate: the check that a conclusion does not hinge on one value.
# Nothing is saved but those files (no checkpoints, no models); a rerun skips the
# (lr, depth) pairs already in ``cells/``.

LR_PROG = "python -m study.pilot lr"
LR_COLUMNS = (
    "lr", "train_loops", "policy", "steps", "examples", "tokens", "nll_per_token", "ci_low", "ci_high",
    "final_train_loss",
)  # fmt: skip
LOSS_COLUMNS = ("lr", "train_loops", "step", "loss")


def parse_lrs(text: str) -> list[float]:
    """``1e-5,2e-5`` -> [1e-05, 2e-05]: positive, finite, distinct."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--lrs {text!r}: expected comma-separated numbers such as 1e-5,2e-5,5e-5") from None
    if not values or any(not np.isfinite(v) or v <= 0 for v in values) or len(set(values)) != len(values):
        raise ValueError(f"--lrs {text!r}: expected distinct positive learning rates")
    return values


def with_learning_rate(config: StudyConfig, lr: float) -> StudyConfig:
    return config.model_copy(update={"sft": config.sft.model_copy(update={"learning_rate": lr})})


def train_and_score(
    ctx: RunContext, train_loops: int, steps: int, examples: list[Example], batch_size: int, resamples: int
) -> dict:
    """One short SFT at ``train_loops`` with the SFT stage's trainer, scored on ``examples``."""
    from transformers.trainer_utils import SaveStrategy

    from study.stages.sft import build_trainer

    trainer = build_trainer(ctx, ctx.sft_spec(train_loops))  # the first replicate's seed and SFT subset
    trainer.args.max_steps = steps  # overrides the epochs: the same number of updates at every lr
    trainer.args.save_strategy = SaveStrategy.NO  # a pilot keeps no checkpoints
    trainer.train()
    losses = [(int(e["step"]), float(e["loss"])) for e in trainer.state.log_history if "loss" in e]
    model = trainer.model
    if ctx.config.sft.lora is not None:
        model = model.merge_and_unload()
    model.eval()
    policy = ctx.loop_family.policy(train_loops)
    encoded = [encode_example(trainer.processing_class, e) for e in examples]
    scores = score_continuations(bind(model, policy), encoded, batch_size)
    nll = np.array([s.nll_sum for s in scores])
    tokens = np.array([s.answer_tokens for s in scores])
    low, high = ci_cells(*ratio_ci(nll, tokens, resamples, 0.95, ctx.config.seed, what="lr pilot: bootstrap CI"))
    return {
        "lr": ctx.config.sft.learning_rate,
        "train_loops": train_loops,
        "policy": policy.id,
        "steps": steps,
        "examples": len(scores),
        "example_ids": [e.id for e in examples],
        "tokens": int(tokens.sum()),
        "nll_per_token": float(ratio_of_sums(nll, tokens)),
        "ci_low": low,
        "ci_high": high,
        "final_train_loss": losses[-1][1] if losses else "",
        "losses": losses,
    }


def summarize(rows: list[dict]) -> tuple[float, bool, dict[float, list[int]]]:
    """(the chosen lr: lowest mean held-out NLL over the training depths; whether every lr
    ranks the training depths the same; each lr's ranking, best first)."""
    lrs = list(dict.fromkeys(r["lr"] for r in rows))
    mean = {lr: float(np.mean([r["nll_per_token"] for r in rows if r["lr"] == lr])) for lr in lrs}
    rankings = {
        lr: [r["train_loops"] for r in sorted((r for r in rows if r["lr"] == lr), key=lambda r: r["nll_per_token"])]
        for lr in lrs
    }
    chosen = min(lrs, key=lambda lr: mean[lr])
    return chosen, len({tuple(v) for v in rankings.values()}) == 1, rankings


def parse_lr_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = OneLineParser(prog=LR_PROG, description="Choose the SFT learning rate on held-out train questions.")
    parser.add_argument("--version", default="smol", help="a config (its base, SFT subset, training depths, seed)")
    parser.add_argument("--lrs", default="1e-5,2e-5,5e-5", help="comma-separated learning rates")
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps per (lr, training depth)")
    parser.add_argument("--examples", type=int, default=None, help="the first N heldout questions (default: all)")
    parser.add_argument("--batch-size", type=int, default=4, help="scoring batch size")
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples")
    parser.add_argument("--run-dir", type=Path, default=None, help="default: runs/pilot-lr-<version>")
    args = parser.parse_args(argv)
    for name in ("steps", "examples", "batch_size", "resamples"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    try:
        args.lr_values = parse_lrs(args.lrs)
    except ValueError as error:
        parser.error(str(error))
    return args


def cached_cell(path: Path, steps: int, example_ids: list[int]) -> dict | None:
    """A finished (lr, depth) pair of an earlier invocation with the same steps and questions."""
    try:
        cell = read_json(path)
        return cell if cell["steps"] == steps and cell["example_ids"] == example_ids else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def lr_main(argv: Sequence[str] | None = None) -> int:
    args = parse_lr_args(argv)
    try:
        config = load_config(args.version)
    except ConfigError as error:
        print(f"{LR_PROG}: error: {error}", file=sys.stderr)
        return 2
    configure_torch(config)
    run_dir = args.run_dir or Path("runs") / f"pilot-lr-{config.name}"
    device = resolve_device(config.device)
    # the run's heldout slice: train questions no SFT subset contains, the calibration set for what is tuned
    examples = RunContext(config=config, run_dir=run_dir, device=device).examples("nll_heldout")
    if args.examples is not None:
        if args.examples > len(examples):
            print(f"{LR_PROG}: error: --examples {args.examples} > data.nll_heldout_examples ({len(examples)})",
                  file=sys.stderr)  # fmt: skip
            return 2
        examples = examples[: args.examples]
    ids = [e.id for e in examples]
    print(f"lr pilot: {config.name}, {len(examples)} heldout train questions (outside every SFT subset), "
          f"{args.steps} optimizer steps per model, depths {config.sft.train_loops}", flush=True)  # fmt: skip
    rows = []
    try:
        for lr in args.lr_values:
            ctx = RunContext(config=with_learning_rate(config, lr), run_dir=run_dir, device=device)
            for train_loops in config.sft.train_loops:
                path = run_dir / "cells" / f"lr{lr:g}-train{train_loops}.json"
                cell = cached_cell(path, args.steps, ids)
                if cell is None:
                    cell = train_and_score(ctx, train_loops, args.steps, examples, args.batch_size, args.resamples)
                    atomic_write_json(path, cell)
                rows.append(cell)
                ci = ci_text(cell["ci_low"], cell["ci_high"])
                print(f"lr {lr:g} train{train_loops}: held-out NLL {cell['nll_per_token']:.4f} {ci}, "
                      f"final train loss {cell['final_train_loss']}", flush=True)  # fmt: skip
    except StudyError as error:
        print(f"{LR_PROG}: error: {error}", file=sys.stderr)
        return 2
    atomic_write_csv(run_dir / "lr_pilot.csv", [{k: r[k] for k in LR_COLUMNS} for r in rows], LR_COLUMNS)
    losses = [
        {"lr": r["lr"], "train_loops": r["train_loops"], "step": s, "loss": v} for r in rows for s, v in r["losses"]
    ]
    atomic_write_csv(run_dir / "lr_pilot_loss.csv", losses, LOSS_COLUMNS)
    chosen, same, rankings = summarize(rows)
    print(f"chosen lr: {chosen:g} (lowest mean held-out NLL over training depths {config.sft.train_loops})")
    ranked = "; ".join(f"lr {lr:g}: {' < '.join(f'train{k}' for k in order)}" for lr, order in rankings.items())
    print(f"training depths by held-out NLL: {ranked}")
    print("same ordering at every lr: " + ("yes" if same else "no: the conclusion depends on the learning rate"))
    print(f"table: {run_dir / 'lr_pilot.csv'}; loss curves: {run_dir / 'lr_pilot_loss.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
