"""Micro-benchmark of the sweep machinery, all measured in one process.

    python -m study.bench [--model DIR] [--out bench.json]

(a) ``decode_cached_vs_recompute``: greedy decoding with the KV cache vs re-running
    the whole sequence every step (the authors' generate), batch 1, ``--new-tokens``
    at ``--loops`` loops. Target >= 8x.
(b) ``nll_batched_vs_single``: the NLL scorer (``study.stages.nll.score_continuations``)
    on the first ``--nll-examples`` GSM8K test examples, batched and length-sorted
    vs one example at a time. Target >= 5x.
(c) ``nll_roofline_fraction``: useful GFLOP/s of the batched NLL run (non-pad tokens
    only; FLOPs from ``study.stages.latency.token_flops`` with causal attention) over the
    GFLOP/s of one large fp32 matmul measured in the same run. Target >= 50%.

The model is ``--model``, else the embedded mini base (``study/assets/mini-base``)
when it exists, else a *random* LoopFormer of the mini shape with a byte-level BPE
trained on the fly (printed as such): timings depend on shapes, not on weights.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from study.io import atomic_write_json
from study.models.generation import greedy_generate, recompute_generate
from study.models.loopformer import LoopFormerConfig, LoopFormerForCausalLM
from study.pipeline import EMBEDDED_DIR
from study.stages.latency import block_matmul_flops, device_name, synchronize
from study.stages.nll import fit_to_window, score_continuations
from study.tasks.gsm8k import encode_example, load_gsm8k
from study.tokenizer import has_tokenizer, load_tokenizer

EOS = "<|endoftext|>"
# the shape of the embedded mini base, for the random stand-in
MINI_SHAPE = {"n_embd": 128, "n_head": 4, "n_layer": 3, "intermediate_dim": 320, "vocab_size": 2048}


def random_mini(block_size: int = 512, seed: int = 0) -> tuple[LoopFormerForCausalLM, object]:
    """A random mini-shaped LoopFormer and a 2048-token byte-level BPE trained on GSM8K
    train text, so sequence lengths are those a small-vocabulary model really sees."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=MINI_SHAPE["vocab_size"],
        special_tokens=[EOS],  # id 0: EOS and padding
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([e.prompt + e.completion for e in load_gsm8k().train[:2000]], trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=EOS, pad_token=EOS)
    torch.manual_seed(seed)
    config = LoopFormerConfig(
        block_size=block_size, train_loops=8, bos_token_id=0, eos_token_id=0, pad_token_id=0, **MINI_SHAPE
    )
    model = LoopFormerForCausalLM(config)
    with torch.no_grad():  # adaLN-zero would make every loop the identity; timings do not care, outputs do
        for block in model.gpt.transformer.h.blocks:
            block.adaLN_modulation[1].weight.normal_(0.0, 0.02)
    return model.eval(), tokenizer


def load_model(path: str | None, force_random: bool) -> tuple[LoopFormerForCausalLM, object, str]:
    if path is None and not force_random and (EMBEDDED_DIR / "config.json").is_file():
        path = str(EMBEDDED_DIR)
    if path is None:
        print("note: no --model and no study/assets/mini-base yet: using a RANDOM LoopFormer of the mini shape")
        model, tokenizer = random_mini()
        return model, tokenizer, f"random mini-shaped LoopFormer {MINI_SHAPE}"
    model = LoopFormerForCausalLM.from_pretrained(path).eval()
    tokenizer = load_tokenizer(path if has_tokenizer(Path(path)) else None)
    return model, tokenizer, path


def best_time(fn: Callable[[], object], repeats: int, device: torch.device) -> tuple[float, object]:
    """Fastest of ``repeats`` runs (the least disturbed by other processes) and its output."""
    times, output = [], None
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        output = fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return min(times), output


def nll_flops(config, loops: int, lengths: list[int], scored: list[int]) -> float:
    """Useful forward FLOPs of feeding sequences of ``lengths`` (pad excluded): block
    matmuls on every token, causal attention (token p attends p keys), the LM head
    on the ``scored`` positions only (the scorer never runs it elsewhere)."""
    d, blocks = config.n_embd, loops * config.n_layer
    total = 0.0
    for length, count in zip(lengths, scored, strict=True):
        total += blocks * (length * block_matmul_flops(config) + 4 * d * length * (length + 1) / 2)
        total += 2 * d * config.vocab_size * count
    return total


def matmul_gflops(size: int, repeats: int, device: torch.device) -> float:
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    a @ b  # warm-up
    seconds, _ = best_time(lambda: a @ b, repeats, device)
    return 2 * size**3 / seconds / 1e9


def run_bench(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.nll_batch_size is None:
        args.nll_batch_size = 32 if device.type == "cuda" else 8
    model, tokenizer, source = load_model(args.model, args.random)
    model.to(device)
    config = model.config
    test = load_gsm8k().test
    print(f"model: {source} | device {device_name(device)} | torch threads {torch.get_num_threads()}")

    # (a) decoding: cached vs recompute, batch 1, no early stop (equal token work)
    prompt = test[0].prompt
    prompt_tokens = len(tokenizer.encode(prompt, add_special_tokens=False))
    new_tokens = min(args.new_tokens, config.block_size - prompt_tokens + 1)

    def decode(generate):
        return generate(model, tokenizer, [prompt], new_tokens, num_loops=args.loops, early_stop=False)[0]

    decode(greedy_generate)  # warm-up
    cached_s, cached = best_time(lambda: decode(greedy_generate), args.repeats, device)
    recompute_s, recomputed = best_time(lambda: decode(recompute_generate), 1, device)
    decode_ratio = recompute_s / cached_s
    print(
        f"(a) decode {new_tokens} tokens after a {prompt_tokens}-token prompt at {args.loops} loops: "
        f"recompute {recompute_s:.3f}s / cached {cached_s:.3f}s = {decode_ratio:.1f}x (target >= 8x)"
    )

    # (b) NLL: batched and length-sorted vs one example at a time
    encoded = [fit_to_window(encode_example(tokenizer, e), config.block_size) for e in test[: args.nll_examples]]

    def score(batch_size: int):
        return score_continuations(model, encoded, batch_size, num_loops=args.loops)

    score(args.nll_batch_size)  # warm-up
    batched_s, batched = best_time(lambda: score(args.nll_batch_size), args.repeats, device)
    single_s, single = best_time(lambda: score(1), 1, device)
    nll_ratio = single_s / batched_s
    max_diff = max(abs(a.nll_sum - b.nll_sum) for a, b in zip(batched, single, strict=True))
    lengths = [len(e.input_ids) for e in encoded]
    print(
        f"(b) NLL of {len(encoded)} GSM8K test examples ({sum(lengths)} tokens) at {args.loops} loops: "
        f"one at a time {single_s:.3f}s / batch {args.nll_batch_size} {batched_s:.3f}s = {nll_ratio:.1f}x "
        f"(target >= 5x; max |batched - single| nll_sum {max_diff:.2e})"
    )

    # (c) useful GFLOP/s of the batched NLL run vs a large fp32 matmul
    fed = [length - 1 for length in lengths]  # the last token is only a target: the scorer never feeds it
    useful = nll_flops(config, args.loops, fed, [len(e.input_ids) - e.answer_start for e in encoded])
    nll_gflops = useful / batched_s / 1e9
    peak = matmul_gflops(args.matmul_size, args.repeats, device)
    fraction = nll_gflops / peak
    print(
        f"(c) batched NLL {useful / 1e9:.2f} GFLOP in {batched_s:.3f}s = {nll_gflops:.1f} GFLOP/s; "
        f"fp32 matmul {args.matmul_size}^3 = {peak:.1f} GFLOP/s; fraction {fraction:.1%} (target >= 50%)"
    )

    return {
        "decode_cached_vs_recompute": decode_ratio,
        "nll_batched_vs_single": nll_ratio,
        "nll_roofline_fraction": fraction,
        "details": {
            "model": source,
            "config": {k: getattr(config, k) for k in (*MINI_SHAPE, "block_size")},
            "device": device_name(device),
            "machine": platform.machine(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "loops": args.loops,
            "decode": {
                "prompt_tokens": prompt_tokens,
                "new_tokens": new_tokens,
                "cached_s": cached_s,
                "recompute_s": recompute_s,
                "tokens_match": cached.token_ids == recomputed.token_ids,
            },
            "nll": {
                "examples": len(encoded),
                "tokens": sum(lengths),
                "mean_tokens": statistics.fmean(lengths),
                "batch_size": args.nll_batch_size,
                "batched_s": batched_s,
                "single_s": single_s,
                "max_abs_nll_sum_diff": max_diff,
                "useful_gflop": useful / 1e9,
                "gflops": nll_gflops,
            },
            "matmul": {"size": args.matmul_size, "gflops": peak},
        },
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m study.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="checkpoint folder (default: the embedded mini base)")
    parser.add_argument("--random", action="store_true", help="use the random mini-shaped model even if one exists")
    parser.add_argument("--out", type=Path, default=Path("bench.json"), help="JSON results (default: bench.json)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch intra-op threads (default: torch's); on a CPU shared with other jobs, 1 avoids "
        "OpenMP threads waiting on each other, which swamps the small ops of decoding",
    )
    parser.add_argument("--loops", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--nll-examples", type=int, default=64)
    parser.add_argument(
        "--nll-batch-size",
        type=int,
        default=None,
        help="default 32 on a GPU, 8 on CPU (small batches stay in cache; larger ones were slower there)",
    )
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of the fast paths (the best counts)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with torch.inference_mode():
        results = run_bench(args)
    atomic_write_json(args.out, results)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
