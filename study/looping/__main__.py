"""Training-free looping on a pretrained decoder: gold-answer NLL on GSM8K per strategy and loop count.

    python -m study.looping --model smollm2 --window 12 15 --loops 1 2 3 4 --strategy euler naive --examples 50

For every (strategy, K): the token-weighted NLL of the gold GSM8K solutions
(``Question: {q}\\nAnswer:`` then the solution, teacher-forced, no BOS; sum of NLL over
sum of tokens) on the first ``--examples`` test questions, a seeded percentile
bootstrap 95% CI over examples, the mean executed loops, and seconds per example.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import NoReturn

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from study.looping.spec import LoopSpec
from study.looping.strategies import STRATEGIES
from study.scoring import length_batches
from study.stats import ratio_ci
from study.tasks.gsm8k import EncodedExample, encode_example, load_gsm8k

MODELS = ("smollm2", "HuggingFaceTB/SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M")


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse prints usage too; one line is enough
        self.exit(2, f"{self.prog}: error: {message}\n")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = OneLineParser(prog="python -m study.looping", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2", choices=MODELS, help="smollm2 = the offline GGUF")
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
def score(
    looped, examples: list[EncodedExample], batch_size: int, progress: tqdm | None = None
) -> tuple[np.ndarray, ...]:
    """Per example: summed NLL of the gold solution, its token count, and executed loops.

    Rows are right-padded and the padding masked, so per-row halting never sees it."""
    nll, tokens, loops = np.zeros(len(examples)), np.zeros(len(examples)), np.zeros(len(examples))
    for batch in length_batches([len(e.input_ids) for e in examples], batch_size):
        rows = [examples[i] for i in batch]
        width = max(len(e.input_ids) for e in rows) - 1  # the last token only ever is a target
        input_ids = torch.zeros((len(rows), width), dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, e in enumerate(rows):
            input_ids[r, : len(e.input_ids) - 1] = torch.tensor(e.input_ids[:-1])
            attention_mask[r, : len(e.input_ids) - 1] = 1
        out = looped.base_forward(input_ids, attention_mask=attention_mask)
        # token t (t >= answer_start) is predicted by the hidden state at t - 1
        counts = [len(e.input_ids) - e.answer_start for e in rows]
        row_index = torch.cat([torch.full((c,), r) for r, c in enumerate(counts)])
        positions = torch.cat([torch.arange(e.answer_start - 1, len(e.input_ids) - 1) for e in rows])
        targets = torch.cat([torch.tensor(e.input_ids[e.answer_start :]) for e in rows])
        logits = looped.model.lm_head(out.last_hidden_state[row_index, positions])  # [tokens, V]
        token_nll = F.cross_entropy(logits.float(), targets, reduction="none").double()
        for i, part, executed in zip(batch, token_nll.split(counts), out.executed_loops.tolist(), strict=True):
            nll[i], tokens[i], loops[i] = float(part.sum()), len(part), executed
        if progress is not None:
            progress.update(len(rows))
    return nll, tokens, loops


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
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
        print(f"python -m study.looping: error: {error}", file=sys.stderr)
        return 2
    test = load_gsm8k().test
    if args.examples > len(test):
        print(
            f"python -m study.looping: error: --examples {args.examples} > {len(test)} test questions", file=sys.stderr
        )
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
        with tqdm(total=len(examples), desc=spec.id, leave=False, file=sys.stderr) as progress:
            start = time.perf_counter()
            nll, tokens, loops = score(looped, examples, args.batch_size, progress)
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
