"""``python -m study.bench --shape smol``: the looped SmolLM2 path against the machine's limits.

A *random* Llama of SmolLM2-135M's shape (30 layers, width 576, 9 heads / 3 KV heads,
MLP 1536, vocabulary 49,152, tied head; time depends on shapes, not on weights), looped
at window 12-15 with euler through the study's looped decoder (``bind`` of a
``WindowFamily`` policy: ``study.models.entries.looped_decoder``), measured in one
process beside the machine's own probes (the 2048^3 fp32 matmul, a stream copy).
Questions are bundled GSM8K test questions with their gold answers, tokenized with
SmolLM2's own tokenizer (read from the offline GGUF, ``--tokenizer auto``/``smollm2``)
or else the vendored GPT-2 tokenizer with its ids folded into the 49,152-token
vocabulary (same lengths, shapes and work; the JSON says which). ``--shape tiny-llama``
runs every measurement on a few-thousand-parameter Llama, for the tests.

"Chosen" settings are ``--threads`` (``auto``: ``study.threads``' rule) and prefix sharing
(the grouped K-sweep, ``score_sweep(grouped=True)``). Written to ``--out``:

- ``smol_nll_roofline_fraction``: useful GFLOP/s of the NLL scorer at K = ``--loops`` (4)
  on ``--nll-examples`` questions of neighbouring length (the stage sorts by length) in
  one batch, over the matmul's GFLOP/s at the same thread count (so: per core used);
- ``smol_nll_sweep_speedup``: questions x K-grid (``--sweep-grid``, default 1 2 3 4 6 8)
  per second with the chosen fp32 settings, over 1 thread with separate cells (one
  ``score_continuations`` per K, as the NLL stage runs them), same questions, same run;
- ``smol_nll_sweep_speedup_bf16``: the same with the weights in bfloat16 (the config's
  ``sweep_dtype``), over the same fp32 1-thread baseline;
- ``smol_sft_step_speedup``: one looped SFT step (``study.sft_cost.sft_step``) at K =
  ``--sft-loops`` (2) with the chosen threads over 1 thread, the same examples, alternated;
- ``smol_decode_bandwidth_fraction``: the bytes one decoded token must read (every layer
  pass's weights, its own per_loop KV slot at the mean context, the tied head), over the
  stream-copy bandwidth (STREAM convention: read + write), divided by the measured
  per-token time of cached decoding (cache_strategy per_loop, decode_mode full, K =
  ``--loops``; prefill timed apart and excluded).

The SFT step runs last: it changes the weights.
"""

from __future__ import annotations

import argparse
import copy
import math
import platform
import time
from datetime import datetime, timezone
from typing import Any

import psutil
import torch
from torch import nn

from study.bench_probes import best_time, matmul_gflops, spread, stream_copy_gbs, torch_threads
from study.looping.policies import DepthPolicy, LoopedWindow, WindowFamily
from study.manifest import cpu_model, git_commit
from study.models.backbone import cast_weights
from study.models.backbones import bind
from study.models.entries.looped_decoder import WINDOW_EVALUATIONS_PER_LOOP, decoder_layer_flops
from study.scoring import ContinuationScore, fit_to_window, score_continuations, score_policies
from study.sft_cost import encode_sft, sft_step
from study.tasks.gsm8k import EncodedExample, encode_example, load_gsm8k
from study.threads import choose_threads
from study.tokenizer import load_tokenizer

# the Llama shapes of the looped-decoder benches: (LlamaConfig fields, looped window)
LLAMA_SHAPES: dict[str, tuple[dict[str, Any], tuple[int, int]]] = {
    "smol": (
        {"vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
         "num_attention_heads": 9, "num_key_value_heads": 3},
        (12, 15),
    ),
    "tiny-llama": (
        {"vocab_size": 512, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 6,
         "num_attention_heads": 4, "num_key_value_heads": 2},
        (2, 3),
    ),
}  # fmt: skip
STRATEGY = "euler"
DEVICE = torch.device("cpu")


# ---- the model, the tokenizer, the questions ------------------------------------------------


def random_llama(shape: str, seed: int = 0) -> Any:
    """A random ``LlamaForCausalLM`` of a ``LLAMA_SHAPES`` shape (SmolLM2's rope and norm
    settings, tied head), fp32, eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        **LLAMA_SHAPES[shape][0], max_position_embeddings=8192, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
        tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


def looped_family(shape: str) -> WindowFamily:
    """The study's looping of a shape: its window, euler, a KV slot per pass (``per_loop``)."""
    window = LLAMA_SHAPES[shape][1]
    return WindowFamily(window=window, strategy=STRATEGY, cache_strategy="per_loop", decode_mode="full")


class FoldedTokenizer:
    """A tokenizer whose ids are folded into a smaller vocabulary (``id % vocab``): GPT-2's
    50,257 ids into SmolLM2's 49,152. Sequence lengths, and so all the work, are GPT-2's;
    only the 1,105 highest ids collide, which timings do not see."""

    def __init__(self, tokenizer: Any, vocab: int) -> None:
        self.tokenizer, self.vocab = tokenizer, vocab

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [i % self.vocab for i in self.tokenizer.encode(text, add_special_tokens=add_special_tokens)]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    @property
    def eos_token_id(self) -> int:
        return self.tokenizer.eos_token_id % self.vocab

    @property
    def pad_token_id(self) -> int | None:
        pad = self.tokenizer.pad_token_id
        return None if pad is None else pad % self.vocab


def bench_tokenizer(choice: str, vocab: int) -> tuple[Any, str]:
    """(tokenizer, what it is): SmolLM2's from the offline GGUF (``smollm2``; ``auto`` when
    the package is installed), or GPT-2's (``gpt2``; ``auto`` without it) folded into ``vocab``."""
    from study.models import smollm2

    if choice in ("auto", "smollm2"):
        try:
            gguf = smollm2.gguf_path()
        except smollm2.ModelUnavailable as error:
            if choice == "smollm2":
                raise
            print(f"note: {error}: using the GPT-2 tokenizer")
        else:
            from transformers import AutoTokenizer

            own = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            return own, f"SmolLM2-135M-Instruct's own (from {gguf.name})"
    tokenizer = load_tokenizer(None)
    if len(tokenizer) <= vocab:
        return tokenizer, "GPT-2 (study/assets/gpt2)"
    folded = f"GPT-2 (study/assets/gpt2), ids folded into the {vocab:,}-token vocabulary"
    return FoldedTokenizer(tokenizer, vocab), folded


def median_batch(tokenizer, count: int, pool: int, context: int) -> list[EncodedExample]:
    """``count`` GSM8K test questions + gold answers around the median length of the first
    ``pool``, length-sorted: the kind of batch the NLL stage's length sort forms."""
    encoded = [fit_to_window(encode_example(tokenizer, e), context) for e in load_gsm8k().test[:pool]]
    by_length = sorted(encoded, key=lambda e: len(e.input_ids))
    first = max(0, (len(by_length) - count) // 2)
    return by_length[first : first + count]


# ---- the sweep, with the place where prefix sharing plugs in --------------------------------


def score_sweep(
    model: nn.Module, policies: list[DepthPolicy], encoded: list[EncodedExample], batch_size: int, grouped: bool
) -> dict[str, list[ContinuationScore]]:
    """Every policy's scores of ``encoded``, by policy id.

    ``grouped=False``: separate cells, one ``score_continuations`` per policy, as separate
    NLL cells compute them. ``grouped=True``: one cell group (``study.scoring.score_policies``),
    the layers before the window run once per batch and only the window and the layers
    after it per K, as the NLL stage's cell groups do."""
    return score_policies(model, policies, encoded, batch_size, share_prefix=grouped)


def timed_sweep(
    model: nn.Module, policies: list[DepthPolicy], encoded: list[EncodedExample], threads: int, grouped: bool
) -> tuple[float, dict[str, list[ContinuationScore]], str]:
    """(seconds, scores, how the sweep ran) of one K-sweep at ``threads``, after an untimed
    warm-up cell (allocator, kernels); a grouped sweep falls back to separate cells."""
    how = "grouped (prefix shared)" if grouped else "separate cells"
    batch = len(encoded)
    with torch_threads(threads):
        score_continuations(bind(model, policies[0]), encoded, batch)  # warm-up
        seconds, scores, _ = best_time(lambda: score_sweep(model, policies, encoded, batch, grouped), 1, DEVICE)
    return seconds, scores, how


def nll_per_token_diff(a: dict[str, list[ContinuationScore]], b: dict[str, list[ContinuationScore]]) -> float:
    """The largest per-example |NLL per token| difference between two sweeps; a non-finite
    score is refused (never written as a number)."""
    scores = [s for sweep in (a, b) for cell in sweep.values() for s in cell]
    if not all(math.isfinite(s.nll_sum) for s in scores):
        raise RuntimeError("the NLL scorer returned a non-finite score")
    return max(
        abs(x.nll_sum / x.answer_tokens - y.nll_sum / y.answer_tokens)
        for key in a
        for x, y in zip(a[key], b[key], strict=True)
    )


# ---- analytic cost -----------------------------------------------------------------------


def layer_passes(config: Any, policy: LoopedWindow) -> int:
    """Decoder-layer evaluations of one token: the layers outside the window once, the
    window K times (x evaluations per step of the strategy). No KV-writing pass: none in
    teacher forcing, and per_loop decoding writes each pass's own slot."""
    a, b = policy.spec.window
    width = b - a + 1
    return config.num_hidden_layers - width + width * policy.spec.loops * WINDOW_EVALUATIONS_PER_LOOP.get(STRATEGY, 1)


def looped_nll_flops(config: Any, passes: int, fed: list[int], scored: list[int]) -> float:
    """Useful forward FLOPs of feeding sequences of ``fed`` tokens: every layer pass's
    matmuls on every token, causal attention (token p attends p keys), and the tied head on
    the ``scored`` positions only (the scorer never runs it elsewhere)."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    q_width = config.num_attention_heads * head_dim
    per_token = decoder_layer_flops(config, 0.0)  # projections and MLP, attention apart
    total = 0.0
    for length, count in zip(fed, scored, strict=True):
        total += passes * (length * per_token + 4 * q_width * length * (length + 1) / 2)
        total += 2 * config.hidden_size * config.vocab_size * count
    return total


def decode_token_bytes(model: Any, passes: int, context: float) -> dict[str, float]:
    """The bytes one decoded token must read: every layer pass's weights, its KV slot's keys
    and values over ``context`` positions, and the tied head (the embedding row is left out)."""
    config = model.config
    layer = sum(p.numel() * p.element_size() for p in model.model.layers[0].parameters())
    head = model.lm_head.weight.numel() * model.lm_head.weight.element_size()
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv = passes * 2 * config.num_key_value_heads * head_dim * context * model.lm_head.weight.element_size()
    return {"layer_bytes": layer, "layer_passes": passes, "head_bytes": head, "kv_bytes": kv,
            "total_bytes": passes * layer + head + kv}  # fmt: skip


# ---- the measurements ----------------------------------------------------------------------


def measure_nll(model, family, encoded, loops: int, threads: int, args) -> dict[str, Any]:
    """The NLL scorer at K = ``loops`` on one batch, against the matmul at the same threads."""
    policy = family.policy(loops)
    runner = bind(model, policy)
    with torch_threads(threads):
        matmul = matmul_gflops(args.matmul_size, args.repeats, DEVICE)
        seconds, _, times = best_time(lambda: score_continuations(runner, encoded, len(encoded)), args.repeats, DEVICE)
    fed = [len(e.input_ids) - 1 for e in encoded]  # the last token is only a target
    scored = [len(e.input_ids) - e.answer_start for e in encoded]
    useful = looped_nll_flops(model.config, layer_passes(model.config, policy), fed, scored)
    gflops = useful / seconds / 1e9
    print(
        f"nll: {len(encoded)} questions ({min(fed) + 1}-{max(fed) + 1} tokens) in one batch, {policy.id}, {threads} "
        f"thread(s): {useful / 1e9:.1f} GFLOP in {seconds:.2f}s ({spread(times)}) = {gflops:.1f} GFLOP/s; matmul "
        f"{matmul:.1f} GFLOP/s: {gflops / matmul:.1%} of the roofline per core used (target >= 85%)"
    )
    return {
        "fraction": gflops / matmul,
        "policy": policy.id, "threads": threads, "examples": len(encoded), "fed_positions": sum(fed),
        "scored_positions": sum(scored), "useful_gflop": useful / 1e9, "seconds": seconds, "times": times,
        "gflops": gflops, "gflops_per_core": gflops / threads, "matmul_gflops": matmul,
        "matmul_gflops_per_core": matmul / threads,
    }  # fmt: skip


def measure_sweep(model, family, encoded, threads: int, args) -> dict[str, Any]:
    """The K-sweep: 1 thread + separate cells, then the chosen settings in fp32 and in bf16."""
    policies = [family.policy(k) for k in args.sweep_grid]
    work = len(encoded) * len(policies)  # questions x K
    base_s, base, _ = timed_sweep(model, policies, encoded, 1, grouped=False)
    fp32_s, fp32, fp32_how = timed_sweep(model, policies, encoded, threads, grouped=True)
    bf16_model = cast_weights(copy.deepcopy(model), torch.bfloat16)
    bf16_s, bf16, bf16_how = timed_sweep(bf16_model, policies, encoded, threads, grouped=True)
    del bf16_model
    result = {
        "speedup": base_s / fp32_s, "speedup_bf16": base_s / bf16_s, "grid": list(args.sweep_grid),
        "questions": len(encoded), "work": work, "threads": threads,
        "baseline_s": base_s, "baseline": "1 thread, fp32, separate cells",
        "fp32_s": fp32_s, "fp32_ran_as": fp32_how, "bf16_s": bf16_s, "bf16_ran_as": bf16_how,
        "per_second": {"baseline": work / base_s, "fp32": work / fp32_s, "bf16": work / bf16_s},
        "fp32_max_abs_diff_per_token": nll_per_token_diff(base, fp32),  # thread count and grouping only
        "bf16_max_abs_diff_per_token": nll_per_token_diff(base, bf16),  # random weights: see bf16-deviation
    }  # fmt: skip
    print(
        f"sweep: {len(encoded)} questions x K {args.sweep_grid}: 1 thread separate cells {base_s:.1f}s; "
        f"{threads} thread(s) fp32 {fp32_s:.1f}s = {result['speedup']:.2f}x (target >= 2.3), "
        f"bf16 {bf16_s:.1f}s = {result['speedup_bf16']:.2f}x [{fp32_how}]"
    )
    return result


def measure_decode(model, family, tokenizer, threads: int, args) -> dict[str, Any]:
    """Cached per_loop decoding at K = ``--loops``, batch 1, against the bytes a token reads."""
    policy = family.policy(args.loops)
    runner = bind(model, policy)
    prompt = load_gsm8k().test[0].prompt
    prompt_tokens = len(tokenizer.encode(prompt, add_special_tokens=False))
    tokens = args.new_tokens

    def run(count: int):
        return runner.generate(tokenizer, [prompt], count, early_stop=False)

    with torch_threads(threads):
        copy_gbs = stream_copy_gbs(args.copy_megabytes, args.repeats, DEVICE)
        run(2)  # warm-up
        prefill_s, _, _ = best_time(lambda: run(1), args.repeats, DEVICE)
        total_s, _, times = best_time(lambda: run(tokens), args.repeats, DEVICE)
    per_token = max(total_s - prefill_s, 0.0) / (tokens - 1)
    cost = decode_token_bytes(model, layer_passes(model.config, policy), prompt_tokens + tokens / 2)
    bound = cost["total_bytes"] / (copy_gbs * 1e9)
    # None (null), never a made-up number, when the decode steps vanish in the prefill's noise
    fraction = bound / per_token if per_token > 0 else None
    print(
        f"decode: {tokens} tokens after a {prompt_tokens}-token prompt, {policy.id} per_loop, {threads} thread(s): "
        f"{per_token * 1e3:.1f} ms per token ({spread(times)}, prefill {prefill_s:.2f}s); bound "
        f"{cost['total_bytes'] / 1e6:.0f} MB at {copy_gbs:.1f} GB/s = {bound * 1e3:.1f} ms: "
        + ("too fast to time" if fraction is None else f"{fraction:.1%}")
    )
    return {
        "fraction": fraction, "policy": policy.id, "threads": threads, "prompt_tokens": prompt_tokens,
        "new_tokens": tokens, "prefill_s": prefill_s, "total_s": total_s, "times": times,
        "per_token_s": per_token, "bound_per_token_s": bound, "stream_copy_gbs": copy_gbs, **cost,
    }  # fmt: skip


def measure_sft(model, family, tokenizer, threads: int, args) -> dict[str, Any]:
    """One SFT step at K = ``--sft-loops``: 1 thread and ``threads`` alternated on the same
    examples, after one untimed step (it allocates AdamW's state)."""
    runner = bind(model, family.policy(args.sft_loops))
    examples = load_gsm8k().train[: args.sft_steps + 1]
    batches = [encode_sft(tokenizer, e, args.sft_max_length) for e in examples]
    counts = [1] if threads == 1 else [1, threads]
    times: dict[int, list[float]] = {n: [] for n in counts}
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    with torch.enable_grad():
        sft_step(runner, *batches[0], optimizer)
        for ids, labels in batches[1:]:
            for n in counts:
                with torch_threads(n):
                    times[n] += best_time(lambda: sft_step(runner, ids, labels, optimizer), 1, DEVICE)[2]  # noqa: B023
    model.eval()
    one, chosen = min(times[1]), min(times[counts[-1]])
    print(
        f"sft: {runner.policy.id} step on {[int(ids.shape[1]) for ids, _ in batches[1:]]} tokens: 1 thread "
        f"{one:.2f}s, {threads} thread(s) {chosen:.2f}s = {one / chosen:.2f}x (target >= 1.6)"
    )
    return {
        "speedup": one / chosen, "policy": runner.policy.id, "threads": threads,
        "tokens": [int(ids.shape[1]) for ids, _ in batches[1:]], "one_thread_s": one, "chosen_s": chosen,
        "times": {str(n): t for n, t in times.items()},
    }  # fmt: skip


def resolve_threads(setting: str) -> tuple[int, dict[str, Any]]:
    """``--threads`` (a number, or ``auto``: ``study.threads``' rule) -> (threads, its record)."""
    choice = choose_threads("auto" if setting == "auto" else int(setting))
    threads = choice.threads or torch.get_num_threads()
    print(f"threads: {threads} ({choice.rule})")
    return threads, choice.as_dict()


def run_smol(args: argparse.Namespace) -> dict[str, Any]:
    """Every measurement of the smol bench, in one process; the JSON's content."""
    start = time.perf_counter()
    threads, choice = resolve_threads(args.threads)
    model = random_llama(args.shape)
    config = model.config
    tokenizer, tokenizer_name = bench_tokenizer(args.tokenizer, config.vocab_size)
    family = looped_family(args.shape)
    encoded = median_batch(tokenizer, args.nll_examples, args.nll_pool, config.max_position_embeddings)
    print(
        f"model: random Llama of the {args.shape} shape {LLAMA_SHAPES[args.shape][0]}, window "
        f"{family.window} {STRATEGY} | tokenizer {tokenizer_name} | torch {torch.__version__}"
    )
    with torch.inference_mode():
        nll = measure_nll(model, family, encoded, args.loops, threads, args)
        sweep = measure_sweep(model, family, encoded, threads, args)
        decode = measure_decode(model, family, tokenizer, threads, args)
    sft = measure_sft(model, family, tokenizer, threads, args)  # last: it trains the weights
    elapsed = time.perf_counter() - start
    print(f"bench took {elapsed:.0f}s")
    return {
        "smol_nll_roofline_fraction": nll["fraction"],
        "smol_nll_sweep_speedup": sweep["speedup"],
        "smol_nll_sweep_speedup_bf16": sweep["speedup_bf16"],
        "smol_sft_step_speedup": sft["speedup"],
        "smol_decode_bandwidth_fraction": decode["fraction"],
        "details": {
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "git_commit": git_commit(),
            "cpu_model": cpu_model(),
            "shape": args.shape, "config": LLAMA_SHAPES[args.shape][0], "window": list(family.window),
            "strategy": STRATEGY, "tokenizer": tokenizer_name, "machine": platform.machine(),
            "cpu_count": psutil.cpu_count(), "torch": torch.__version__, "threads": threads,
            "threads_choice": choice, "load_after": list(psutil.getloadavg()), "seconds": elapsed,
            "nll": nll, "sweep": sweep, "decode": decode, "sft": sft,
        },
    }  # fmt: skip
