"""Latency stage: what each loop costs at generation time.

For each model, every depth policy of ``latency.inference_loops`` is timed in the main
process only (through the sweep-cell loop of ``study.stages.sweep``; timings run one at a
time so they do not compete): ``warmup`` untimed runs per depth, then ``samples``
rounds. Each round takes one prompt (the NLL test prompts in order, cycled if there are
fewer) and times every pending depth on it, in a fresh seeded permutation of the depths
(``timing_order``, from the run's seed and the model name): a machine whose speed
drifts during the stage (other jobs starting, thermal limits) spreads the drift over
every depth instead of turning it into a slope over loops. Each timing is a greedy
generation at batch 1 of exactly ``new_tokens`` tokens (no early stop, so every sample
does the same token work) followed by a timed prefill (the prompt's forward pass
alone). On a GPU the clock is read only after ``torch.cuda.synchronize``. Each depth's
timings are still one cell file (resume: only missing depths are timed again, among
themselves).

``latency.csv`` has per (model, depth) the median seconds per sample, its 10th/90th
percentiles only with at least ``PERCENTILE_MIN_SAMPLES`` samples (fewer: empty, and
``note`` says "median only"), the median prefill seconds, the decode rate
(``new_tokens - 1`` tokens over the median of generation minus prefill: the first token
comes from the prefill), the torch thread count, the CPU or GPU model, the 1-minute
load average before and after the model's timings, and the analytic FLOPs per generated
token; ``latency_fit.csv`` the least-squares line of median seconds against loops.
Timings are measurements, so unlike the other stages they are not byte-reproducible.
"""

from __future__ import annotations

import time
import zlib
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from study.io import atomic_write_csv, atomic_write_json, read_json
from study.looping.policies import DepthPolicy
from study.manifest import cpu_model, load_average
from study.models.backbones import PolicyRunner, get_backbone
from study.models.entries.loopformer import block_matmul_flops, token_flops  # noqa: F401  (bench imports it here)
from study.pipeline import RunContext, StudyError
from study.stages.stage import Stage
from study.stages.sweep import Cell, Loaded, Sweep
from study.stats import PERCENTILE_MIN_SAMPLES

LATENCY_COLUMNS = (
    "model", "policy", "inference_loops", "median_s", "p10_s", "p90_s", "prefill_s", "decode_tokens_per_s",
    "new_tokens", "samples", "threads", "device", "load_1m_before", "load_1m_after", "flops_per_token", "note",
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
    return cpu_model()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timing_order(depths: int, samples: int, seed: int, model: str) -> list[list[int]]:
    """For each sample round, the order its ``depths`` are timed in: a fresh permutation per
    round from a generator seeded by the run's seed and the model name (so a rerun times
    in the same order, and two models in different ones)."""
    rng = np.random.default_rng([seed, zlib.crc32(model.encode())])
    return [[int(i) for i in rng.permutation(depths)] for _ in range(samples)]


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


def measure_depths(
    runners: list[PolicyRunner],
    tokenizer,
    prompts: list[str],
    new_tokens: int,
    warmup: int,
    device: torch.device,
    order: list[list[int]],
    progress=None,
) -> list[dict]:
    """Time one model's ``runners`` (one per depth) interleaved: round ``s`` times every
    runner on ``prompts[s]`` in the order ``order[s]``. One cell value per runner."""
    load_before = load_average()
    for i in range(warmup):  # allocator, kernels and caches warm up outside the clock
        for j in order[i % len(order)]:
            time_generation(runners[j], tokenizer, prompts[i % len(prompts)], new_tokens, device)
    seconds: list[list[float]] = [[] for _ in runners]
    prefill: list[list[float]] = [[] for _ in runners]
    position: list[list[int]] = [[] for _ in runners]  # where in its round each sample was timed
    prompt_tokens = []
    bar = progress(total=len(prompts), desc="sample rounds", inner=True) if progress is not None else None
    for prompt, round_order in zip(prompts, order, strict=True):
        ids = tokenizer.encode(prompt, add_special_tokens=False)
        prompt_tokens.append(len(ids))
        for slot, j in enumerate(round_order):
            seconds[j].append(time_generation(runners[j], tokenizer, prompt, new_tokens, device))
            prefill[j].append(time_prefill(runners[j], torch.tensor([ids], device=device), new_tokens, device))
            position[j].append(slot)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    machine = {
        "device": device_name(device),
        "threads": torch.get_num_threads(),
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "interleaved_with": [r.policy.id for r in runners],
    }
    values = []
    for j, runner in enumerate(runners):
        policy = runner.policy
        flops = policy_generation_flops_per_token(
            runner.model.config, policy, float(np.mean(prompt_tokens)), new_tokens
        )
        values.append(
            {
                "policy": policy.id,
                "inference_loops": policy.inference_loops,
                "new_tokens": new_tokens,
                "samples": len(prompts),
                "warmup": warmup,
                "seconds": seconds[j],
                "prefill_seconds": prefill[j],
                "order_position": position[j],
                "prompt_tokens": prompt_tokens,
                "flops_per_token": round(flops),
                **machine,
            }
        )
    return values


def latency_row(model: str, cell: dict) -> dict:
    """One row of latency.csv. Empty cells are values that do not exist: percentiles of
    fewer than ``PERCENTILE_MIN_SAMPLES`` samples, a decode rate whose generation was no
    slower than its prefill (noise), a load average the OS does not report; ``note`` says
    which."""
    seconds = np.asarray(cell["seconds"], dtype=float)
    prefill = np.asarray(cell["prefill_seconds"], dtype=float)
    if not (len(seconds) and np.isfinite(seconds).all() and np.isfinite(prefill).all()):
        raise StudyError(f"latency: {model} at {cell['inference_loops']} loops has no finite timings to summarise")
    notes = []
    spread: tuple[float | str, float | str] = ("", "")
    if len(seconds) >= PERCENTILE_MIN_SAMPLES:
        spread = (float(np.percentile(seconds, 10)), float(np.percentile(seconds, 90)))
    else:
        notes.append(f"median only (n = {len(seconds)} < {PERCENTILE_MIN_SAMPLES})")
    decode_s = float(np.median(seconds - prefill))  # the new_tokens - 1 forwards after the prefill
    decode_rate: float | str = (cell["new_tokens"] - 1) / decode_s if decode_s > 0 else ""
    if decode_rate == "":
        notes.append("decode rate not resolved (generation no slower than prefill)")
    before, after = cell.get("load_average_before"), cell.get("load_average_after")
    return {
        "model": model,
        "policy": cell["policy"],
        "inference_loops": cell["inference_loops"],
        "median_s": float(np.median(seconds)),
        "p10_s": spread[0],
        "p90_s": spread[1],
        "prefill_s": float(np.median(prefill)),
        "decode_tokens_per_s": decode_rate,
        "new_tokens": cell["new_tokens"],
        "samples": cell["samples"],
        "threads": cell["threads"],
        "device": cell["device"],
        "load_1m_before": before[0] if before else "",
        "load_1m_after": after[0] if after else "",
        "flops_per_token": cell["flops_per_token"],
        "note": "; ".join(notes),
    }


def fit_row(model: str, loops: list[int], medians: list[float]) -> dict:
    """Seconds per sample against loop count: slope = the cost of one more loop (empty
    cells when the grid has one loop count: no line to fit)."""
    if len(set(loops)) < 2:
        return {"model": model, "slope_s_per_loop": "", "intercept_s": "", "r_squared": ""}
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
    """One JSON per cell: the raw timings (``measure_depths``)."""

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
    """A finished cell, or None. A cell of timings taken one depth after another (before
    interleaving: no ``order_position``) is not reused."""
    if not path.is_file():
        return None
    try:
        cell = read_json(path)
        expected = (policy.id, policy.inference_loops, new_tokens, samples, warmup, samples, samples)
        found = (
            cell["policy"], cell["inference_loops"], cell["new_tokens"], cell["samples"], cell["warmup"],
            len(cell["seconds"]), len(cell["order_position"]),
        )  # fmt: skip
    except (ValueError, KeyError, TypeError):
        return None
    recorded = {"threads", "device", "load_average_before", "load_average_after"} <= set(cell)
    return cell if found == expected and recorded else None


def run(ctx: RunContext) -> None:
    config = ctx.config.latency
    pool = ctx.examples("nll_test")
    prompts = [pool[i % len(pool)].prompt for i in range(config.samples)]
    grid = ctx.policies(config.inference_loops)
    cells = [Cell(spec, policy) for spec in ctx.model_specs() for policy in grid]
    store = TimingStore(config.new_tokens, config.samples, config.warmup)

    def finished(cell: Cell) -> bool:
        return store.read(sweep.path(cell), cell) is not None

    def compute(cell: Cell, loaded: Loaded, progress) -> dict:
        # the first pending depth of a model times all of its pending depths, interleaved;
        # the others are then read from what that measurement left in the model's cache
        timed = loaded.cache.setdefault("latency", {})
        if cell.policy.id not in timed:
            pending = [p for p in grid if p == cell.policy or not finished(Cell(cell.model, p))]
            order = timing_order(len(pending), config.samples, ctx.config.seed, cell.model.name)
            runners = [loaded.runner(p) for p in pending]
            values = measure_depths(
                runners, loaded.tokenizer, prompts, config.new_tokens, config.warmup, ctx.device, order, progress
            )
            timed.update({v["policy"]: v for v in values})
        return timed.pop(cell.policy.id)

    def describe(cell: Cell, value: dict) -> str:
        return f"{float(np.median(value['seconds'])):.4f}s per sample of {config.new_tokens} tokens"

    sweep = Sweep(ctx, "latency", store, compute, describe, spread=False)
    values = sweep.run(cells)
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
