"""What a LoopFormer config's study costs in FLOPs: the README's estimate, computed.

    python -m study.cost_estimate --version v17

Every forward is counted with the LoopFormer entry's ``token_flops`` (the blocks' weight
matmuls, causal attention and the tied LM head; norms, activations and the adaLN
conditioning are left out) on GSM8K's mean token counts under the vendored GPT-2 BPE
(the released checkpoint's vocabulary), at the released shape (``--shape``):

- SFT: per SFT model (every training depth and replicate seed), ``epochs x sft_examples``
  sequences (prompt + solution + EOS, cut at ``max_length``) at its training depth;
  forward and backward = 3 forwards, the head on every position;
- the NLL depth grid: every model x (test + heldout + seen slices) x every depth of
  ``nll.inference_loops``, the head on the scored (answer) tokens only, as the scorer;
- the schedule sweep: every model x test slice x every schedule of ``schedules.loops``
  steps (each runs that many loops);
- exact match: every model x ``em_examples`` x its depths, a prefill and
  ``max_new_tokens`` cached decoding steps (an upper bound: early stops end sooner);
- latency: every model x its depths x (warmup + samples) x (a generation of
  ``new_tokens`` and a separate prefill).

Sums of FLOPs are exact arithmetic on those counts; what a GPU makes of them (memory-bound
decoding, kernel overheads) is not in them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from study.config import ConfigError, StudyConfig, load_config
from study.looping.schedules import enumerate_schedules
from study.models.entries.loopformer import block_matmul_flops
from study.models.loopformer import LoopFormerConfig
from study.tasks.gsm8k import encode_example, load_gsm8k

# the released checkpoint (armenjeddi/LoopFormer-3block-8iterations), as study.bench builds it
RELEASED_SHAPE = LoopFormerConfig(n_embd=2048, n_head=32, n_layer=3, intermediate_dim=5120, vocab_size=50304)
PETA = 1e15


@dataclass(frozen=True)
class TokenCounts:
    """Mean token counts of one GSM8K example (prompt, gold answer, SFT sequence)."""

    prompt: float  # "Question: ...\nAnswer:"
    answer: float  # the scored continuation: solution and final answer
    sft: float  # prompt + answer + EOS, cut at sft.max_length

    @property
    def sequence(self) -> float:
        return self.prompt + self.answer


def sequence_flops(shape: LoopFormerConfig, loops: int, length: float, scored: float) -> float:
    """Forward FLOPs of one causal sequence of ``length`` tokens at ``loops`` loops, the LM
    head on ``scored`` positions: position p attends to p keys, so attention sums
    4 d L (L + 1) / 2 per block."""
    blocks = loops * shape.n_layer
    attention = 4 * shape.n_embd * length * (length + 1) / 2
    return blocks * (length * block_matmul_flops(shape) + attention) + 2 * shape.n_embd * shape.vocab_size * scored


def generation_flops(shape: LoopFormerConfig, loops: int, prompt: float, new_tokens: int) -> float:
    """A prefill (head on its last position) and ``new_tokens - 1`` cached decoding steps,
    step j attending to prompt + j keys."""
    decode = sum(sequence_flops(shape, loops, 1, 1) + loops * shape.n_layer * 4 * shape.n_embd * (prompt + j)
                 for j in range(1, new_tokens))  # fmt: skip
    return sequence_flops(shape, loops, prompt, 1) + decode


def study_flops(config: StudyConfig, shape: LoopFormerConfig, counts: TokenCounts) -> dict[str, float]:
    """FLOPs of each part of a LoopFormer study (see the module docstring)."""
    sft_models = config.sft_models()
    data, models = config.data, 1 + len(sft_models)  # the base and every SFT model (each replicate)
    slices = data.nll_test_examples + data.nll_heldout_examples + data.nll_seen_examples

    def scored(loops: int) -> float:  # one gold answer scored at ``loops``
        return sequence_flops(shape, loops, counts.sequence, counts.answer)

    def generated(loops: int, new_tokens: int) -> float:
        return generation_flops(shape, loops, counts.prompt, new_tokens)

    schedules = 0.0
    if config.schedules is not None:
        count = len(enumerate_schedules(config.schedules.loops, config.schedules.granularity))
        schedules = models * data.nll_test_examples * count * scored(config.schedules.loops)
    latency = config.latency
    prefill = [sequence_flops(shape, k, counts.prompt, 1) for k in latency.inference_loops]
    sft_sequences = config.sft.epochs * data.sft_examples
    return {
        "sft": sum(
            3 * sft_sequences * sequence_flops(shape, m.train_loops, counts.sft, counts.sft) for m in sft_models
        ),
        "nll_depth_grid": models * slices * sum(scored(k) for k in config.nll.inference_loops),
        "schedules": schedules,
        "exact_match": models
        * data.em_examples
        * sum(generated(k, config.exact_match.max_new_tokens) for k in config.exact_match.inference_loops),
        "latency": models
        * (latency.warmup + latency.samples)
        * sum(generated(k, latency.new_tokens) + p for k, p in zip(latency.inference_loops, prefill, strict=True)),
    }


def gsm8k_token_counts(tokenizer, max_length: int) -> TokenCounts:
    """Means over the bundled GSM8K (train and test) under ``tokenizer``."""
    examples = [encode_example(tokenizer, e) for split in (load_gsm8k().train, load_gsm8k().test) for e in split]
    prompt = np.array([e.answer_start for e in examples], dtype=float)
    total = np.array([len(e.input_ids) for e in examples], dtype=float)
    sft = np.minimum(total + 1, max_length)  # + EOS, as the SFT stage appends it
    return TokenCounts(prompt=float(prompt.mean()), answer=float((total - prompt).mean()), sft=float(sft.mean()))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m study.cost_estimate", description=__doc__.splitlines()[0])
    parser.add_argument("--version", default="v17", help="a LoopFormer config")
    parser.add_argument("--tflops", type=float, default=6.5, help="sustained TFLOP/s (80%% of a T4's fp32 peak)")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.version)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if config.looping is not None:
        print(
            f"error: --version {args.version}: a looped-decoder config (this estimate is LoopFormer's)", file=sys.stderr
        )
        return 2
    from study.tokenizer import load_tokenizer

    counts = gsm8k_token_counts(load_tokenizer(None), config.sft.max_length)
    parts = study_flops(config, RELEASED_SHAPE, counts)
    total = sum(parts.values())
    print(f"{args.version}: GSM8K mean tokens: prompt {counts.prompt:.1f}, answer {counts.answer:.1f}, "
          f"SFT sequence {counts.sft:.1f}")  # fmt: skip
    for name, flops in parts.items():
        print(f"  {name:<15}{flops / PETA:8.2f} PFLOP")
    minutes = total / (args.tflops * 1e12) / 60
    print(f"  {'total':<15}{total / PETA:8.2f} PFLOP = {minutes:.0f} GPU-minutes at {args.tflops:g} TFLOP/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
