"""Latency stage: what each loop costs at generation time.

For each model × loop count: ``warmup`` untimed runs, then ``samples`` timed greedy
generations at batch 1 of exactly ``new_tokens`` tokens (no early stop, so every
sample does the same token work), each followed by a timed prefill (the prompt's
forward pass alone). Prompts are the first ``samples`` NLL test prompts, cycled if
there are fewer. On a GPU the clock is read only after ``torch.cuda.synchronize``.

``latency.csv`` has the median and 10th/90th percentile seconds per sample, tokens
per second at the median, the median prefill and the analytic FLOPs per generated
token; ``latency_fit.csv`` the least-squares line of median seconds against loops.
Timings are measurements, so unlike the other stages they are not byte-reproducible.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from study.io import atomic_write_csv, atomic_write_json, read_json
from study.models.generation import greedy_generate, preallocated_cache
from study.pipeline import RunContext, StudyError, cell_name

LATENCY_COLUMNS = (
    "model", "inference_loops", "median_s", "p10_s", "p90_s", "tokens_per_s", "prefill_s", "new_tokens",
    "samples", "device", "flops_per_token",
)  # fmt: skip
FIT_COLUMNS = ("model", "slope_s_per_loop", "intercept_s", "r_squared")


# ---- analytic cost ----------------------------------------------------------------------


def block_matmul_flops(config) -> int:
    """Forward FLOPs of one block's weight matmuls for one token: 2 per multiply-add over
    c_attn (d×3d), attn.c_proj (d×d), mlp.c_fc (d×i) and mlp.c_proj (i×d)."""
    d, i = config.n_embd, config.intermediate_dim
    return 2 * (4 * d * d + 2 * d * i)


def token_flops(config, loops: int, context: float, head: bool = True) -> float:
    """Forward FLOPs for one token that attends to ``context`` keys, at ``loops`` uniform
    steps of the ``n_layer`` shared blocks::

        loops * n_layer * (2 * (4 d^2 + 2 d i)  +  4 * context * d)  +  2 * d * V

    The first term is the blocks' weight matmuls, the second attention (q.k over the
    context and the weighted sum of values, 2 * context * d each), the last the tied LM
    head (dropped with ``head=False``). Norms, GELU, softmax, embedding lookups and the
    adaLN conditioning (once per forward, not per token) are left out: they are a few
    percent at these widths."""
    per_block = block_matmul_flops(config) + 4 * context * config.n_embd
    head_flops = 2 * config.n_embd * config.vocab_size if head else 0
    return loops * config.n_layer * per_block + head_flops


def generation_flops_per_token(config, loops: int, prompt_tokens: float, new_tokens: int) -> float:
    """``token_flops`` at the mean context of the generated tokens: the k-th new token
    (k = 1..N) comes from a forward whose last query attends to prompt + k - 1 keys, so
    the mean context is prompt + (N - 1) / 2. The prompt's own prefill is not included
    (``prefill_s`` reports its time)."""
    return token_flops(config, loops, prompt_tokens + (new_tokens - 1) / 2)


# ---- measuring ---------------------------------------------------------------------------


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or "cpu"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_generation(model, tokenizer, prompt: str, loops: int, new_tokens: int, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    (result,) = greedy_generate(model, tokenizer, [prompt], new_tokens, num_loops=loops, early_stop=False)
    synchronize(device)
    seconds = time.perf_counter() - start
    if len(result.token_ids) != new_tokens:  # block_size cut it short: the sample is not comparable
        raise StudyError(
            f"latency: a {result.prompt_tokens}-token prompt leaves room for only {len(result.token_ids)} of "
            f"latency.new_tokens={new_tokens} tokens in block_size {model.config.block_size}"
        )
    return seconds


@torch.inference_mode()
def time_prefill(model, input_ids: torch.Tensor, loops: int, new_tokens: int, device: torch.device) -> float:
    """The prompt forward pass as ``greedy_generate`` runs it: filling a fresh cache sized
    for the generation, last logits only."""
    synchronize(device)
    start = time.perf_counter()
    cache = preallocated_cache(model, loops, input_ids.shape[1] + new_tokens - 1)
    model(input_ids, past_key_values=cache, use_cache=True, logits_to_keep=1, num_loops=loops)
    synchronize(device)
    return time.perf_counter() - start


def measure_cell(
    model, tokenizer, prompts: list[str], loops: int, new_tokens: int, warmup: int, device: torch.device
) -> dict:
    for i in range(warmup):  # allocator, kernels and caches warm up outside the clock
        time_generation(model, tokenizer, prompts[i % len(prompts)], loops, new_tokens, device)
    seconds, prefill, prompt_tokens = [], [], []
    for prompt in prompts:
        seconds.append(time_generation(model, tokenizer, prompt, loops, new_tokens, device))
        ids = tokenizer.encode(prompt, add_special_tokens=False)
        prefill.append(time_prefill(model, torch.tensor([ids], device=device), loops, new_tokens, device))
        prompt_tokens.append(len(ids))
    flops = generation_flops_per_token(model.config, loops, float(np.mean(prompt_tokens)), new_tokens)
    return {
        "inference_loops": loops,
        "new_tokens": new_tokens,
        "samples": len(prompts),
        "warmup": warmup,
        "device": device_name(device),
        "seconds": seconds,
        "prefill_seconds": prefill,
        "prompt_tokens": prompt_tokens,
        "flops_per_token": round(flops),
    }


def latency_row(model: str, cell: dict) -> dict:
    seconds = np.asarray(cell["seconds"], dtype=float)
    if not (len(seconds) and np.isfinite(seconds).all() and np.isfinite(cell["prefill_seconds"]).all()):
        raise StudyError(f"latency: {model} at {cell['inference_loops']} loops has no finite timings to summarise")
    median = float(np.median(seconds))
    return {
        "model": model,
        "inference_loops": cell["inference_loops"],
        "median_s": median,
        "p10_s": float(np.percentile(seconds, 10)),
        "p90_s": float(np.percentile(seconds, 90)),
        "tokens_per_s": cell["new_tokens"] / median,
        "prefill_s": float(np.median(cell["prefill_seconds"])),
        "new_tokens": cell["new_tokens"],
        "samples": cell["samples"],
        "device": cell["device"],
        "flops_per_token": cell["flops_per_token"],
    }


def fit_row(model: str, loops: list[int], medians: list[float]) -> dict:
    """Seconds per sample against loop count: slope = the cost of one more loop."""
    if len(set(loops)) < 2:
        nan = float("nan")
        return {"model": model, "slope_s_per_loop": nan, "intercept_s": nan, "r_squared": nan}
    if not np.isfinite(np.asarray(medians, dtype=float)).all():
        raise StudyError(f"latency: {model}: NaN or infinite median timings; the fit is refused")
    fit = stats.linregress(np.asarray(loops, dtype=float), np.asarray(medians, dtype=float))
    return {
        "model": model,
        "slope_s_per_loop": float(fit.slope),
        "intercept_s": float(fit.intercept),
        "r_squared": float(fit.rvalue) ** 2,
    }


# ---- cells -------------------------------------------------------------------------------


def cell_path(ctx: RunContext, model: str, loops: int) -> Path:
    return ctx.cells_dir("latency") / f"{cell_name(model, loops)}.json"


def read_cell(path: Path, loops: int, new_tokens: int, samples: int, warmup: int) -> dict | None:
    if not path.is_file():
        return None
    try:
        cell = read_json(path)
        expected = (loops, new_tokens, samples, warmup, samples)
        found = (cell["inference_loops"], cell["new_tokens"], cell["samples"], cell["warmup"], len(cell["seconds"]))
    except (ValueError, KeyError, TypeError):
        return None
    return cell if found == expected else None


def run(ctx: RunContext) -> None:
    config = ctx.config.latency
    grid = sorted(set(config.inference_loops))
    pool = ctx.examples("nll_test")
    prompts = [pool[i % len(pool)].prompt for i in range(config.samples)]
    rows, fits = [], []
    for spec in ctx.model_specs():
        model = tokenizer = None
        medians = []
        for loops in grid:
            ctx.check_stop()
            path = cell_path(ctx, spec.name, loops)
            cell = read_cell(path, loops, config.new_tokens, config.samples, config.warmup)
            if cell is None:
                if model is None:
                    model, tokenizer = ctx.load_model(spec), ctx.load_tokenizer(spec)
                cell = measure_cell(model, tokenizer, prompts, loops, config.new_tokens, config.warmup, ctx.device)
                atomic_write_json(path, cell)
            row = latency_row(spec.name, cell)
            print(f"latency {path.stem}: {row['median_s']:.4f}s per sample of {config.new_tokens} tokens", flush=True)
            rows.append(row)
            medians.append(row["median_s"])
        fits.append(fit_row(spec.name, grid, medians))
        del model
        if ctx.device.type == "cuda":
            torch.cuda.empty_cache()
    atomic_write_csv(ctx.results_path("latency.csv"), rows, LATENCY_COLUMNS)
    atomic_write_csv(ctx.results_path("latency_fit.csv"), fits, FIT_COLUMNS)
