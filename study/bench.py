"""Speed of the sweep machinery against the machine's own limits, measured in one process.

    python -m study.bench [--shape released|mini|tiny] [--threads N] [--out bench.json]
    python -m study.bench --shape smol [--threads auto|N] [--out bench-smol.json]
    python -m study.bench threads [--shapes mini smol] [--out bench-threads.json]
    python -m study.bench bf16-deviation --version smol [--examples N] [--out bf16-deviation.md]

``--shape smol`` (and ``tiny-llama``, for the tests) is the looped SmolLM2 path:
``study.bench_smol`` says what it measures. ``threads`` times every stage kind at 1 and 2
threads (``study.bench_threads``); ``bf16-deviation`` compares a config's NLL sweep in
bfloat16 with fp32 on its real base model (``study.bench_bf16``). The rest of this
docstring is the LoopFormer bench.

``--shape released`` (the default) builds a *random* LoopFormer of the released
checkpoint's shape (d 2048, 32 heads, 3 blocks, MLP 5120, vocab 50,304) with the
vendored GPT-2 tokenizer: time depends on shapes, not on weights, and no download is
needed. ``--shape mini`` measures the embedded mini base (or ``--model DIR``), where
per-operation overhead dominates; ``--shape tiny`` is a few-thousand-parameter model
for the tests. Every figure is printed with its inputs and written to ``--out``:

- ``decode_bandwidth_fraction``: the memory-bandwidth lower bound of one generated
  token (the weight bytes it must read at ``--loops`` loops: every block once per loop,
  plus the LM head, over a stream-copy bandwidth measured here, STREAM convention:
  bytes read + bytes written) divided by the measured per-token decode time of the
  decoder the exact-match stage uses (prefill timed apart and excluded).
- ``nll_roofline_fraction``: useful GFLOP/s of the batched NLL scorer
  (``study.scoring.score_continuations``) on GSM8K test examples, over the GFLOP/s
  of one large fp32 matmul measured here.
- ``decode_cached_vs_recompute``: full-recompute greedy decoding (the LoopFormer
  authors' ``generate``) over cached greedy decoding, same tokens asserted.
- ``generate_vs_decoder``: transformers' ``model.generate`` time over the exact-match
  decoder's (``study.models.generation.greedy_generate``), same tokens asserted.
- ``growth``: per-token decode time at 1, 2, 4, 8, 16 loops with a least-squares line
  (intercept = the LM head and embeddings), and recompute vs cached at 16/32/64 new
  tokens (quadratic vs linear), at ``--growth-loops``.
- ``nll_peak_rss``: the resident memory peak while scoring one batch.
"""

from __future__ import annotations

import argparse
import functools
import platform
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, cast

import psutil
import torch
from scipy import stats
from torch import nn
from transformers import PreTrainedTokenizerBase

from study import bench_bf16, bench_smol, bench_threads
from study.bench_probes import GIB, PeakRSS, best_time, matmul_gflops, spread, stream_copy_gbs
from study.io import atomic_write_json
from study.manifest import cpu_model, git_commit
from study.models.generation import greedy_generate, recompute_generate
from study.models.loopformer import LoopFormerConfig, LoopFormerForCausalLM
from study.pipeline import EMBEDDED_DIR
from study.scoring import fit_to_window, score_continuations
from study.stages.latency import block_matmul_flops, device_name
from study.tasks.gsm8k import encode_example, load_gsm8k
from study.tokenizer import has_tokenizer, load_tokenizer

EOS = "<|endoftext|>"
# the shape of the embedded mini base, for the random stand-in
MINI_SHAPE: dict[str, Any] = {"n_embd": 128, "n_head": 4, "n_layer": 3, "intermediate_dim": 320, "vocab_size": 2048}
# random models of these shapes use the GPT-2 tokenizer (vocab 50,304 = 50,257 padded)
RANDOM_SHAPES: dict[str, dict[str, Any]] = {
    "released": {"n_embd": 2048, "n_head": 32, "n_layer": 3, "intermediate_dim": 5120, "vocab_size": 50304},
    "tiny": {"n_embd": 32, "n_head": 2, "n_layer": 2, "intermediate_dim": 64, "vocab_size": 50304},
}
SHAPE_FIELDS = ("n_embd", "n_head", "n_layer", "intermediate_dim", "vocab_size", "block_size")


def random_mini(block_size: int = 512, seed: int = 0) -> tuple[LoopFormerForCausalLM, PreTrainedTokenizerBase]:
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
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=EOS, pad_token=EOS, padding_side="left")
    config = LoopFormerConfig(
        block_size=block_size, train_loops=8, bos_token_id=0, eos_token_id=0, pad_token_id=0, **MINI_SHAPE
    )
    return randomised(config, seed), tokenizer


def randomised(config: LoopFormerConfig, seed: int) -> LoopFormerForCausalLM:
    torch.manual_seed(seed)
    model = LoopFormerForCausalLM(config)
    with torch.no_grad():  # adaLN-zero would make every loop the identity; timings do not care, outputs do
        for block in model.gpt.transformer.h.blocks:
            cast(nn.Linear, block.adaLN_modulation[1]).weight.normal_(0.0, 0.02)
    return model.eval()


def load_model(args: argparse.Namespace) -> tuple[LoopFormerForCausalLM, PreTrainedTokenizerBase, str]:
    if args.shape in RANDOM_SHAPES:
        config = LoopFormerConfig(block_size=1024, train_loops=8, **RANDOM_SHAPES[args.shape])
        return randomised(config, seed=0), load_tokenizer(None), f"random LoopFormer of the {args.shape} shape"
    path = args.model
    if path is None and not args.random and (EMBEDDED_DIR / "config.json").is_file():
        path = str(EMBEDDED_DIR)
    if path is None:
        print("note: no --model and no study/assets/mini-base: using a RANDOM LoopFormer of the mini shape")
        model, tokenizer = random_mini()
        return model, tokenizer, f"random mini-shaped LoopFormer {MINI_SHAPE}"
    model = LoopFormerForCausalLM.from_pretrained(path).eval()
    tokenizer = load_tokenizer(path if has_tokenizer(Path(path)) else None)
    return model, tokenizer, path


# ---- what a token and a batch cost ---------------------------------------------------------


def decode_weight_bytes(model: LoopFormerForCausalLM, loops: int) -> tuple[int, int]:
    """(block bytes per loop, LM head bytes): the weights one decoded token must read.
    Every block runs once per loop; the head (tied to the embedding) once per token. The
    adaLN and timestep weights are read once per generation, not per token, and the
    embedding lookup reads one row: both are left out."""
    size = model.gpt.transformer.h.blocks[0].attn.c_attn.weight.element_size()
    per_loop = 0
    for block in model.gpt.transformer.h.blocks:
        for linear in (block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj):
            per_loop += sum(p.numel() for p in linear.parameters()) * size
    return per_loop, model.lm_head.weight.numel() * size


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


# ---- the benchmark ---------------------------------------------------------------------------


class Bench:
    """The five measurements of one benchmark run, sharing the model, the prompt and the
    machine probes; each prints its figure with its inputs and returns its part of the JSON."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device = torch.device(args.device)
        self.model, self.tokenizer, self.source = load_model(args)
        self.model.to(self.device)  # type: ignore[arg-type]  # transformers' @wraps on PreTrainedModel.to mistypes it
        self.config = self.model.config
        self.test = load_gsm8k().test
        # one decoding call as the exact-match stage makes it, batch 1, no early stop (equal token work)
        self.prompt = self.test[0].prompt
        self.prompt_tokens = len(self.tokenizer.encode(self.prompt, add_special_tokens=False))
        self.new_tokens = min(args.new_tokens, self.config.block_size - self.prompt_tokens + 1)

    def decode(self, generate: Callable[..., Any], tokens: int, loops: int) -> Any:
        return generate(self.model, self.tokenizer, [self.prompt], tokens, num_loops=loops, early_stop=False)[0]

    def per_token(self, loops: int, tokens: int, repeats: int) -> tuple[float, float, float, list[float]]:
        """(seconds per decoded token, prefill seconds, decode seconds, decode times): a run of
        one new token is the prefill alone (its token comes from the prefill's logits), so
        the rest of a ``tokens`` run is ``tokens - 1`` decode steps."""
        self.decode(greedy_generate, 2, loops)  # warm-up
        prefill_s, _, _ = best_time(lambda: self.decode(greedy_generate, 1, loops), repeats, self.device)
        total_s, _, times = best_time(lambda: self.decode(greedy_generate, tokens, loops), repeats, self.device)
        return max(total_s - prefill_s, 0.0) / (tokens - 1), prefill_s, total_s, times

    def nll(self) -> dict[str, Any]:
        """(1) NLL scorer: roofline fraction and resident peak, first, before decoding caches
        grow. The stage sorts its examples by length and batches neighbours; the bench scores
        the same kind of batch: the --nll-examples around the median length of the first
        --nll-pool test examples."""
        args, config, device = self.args, self.config, self.device
        pool = [fit_to_window(encode_example(self.tokenizer, e), config.block_size) for e in self.test[: args.nll_pool]]
        by_length = sorted(pool, key=lambda e: len(e.input_ids))
        first = max(0, (len(by_length) - args.nll_examples) // 2)
        encoded = by_length[first : first + args.nll_examples]
        # the machine's limit right beside the figure it scales (the load on a shared machine drifts)
        peak_gflops = matmul_gflops(args.matmul_size, args.repeats, device)
        print(f"machine: fp32 matmul {args.matmul_size}^3 {peak_gflops:.1f} GFLOP/s")

        def score(batch_size: int):
            return score_continuations(self.model, encoded, batch_size, num_loops=args.loops)

        with PeakRSS() as rss:  # the first run gives the memory peak, and counts as one of the timed runs
            _, batched, nll_times = best_time(lambda: score(args.nll_batch_size), 1, device)
        if args.repeats > 1:
            nll_times += best_time(lambda: score(args.nll_batch_size), args.repeats - 1, device)[2]
        batched_s = min(nll_times)
        lengths = [len(e.input_ids) for e in encoded]
        padded = sum(
            max(len(e.input_ids) for e in encoded[i : i + args.nll_batch_size]) - 1
            for i in range(0, len(encoded), args.nll_batch_size)
        ) * min(args.nll_batch_size, len(encoded))
        fed = [length - 1 for length in lengths]  # the last token is only a target: the scorer never feeds it
        scored = [length - e.answer_start for length, e in zip(lengths, encoded, strict=True)]
        useful = nll_flops(config, args.loops, fed, scored)
        nll_gflops = useful / batched_s / 1e9
        fraction = nll_gflops / peak_gflops
        if not all(torch.isfinite(torch.tensor(s.nll_sum)) for s in batched):
            raise RuntimeError("NLL scorer returned a non-finite score")
        print(
            f"nll: {len(encoded)} GSM8K test examples around the median length of the first {len(pool)} "
            f"({sum(lengths)} tokens, {min(lengths)}-{max(lengths)}; {sum(fed)} real of {padded} fed positions), "
            f"batch {args.nll_batch_size}, {args.loops} loops: {useful / 1e9:.1f} GFLOP in {batched_s:.2f}s "
            f"({spread(nll_times)}) = {nll_gflops:.1f} GFLOP/s = {fraction:.1%} of the matmul roofline (target >= 85%)"
        )
        print(
            f"nll: resident memory peak {rss.peak / GIB:.2f} GiB while scoring batch {args.nll_batch_size} "
            f"(+{(rss.peak - rss.before) / GIB:.2f} GiB over the {rss.before / GIB:.2f} GiB before)"
        )
        single = None
        if args.shape == "mini":  # cheap at this size: batching against one example at a time
            single_s, one_by_one, _ = best_time(lambda: score(1), 1, device)
            max_diff = max(abs(a.nll_sum - b.nll_sum) for a, b in zip(batched, one_by_one, strict=True))
            single = {"single_s": single_s, "batched_vs_single": single_s / batched_s, "max_abs_diff": max_diff}
            print(
                f"nll: one at a time {single_s:.3f}s = {single_s / batched_s:.1f}x slower (max |diff| {max_diff:.1e})"
            )
        return {
            "fraction": fraction,
            "matmul_gflops": peak_gflops,
            "details": {
                "examples": len(encoded),
                "pool": len(pool),
                "tokens": sum(lengths),
                "fed_positions": sum(fed),
                "padded_positions": padded,
                "batch_size": args.nll_batch_size,
                "batched_s": batched_s,
                "batched_times": nll_times,
                "useful_gflop": useful / 1e9,
                "gflops": nll_gflops,
                "peak_rss_bytes": rss.peak,
                "rss_before_bytes": rss.before,
                "single": single,
            },
        }

    def decoding(self) -> dict[str, Any]:
        """(2) decoding at --loops: per-token time vs the bandwidth bound, measured just before."""
        args = self.args
        copy_gbs = stream_copy_gbs(args.copy_megabytes, args.repeats, self.device)
        print(f"machine: stream copy {copy_gbs:.1f} GB/s ({args.copy_megabytes} MiB arrays, read + write)")
        step_s, prefill_s, cached_s, cached_times = self.per_token(args.loops, self.new_tokens, args.repeats)
        block_bytes, head_bytes = decode_weight_bytes(self.model, args.loops)
        token_bytes = args.loops * block_bytes + head_bytes
        bound_s = token_bytes / (copy_gbs * 1e9)
        fraction = bound_s / step_s
        print(
            f"decode: {self.new_tokens} tokens after a {self.prompt_tokens}-token prompt at {args.loops} loops: "
            f"{cached_s:.2f}s ({spread(cached_times)}), prefill {prefill_s:.2f}s, {step_s * 1e3:.1f} ms per token; "
            f"bound {args.loops} x {block_bytes / 1e6:.0f} MB blocks + {head_bytes / 1e6:.0f} MB head = "
            f"{token_bytes / 1e9:.2f} GB at {copy_gbs:.1f} GB/s = {bound_s * 1e3:.1f} ms: "
            f"{fraction:.1%} of the bound (target >= 80%)"
        )
        return {
            "fraction": fraction,
            "stream_copy_gbs": copy_gbs,
            "details": {
                "decoder": "study.models.generation.greedy_generate",
                "prompt_tokens": self.prompt_tokens,
                "new_tokens": self.new_tokens,
                "cached_s": cached_s,
                "cached_times": cached_times,
                "prefill_s": prefill_s,
                "per_token_s": step_s,
                "block_bytes_per_loop": block_bytes,
                "head_bytes": head_bytes,
                "bound_per_token_s": bound_s,
            },
        }

    def recompute(self, cached_s: float) -> tuple[float, dict[str, Any], Any]:
        """(3) cached vs full recompute, identical tokens. Returns (ratio, details, the cached result)."""
        loops, tokens = self.args.loops, self.new_tokens
        cached = self.decode(greedy_generate, tokens, loops)
        recompute_s, recomputed, _ = best_time(lambda: self.decode(recompute_generate, tokens, loops), 1, self.device)
        if recomputed.token_ids != cached.token_ids:
            raise RuntimeError("recompute and cached decoding chose different tokens")
        ratio = recompute_s / cached_s
        print(f"decode: full recompute {recompute_s:.2f}s / cached {cached_s:.2f}s = {ratio:.1f}x (target >= 8x)")
        return ratio, {"recompute_s": recompute_s}, cached

    def generate(self, cached_token_ids: list[int]) -> tuple[float, dict[str, Any]]:
        """(4) transformers' generate vs the exact-match decoder, identical tokens, timed
        alternately so a drift in the machine's load hits both alike."""
        args, device, tokens = self.args, self.device, self.new_tokens
        ids = torch.tensor([self.tokenizer.encode(self.prompt, add_special_tokens=False)], device=device)

        def hf_generate():
            # min_new_tokens: the same token work as early_stop=False (an EOS would end generate early)
            return self.model.generate(
                ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, num_loops=args.loops
            )

        hf_generate()  # warm-up
        generate_times: list[float] = []
        decoder_times: list[float] = []
        for _ in range(args.repeats):
            generate_times += best_time(hf_generate, 1, device)[2]
            decoder_times += best_time(lambda: self.decode(greedy_generate, tokens, args.loops), 1, device)[2]
        generated = hf_generate()
        generate_s, decoder_s = min(generate_times), min(decoder_times)
        if generated[0, ids.shape[1] :].tolist() != cached_token_ids:
            raise RuntimeError("model.generate and the exact-match decoder chose different tokens")
        ratio = generate_s / decoder_s
        print(
            f"decode: model.generate {generate_s:.2f}s ({spread(generate_times)}) / greedy_generate {decoder_s:.2f}s "
            f"({spread(decoder_times)}), alternated = {ratio:.2f} (exact match uses greedy_generate)"
        )
        return ratio, {
            "generate_s": generate_s,
            "generate_times": generate_times,
            "decoder_s": decoder_s,  # greedy_generate, timed alternately with generate
            "decoder_times": decoder_times,
            "tokens_match": True,  # asserted above, for recompute and for generate
        }

    def growth(self, copy_gbs: float, head_bytes: int) -> dict[str, Any]:
        """(5) how cost grows: per-token time against loops, recompute vs cached against length."""
        args = self.args
        loop_grid = [loops for loops in (1, 2, 4, 8, 16) if loops <= args.max_growth_loops]
        per_loop = {loops: self.per_token(loops, args.growth_tokens, args.repeats)[0] for loops in loop_grid}
        fit = stats.linregress(list(per_loop), list(per_loop.values()))
        head_bound_s = head_bytes / (copy_gbs * 1e9)
        print(
            "growth: ms per token at loops "
            + ", ".join(f"{loops}: {s * 1e3:.1f}" for loops, s in per_loop.items())
            + f"; fit {fit.slope * 1e3:.1f} ms per loop + {fit.intercept * 1e3:.1f} ms (R^2 {fit.rvalue**2:.3f}); "
            f"head alone at the bound {head_bound_s * 1e3:.1f} ms"
        )
        lengths_grid = []
        for tokens in args.growth_lengths:
            tokens = min(tokens, self.config.block_size - self.prompt_tokens + 1)
            timed = [
                best_time(functools.partial(self.decode, generate, tokens, args.growth_loops), 1, self.device)[0]
                for generate in (greedy_generate, recompute_generate)
            ]
            lengths_grid.append({"new_tokens": tokens, "cached_s": timed[0], "recompute_s": timed[1]})
        print(
            f"growth at {args.growth_loops} loops: new tokens -> recompute / cached seconds: "
            + ", ".join(f"{g['new_tokens']}: {g['recompute_s']:.2f}/{g['cached_s']:.2f}" for g in lengths_grid)
        )
        return {
            "per_token_s_by_loops": {str(k): v for k, v in per_loop.items()},
            "tokens": args.growth_tokens,
            "slope_s_per_loop": fit.slope,
            "intercept_s": fit.intercept,
            "r_squared": fit.rvalue**2,
            "head_bound_s": head_bound_s,
            "length_loops": args.growth_loops,
            "by_length": lengths_grid,
        }


def run_bench(args: argparse.Namespace) -> dict:
    threads = 1 if args.threads is None else args.threads
    if threads == "auto":
        threads = bench_smol.resolve_threads("auto")[0]
    if threads:
        torch.set_num_threads(threads)
    if args.nll_batch_size is None:
        args.nll_batch_size = 32 if args.device.startswith("cuda") else 8
    start_clock = time.perf_counter()
    bench = Bench(args)
    config, device = bench.config, bench.device
    print(
        f"model: {bench.source} { ({k: getattr(config, k) for k in SHAPE_FIELDS}) } | device {device_name(device)} | "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads | {config._attn_implementation} attention"
    )
    nll = bench.nll()
    decode = bench.decoding()
    details = decode["details"]
    recompute_ratio, recompute, cached = bench.recompute(details["cached_s"])
    generate_ratio, generate = bench.generate(cached.token_ids)
    growth = bench.growth(decode["stream_copy_gbs"], details["head_bytes"])
    elapsed = time.perf_counter() - start_clock
    print(f"bench took {elapsed:.0f}s")
    return {
        "decode_bandwidth_fraction": decode["fraction"],
        "nll_roofline_fraction": nll["fraction"],
        "decode_cached_vs_recompute": recompute_ratio,
        "generate_vs_decoder": generate_ratio,
        "details": {
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
            "git_commit": git_commit(),
            "cpu_model": cpu_model(),
            "model": bench.source,
            "shape": args.shape,
            "config": {k: getattr(config, k) for k in SHAPE_FIELDS},
            "attn_implementation": config._attn_implementation,
            "device": device_name(device),
            "machine": platform.machine(),
            "cpu_count": psutil.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "loops": args.loops,
            "repeats": args.repeats,
            "seconds": elapsed,
            "machine_limits": {
                "stream_copy_gbs": decode["stream_copy_gbs"],
                "copy_megabytes": args.copy_megabytes,
                "matmul_size": args.matmul_size,
                "matmul_gflops": nll["matmul_gflops"],
            },
            "decode": {**details, **recompute, **generate},
            "nll": nll["details"],
            "growth": growth,
        },
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m study.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--shape",
        choices=("released", "mini", "tiny", *bench_smol.LLAMA_SHAPES),
        default="released",
        help="released/mini/tiny: LoopFormer; smol/tiny-llama: the looped decoder (study.bench_smol)",
    )
    parser.add_argument("--model", default=None, help="--shape mini: checkpoint folder (default: the embedded base)")
    parser.add_argument("--random", action="store_true", help="--shape mini: a random mini-shaped model")
    parser.add_argument("--out", type=Path, default=Path("bench.json"), help="JSON results (default: bench.json)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--threads",
        type=thread_setting,
        default=None,
        help="torch intra-op threads: a number (0 = torch's default) or auto (study.threads: 2 when the machine "
        "is idle, else 1); default 1, and auto for smol (its 'chosen' threads; the baselines run 1). On a CPU "
        "shared with other jobs one thread is steadiest: OpenMP threads otherwise wait on each other",
    )
    parser.add_argument("--loops", type=int, default=None, help="depth of the NLL and decode figures (8; smol: K 4)")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--nll-examples", type=int, default=None, help="examples scored in one batch (8; smol: 6)")
    parser.add_argument("--nll-pool", type=int, default=64, help="first test examples they are drawn from")
    parser.add_argument("--nll-batch-size", type=int, default=None, help="default 32 on a GPU, 8 on CPU")
    parser.add_argument("--growth-tokens", type=int, default=8, help="tokens per depth for the per-loop line")
    parser.add_argument("--max-growth-loops", type=int, default=16)
    parser.add_argument("--growth-loops", type=int, default=2, help="depth of the recompute-vs-cached length sweep")
    parser.add_argument("--growth-lengths", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--copy-megabytes", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each fast path (the best counts)")
    smol = parser.add_argument_group("smol / tiny-llama shapes (study.bench_smol)")
    smol.add_argument("--tokenizer", choices=("auto", "smollm2", "gpt2"), default="auto")
    smol.add_argument("--sweep-grid", type=int, nargs="+", default=[1, 2, 3, 4, 6, 8], help="the K-sweep's grid")
    smol.add_argument("--sft-loops", type=int, default=2, help="K of the timed SFT step")
    smol.add_argument("--sft-steps", type=int, default=2, help="timed SFT steps per thread count (after a warm-up)")
    smol.add_argument("--sft-max-length", type=int, default=320)
    return parser


def thread_setting(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of threads or auto, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number of threads >= 0 or auto, got {value}")
    return value


SUBCOMMANDS = {"bf16-deviation": bench_bf16.main, "threads": bench_threads.main}


def main(argv: list[str] | None = None) -> int:
    """``python -m study.bench [--shape ...]``, or a subcommand (``bf16-deviation``, ``threads``)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] and argv[0] in SUBCOMMANDS:
        return SUBCOMMANDS[argv[0]](argv[1:])
    args = build_parser().parse_args(argv)
    looped = args.shape in bench_smol.LLAMA_SHAPES
    args.loops = args.loops or (4 if looped else 8)
    args.nll_examples = args.nll_examples or (6 if looped else 8)
    if looped:
        args.threads = "auto" if args.threads is None else str(args.threads or torch.get_num_threads())
        results = bench_smol.run_smol(args)
    else:
        with torch.inference_mode():
            results = run_bench(args)
    atomic_write_json(args.out, results)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
