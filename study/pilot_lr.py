"""The learning-rate pilot: ``python -m study.pilot lr``.

For each learning rate of ``--lrs``, a short SFT of the base at every training depth of
the config's ``sft.train_loops`` (the SFT stage's own trainer, ``study.stages.sft.
build_trainer``: the same SFT subset, collator, completion-only loss, seeds and
callbacks; only the learning rate and the number of optimizer steps, ``--steps``,
differ), then the gold-answer NLL of the trained model at its training depth (the NLL
stage's scorer, ``study.scoring.score_continuations``) on GSM8K *train* questions that
are outside the SFT subset (``study.pilot.pilot_examples``: a held-out slice; no test
question is read)::

    python -m study.pilot lr --version smol --lrs 1e-5,2e-5,5e-5 --steps 100

Writes ``lr_pilot.csv`` (per lr and training depth: held-out NLL per token with its
bootstrap CI, the last logged training loss) and ``lr_pilot_loss.csv`` (every logged
step's loss) under ``--run-dir``, and prints the chosen learning rate (the lowest mean
held-out NLL over the training depths) and whether the training depths rank the same
at every learning rate: the check that a conclusion does not hinge on one value.
Nothing is saved but those files (no checkpoints, no models); a rerun skips the
(lr, depth) pairs already in ``cells/``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from study.config import ConfigError, StudyConfig, load_config
from study.io import atomic_write_csv, atomic_write_json, read_json
from study.models.backbones import bind
from study.pilot import OneLineParser, ci_text, pilot_examples
from study.pipeline import RunContext, StudyError, configure_torch, resolve_device
from study.scoring import score_continuations
from study.stats import ci_cells, ratio_ci, ratio_of_sums
from study.tasks.gsm8k import Example, encode_example

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

    trainer = build_trainer(ctx, train_loops)
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
    parser.add_argument("--examples", type=int, default=100, help="held-out train questions scored")
    parser.add_argument("--batch-size", type=int, default=4, help="scoring batch size")
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples")
    parser.add_argument("--run-dir", type=Path, default=None, help="default: runs/pilot-lr-<version>")
    args = parser.parse_args(argv)
    for name in ("steps", "examples", "batch_size", "resamples"):
        if getattr(args, name) < 1:
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
    try:
        examples = pilot_examples(RunContext(config=config, run_dir=run_dir, device=device), args.examples)
    except ValueError:  # numpy: more questions asked than the train split has outside the SFT subset
        print(f"{LR_PROG}: error: --examples {args.examples}: too few train questions outside the SFT subset",
              file=sys.stderr)  # fmt: skip
        return 2
    ids = [e.id for e in examples]
    print(f"lr pilot: {config.name}, {len(examples)} held-out train questions (outside the SFT subset), "
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
