"""What one SFT step of a looped decoder costs: seconds and peak memory at a training K.

One step (``sft_step``; ``study.bench`` times the same) = forward through
``loop_decoder(model, spec)`` at K, the completion-only loss the SFT stage computes
(``study.models.entries.looped_decoder.looped_sft_trainer``), backward through every
pass, and one AdamW update, on single GSM8K train examples (batch 1, as the configs
train). Each K runs in its own process so the peak resident memory it reports
is its own::

    python -m study.sft_cost --version smol --loops 2 --steps 4
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import set_seed

from study.config import load_config
from study.models.backbones import PolicyRunner, bind
from study.pipeline import RunContext, configure_torch, resolve_device
from study.tasks.gsm8k import Example

IGNORE_INDEX = -100  # the prompt's labels: the loss is on the completion only


def encode_sft(tokenizer, example: Example, max_length: int) -> tuple[Tensor, Tensor]:
    """(input_ids, labels) [1, T] of one SFT example: prompt + completion + EOS, cut at
    ``max_length``, the prompt's labels ignored (trl's completion-only collator)."""
    prompt = tokenizer.encode(example.prompt, add_special_tokens=False)
    completion = [*tokenizer.encode(example.completion, add_special_tokens=False), tokenizer.eos_token_id]
    ids = torch.tensor([(prompt + completion)[:max_length]])
    labels = torch.tensor([([IGNORE_INDEX] * len(prompt) + completion)[:max_length]])
    return ids, labels


def sft_step(runner: PolicyRunner, ids: Tensor, labels: Tensor, optimizer: torch.optim.Optimizer) -> float:
    """One training step as the looped SFT trainer takes it: the forward at the runner's
    depth (``hidden`` [1, T, H]), the completion-only loss with the LM head on the scored
    positions only, backward through every pass, one optimizer update. Returns the loss."""
    hidden, _ = runner.hidden(ids)  # [1, T, H]
    scored = labels[:, 1:] != IGNORE_INDEX
    loss = F.cross_entropy(runner.head(hidden[:, :-1][scored]).float(), labels[:, 1:][scored])
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Seconds and peak memory of one looped-decoder SFT step.")
    parser.add_argument("--version", default="smol")
    parser.add_argument("--loops", type=int, required=True, help="the training K")
    parser.add_argument("--steps", type=int, default=4, help="timed steps (after one untimed warm-up step)")
    parser.add_argument("--run-dir", type=Path, default=Path("runs/pilot-smol"), help="where the base is prepared")
    args = parser.parse_args(argv)
    config = load_config(args.version)
    configure_torch(config)
    ctx = RunContext(config=config, run_dir=args.run_dir, device=resolve_device(config.device))
    set_seed(config.seed)  # python, numpy and torch, as the SFT stage's Trainer seeds them
    tokenizer, model = ctx.load_tokenizer(), ctx.load_model(ctx.base_spec).train()
    runner = bind(model, ctx.loop_family.policy(args.loops))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.sft.learning_rate)
    examples = ctx.sft_examples(config.replicates[0])[: args.steps + 1]
    seconds, lengths = [], []
    for index, example in enumerate(examples):
        ids, labels = encode_sft(tokenizer, example, config.sft.max_length)
        start = time.perf_counter()
        sft_step(runner, ids, labels, optimizer)
        if index > 0:  # the first step allocates the optimizer state: not timed
            seconds.append(time.perf_counter() - start)
            lengths.append(ids.shape[1])
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    result = {
        "version": args.version, "loops": args.loops, "policy": ctx.loop_family.policy(args.loops).id,
        "threads": torch.get_num_threads(), "steps": len(seconds), "median_s": statistics.median(seconds),
        "seconds": [round(s, 3) for s in seconds], "tokens": lengths, "peak_rss_mib": round(peak_mib),
    }  # fmt: skip
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
