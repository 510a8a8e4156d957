"""Latency stage: what each loop costs at generation time.

For each model × depth policy (one cell each, through the sweep-cell loop of
``study.stages.sweep``, in the main process only: timings run one at a time so they
do not compete): ``warmup`` untimed runs, then ``samples`` timed greedy
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
from study.looping.policies import DepthPolicy
from study.models.backbones import PolicyRunner, get_backbone
from study.models.entries.loopformer import block_matmul_flops, token_flops  # noqa: F401  (bench imports it here)
from study.pipeline import RunContext, StudyError
from study.stages.stage import Stage
from study.stages.sweep import Cell, Loaded, Sweep

LATENCY_COLUMNS = (
    "model", "policy", "inference_loops", "median_s", "p10_s", "p90_s", "tokens_per_s", "prefill_s", "new_tokens",
    "samples", "device", "flops_per_token",
)  # fmt: skip
FIT_COLUMNS = ("model", "slope_s_per_loop", "intercept_s", "r_squared")


# ---- analytic cost (each backbone's formula lives with its registry entry) ----------------


def generation_flops_per_token(config, loops: int, prompt_tokens: float, new_tokens: int) -> float:
    """LoopFormer's ``token_flops`` at the mean context of the generated tokens: the k-th new
    token (k = 1..N) comes from a forward whose last query attends to prompt + k - 1 keys, so
    the mean context is prompt + (N - 1) / 2. The prompt's own prefill is not included
    (``prefill_s`` reports its time)."""
    return token_flops(config, loops, prompt_tokens + (new_tokens - 1) / 2)


def policy_generation_flops_per_token(config, policy: DepthPolicy, prompt_tokens: float, new_tokens: int) -> float:
    """``generation_flops_per_token`` of any backbone at any policy."""
    context = prompt_tokens + (new_tokens - 1) / 2
    return get_backbone(policy.backbone).token_flops(config, policy, context)


# ---- measuring ---------------------------------------------------------------------------


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or "cpu"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_generation(runner: PolicyRunner, tokenizer, prompt: str, new_tokens: int, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    (result,) = runner.generate(tokenizer, [prompt], new_tokens, early_stop=False)
    synchronize(device)
    seconds = time.perf_counter() - start
    if len(result.token_ids) != new_tokens:  # block_size cut it short: the sample is not comparable
        raise StudyError(
            f"latency: a {result.prompt_tokens}-token prompt leaves room for only {len(result.token_ids)} of "
            f"latency.new_tokens={new_tokens} tokens in block_size {runner.context_limit}"
        )
    return seconds


@torch.inference_mode()
def time_prefill(runner: PolicyRunner, input_ids: torch.Tensor, new_tokens: int, device: torch.device) -> float:
    """The prompt forward pass as ``generate`` runs it: filling a fresh cache sized
    for the generation, last logits only."""
    synchronize(device)
    start = time.perf_counter()
    runner.prefill(input_ids, new_tokens)
    synchronize(device)
    return time.perf_counter() - start


def measure_cell(
    runner: PolicyRunner,
    tokenizer,
    prompts: list[str],
    new_tokens: int,
    warmup: int,
    device: torch.device,
    progress=None,
) -> dict:
    policy = runner.policy
    for i in range(warmup):  # allocator, kernels and caches warm up outside the clock
        time_generation(runner, tokenizer, prompts[i % len(prompts)], new_tokens, device)
    seconds, prefill, prompt_tokens = [], [], []
    bar = progress(total=len(prompts), desc="samples", inner=True) if progress is not None else None
    for prompt in prompts:
        seconds.append(time_generation(runner, tokenizer, prompt, new_tokens, device))
        ids = tokenizer.encode(prompt, add_special_tokens=False)
        prefill.append(time_prefill(runner, torch.tensor([ids], device=device), new_tokens, device))
        prompt_tokens.append(len(ids))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    flops = policy_generation_flops_per_token(runner.model.config, policy, float(np.mean(prompt_tokens)), new_tokens)
    return {
        "policy": policy.id,
        "inference_loops": policy.inference_loops,
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
        "policy": cell["policy"],
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


class TimingStore:
    """One JSON per cell: the raw timings (``measure_cell``)."""

    suffix = ".json"

    def __init__(self, new_tokens: int, samples: int, warmup: int) -> None:
        self.settings = (new_tokens, samples, warmup)

    def read(self, path: Path, cell: Cell) -> dict | None:
        return read_cell(path, cell.policy, *self.settings)

    def write(self, path: Path, cell: Cell, value: dict) -> None:
        atomic_write_json(path, value)


def cell_path(ctx: RunContext, model: str, policy: str) -> Path:
    return ctx.cells_dir("latency") / f"{model}-{policy}{TimingStore.suffix}"


def read_cell(path: Path, policy: DepthPolicy, new_tokens: int, samples: int, warmup: int) -> dict | None:
    if not path.is_file():
        return None
    try:
        cell = read_json(path)
        expected = (policy.id, policy.inference_loops, new_tokens, samples, warmup, samples)
        found = (
            cell["policy"], cell["inference_loops"], cell["new_tokens"], cell["samples"], cell["warmup"],
            len(cell["seconds"]),
        )  # fmt: skip
    except (ValueError, KeyError, TypeError):
        return None
    return cell if found == expected else None


def run(ctx: RunContext) -> None:
    config = ctx.config.latency
    pool = ctx.examples("nll_test")
    prompts = [pool[i % len(pool)].prompt for i in range(config.samples)]
    grid = ctx.policies(config.inference_loops)
    cells = [Cell(spec, policy) for spec in ctx.model_specs() for policy in grid]

    def compute(cell: Cell, loaded: Loaded, progress) -> dict:
        runner = loaded.runner(cell.policy)
        return measure_cell(runner, loaded.tokenizer, prompts, config.new_tokens, config.warmup, ctx.device, progress)

    def describe(cell: Cell, value: dict) -> str:
        return f"{float(np.median(value['seconds'])):.4f}s per sample of {config.new_tokens} tokens"

    store = TimingStore(config.new_tokens, config.samples, config.warmup)
    values = Sweep(ctx, "latency", store, compute, describe, spread=False).run(cells)
    if values is None:  # another process of the run aggregates
        return
    rows, fits = [], []
    for spec in ctx.model_specs():
        model_rows = [latency_row(spec.name, values[Cell(spec, policy)]) for policy in grid]
        rows.extend(model_rows)
        fits.append(fit_row(spec.name, [p.inference_loops for p in grid], [r["median_s"] for r in model_rows]))
    atomic_write_csv(ctx.results_path("latency.csv"), rows, LATENCY_COLUMNS)
    atomic_write_csv(ctx.results_path("latency_fit.csv"), fits, FIT_COLUMNS)


STAGE = Stage(
    name="latency",
    run=run,
    sections=("seed", "replicates", "model", "sft", "latency", "looping", "sweep_dtype"),
    splits=("test",),
    needs_sft=True,
    outputs=("results/latency.csv", "results/latency_fit.csv"),
    cell_neutral=("inference_loops",),
)
