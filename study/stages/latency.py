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

*Time at equal quality* (``adaptive_latency.csv``). With an ``adaptive`` section and a
backbone that halts while decoding (``Backbone.decode_halting``: a looped decoder under
``cache_strategy: per_loop``, LoopFormer), the halting policies (``timed_halting``: the
section's taus; ``run_policies`` takes any list) are timed beside the fixed depths, in
the same seeded interleaved rounds at batch 1 (a batch would wait for its slowest row).
A looped decoder's halting window halts each generated token on its own (the prompt's
prefill runs at K_max). LoopFormer keeps its per-prompt ladder (``RungLadder``: its
schedule needs M before a token's first step): the rung is climbed on the prompt, inside
the timed generation, and the answer decoded at that M; its rows say halting ``true``,
rule ``kl``, ``decode_halting`` "prompt". Every cell then also scores its policy's
quality on the distinct examples timed (``min(samples, nll_test)`` of them, after the
timings): the gold solution's NLL fed through the decoding path token by token
(``study.scoring.score_decoding``), so a halting policy halts each gold token as it
would while generating; at a fixed depth this is the NLL stage's value (within 1e-5,
``tests/stages/test_adaptive_latency.py``). Per (model, policy): ``loops_per_token``
(mean loops of the generated tokens fed back; the first comes from the prefill; a
ladder: the M it decoded at, its climb is in the time), ``s_per_sample`` (median) and
``s_p10``/``s_p90`` (from ``PERCENTILE_MIN_SAMPLES`` samples; else empty, see ``note``),
``nll_per_token`` of the gold solutions with a bootstrap CI over questions (the NLL
stage's resamples and confidence), ``gold_loops_per_token`` (the loops of the gold
tokens fed back) and ``quality_examples``.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from study.io import atomic_write_csv, atomic_write_json, read_json
from study.looping.policies import DepthPolicy, RungLadder
from study.manifest import cpu_model, load_average
from study.models.backbones import PolicyRunner, get_backbone
from study.models.entries.loopformer import block_matmul_flops, token_flops  # noqa: F401  (bench imports it here)
from study.pipeline import RunContext, StudyError
from study.scoring import score_decoding
from study.stages.adaptive import halting_policies
from study.stages.stage import Stage
from study.stages.sweep import Cell, Loaded, Sweep
from study.stats import PERCENTILE_MIN_SAMPLES, ci_cells, ratio_ci
from study.tasks.gsm8k import encode_example

LATENCY_COLUMNS = (
    "model", "policy", "inference_loops", "median_s", "p10_s", "p90_s", "prefill_s", "decode_tokens_per_s",
    "new_tokens", "samples", "threads", "device", "load_1m_before", "load_1m_after", "flops_per_token", "note",
)  # fmt: skip
FIT_COLUMNS = ("model", "slope_s_per_loop", "intercept_s", "r_squared")
ADAPTIVE_LATENCY_COLUMNS = (
    "model", "policy", "halting", "decode_halting", "rule", "tau", "loops_per_token", "s_per_sample", "s_p10",
    "s_p90", "samples", "new_tokens", "nll_per_token", "nll_ci_low", "nll_ci_high", "gold_loops_per_token",
    "quality_examples", "note",
)  # fmt: skip


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


def time_generation(
    runner: PolicyRunner, tokenizer, prompt: str, new_tokens: int, device: torch.device
) -> tuple[float, float]:
    """Seconds of one greedy generation of ``new_tokens`` tokens at batch 1, and the mean
    loops its generated tokens ran (those fed back: a halting policy's own count; a
    backbone that reports none ran the policy's depth)."""
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
    fed = result.token_loops
    return seconds, float(np.mean(fed)) if fed else float(runner.policy.inference_loops)


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
    runner on ``prompts[s]`` in the order ``order[s]``. One cell value per runner. A
    halting policy's prefill is not timed (a ladder's prefill is its climb, inside the
    generation's time); each sample records its generated tokens' mean loops."""
    load_before = load_average()
    for i in range(warmup):  # allocator, kernels and caches warm up outside the clock
        for j in order[i % len(order)]:
            time_generation(runners[j], tokenizer, prompts[i % len(prompts)], new_tokens, device)
    seconds: list[list[float]] = [[] for _ in runners]
    token_loops: list[list[float]] = [[] for _ in runners]  # per sample: mean loops of its generated tokens
    prefill: list[list[float]] = [[] for _ in runners]
    position: list[list[int]] = [[] for _ in runners]  # where in its round each sample was timed
    prompt_tokens = []
    bar = progress(total=len(prompts), desc="sample rounds", inner=True) if progress is not None else None
    for prompt, round_order in zip(prompts, order, strict=True):
        ids = tokenizer.encode(prompt, add_special_tokens=False)
        prompt_tokens.append(len(ids))
        for slot, j in enumerate(round_order):
            taken, loops = time_generation(runners[j], tokenizer, prompt, new_tokens, device)
            seconds[j].append(taken)
            token_loops[j].append(loops)
            if runners[j].policy.halting is None:
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
                "token_loops": token_loops[j],
                "prefill_seconds": prefill[j],
                "order_position": position[j],
                "prompt_tokens": prompt_tokens,
                "flops_per_token": round(flops),
                **machine,
            }
        )
    return values


def timing_spread(seconds: np.ndarray) -> tuple[tuple[float | str, float | str], list[str]]:
    """(p10, p90) of the timings from ``PERCENTILE_MIN_SAMPLES`` samples on, else two empty
    cells and the note saying why: the one rule of latency.csv and adaptive_latency.csv."""
    if len(seconds) >= PERCENTILE_MIN_SAMPLES:
        return (float(np.percentile(seconds, 10)), float(np.percentile(seconds, 90))), []
    return ("", ""), [f"median only (n = {len(seconds)} < {PERCENTILE_MIN_SAMPLES})"]


def latency_row(model: str, cell: dict) -> dict:
    """One row of latency.csv. Empty cells are values that do not exist: percentiles of
    fewer than ``PERCENTILE_MIN_SAMPLES`` samples, a decode rate whose generation was no
    slower than its prefill (noise), a load average the OS does not report; ``note`` says
    which."""
    seconds = np.asarray(cell["seconds"], dtype=float)
    prefill = np.asarray(cell["prefill_seconds"], dtype=float)
    if not (len(seconds) and np.isfinite(seconds).all() and np.isfinite(prefill).all()):
        raise StudyError(f"latency: {model} at {cell['inference_loops']} loops has no finite timings to summarise")
    spread, notes = timing_spread(seconds)
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


def quality_value(runner: PolicyRunner, examples: list, progress=None) -> dict:
    """The gold solutions' NLL of ``examples`` decoded by ``runner`` (``score_decoding``:
    batch 1, the gold tokens fed back one per call, so a policy halts each token as it
    does while generating): what a cell records as its policy's quality."""
    scores = score_decoding(runner, examples, progress)
    return {
        "example_ids": [s.example_id for s in scores],
        "answer_tokens": [s.answer_tokens for s in scores],
        "nll_sum": [s.nll_sum for s in scores],
        "executed_loops": [s.executed_loops for s in scores],
    }


def adaptive_latency_row(
    model: str, policy: DepthPolicy, cell: dict, decode_halting: str, bootstrap: tuple[int, float, int]
) -> dict:
    """One row of adaptive_latency.csv: the policy's time per sample (median; p10/p90 from
    ``PERCENTILE_MIN_SAMPLES`` samples on, else empty and said in ``note``), the loops
    its generated tokens ran, and its quality: NLL per token of the gold solutions it
    decoded (``quality_value``) with a bootstrap CI over the questions. ``bootstrap`` is
    (resamples, confidence, seed); a CI of one question is two empty cells."""
    seconds = np.asarray(cell["seconds"], dtype=float)
    quality = cell["quality"]
    nll, tokens = np.asarray(quality["nll_sum"], dtype=float), np.asarray(quality["answer_tokens"], dtype=float)
    if not (len(seconds) and len(nll) and np.isfinite(seconds).all() and np.isfinite(nll).all()):
        raise StudyError(f"latency: {model} at {policy.id} has no finite timings or gold NLL to summarise")
    spread, notes = timing_spread(seconds)
    ci = ci_cells(*ratio_ci(nll, tokens, *bootstrap, what=f"latency: gold NLL of {model} at {policy.id}"))
    halting = policy.halting
    rule, tau = halting if isinstance(halting, tuple) else ("", "")
    return {
        "model": model,
        "policy": policy.id,
        "halting": "true" if halting is not None else "false",
        "decode_halting": decode_halting if halting is not None else "",
        "rule": rule,
        "tau": tau,
        "loops_per_token": float(np.mean(cell["token_loops"])),
        "s_per_sample": float(np.median(seconds)),
        "s_p10": spread[0],
        "s_p90": spread[1],
        "samples": cell["samples"],
        "new_tokens": cell["new_tokens"],
        "nll_per_token": float(nll.sum() / tokens.sum()),
        "nll_ci_low": ci[0],
        "nll_ci_high": ci[1],
        "gold_loops_per_token": float(np.average(quality["executed_loops"], weights=np.maximum(tokens - 1, 1))),
        "quality_examples": len(nll),
        "note": "; ".join(notes),
    }


# ---- cells -------------------------------------------------------------------------------


class TimingStore:
    """One JSON per cell: the raw timings (``measure_depths``) and, when the stage scores
    quality, the gold NLL of the examples timed (``quality_value``)."""

    suffix = ".json"

    def __init__(self, new_tokens: int, samples: int, warmup: int, quality_ids: list[int] | None = None) -> None:
        self.settings = (new_tokens, samples, warmup)
        self.quality_ids = quality_ids

    def read(self, path: Path, cell: Cell) -> dict | None:
        return read_cell(path, cell.policy, *self.settings, quality_ids=self.quality_ids)

    def write(self, path: Path, cell: Cell, value: dict) -> None:
        atomic_write_json(path, value)


def cell_path(ctx: RunContext, model: str, policy: str) -> Path:
    return ctx.cells_dir("latency") / f"{model}-{policy}{TimingStore.suffix}"


def read_cell(
    path: Path, policy: DepthPolicy, new_tokens: int, samples: int, warmup: int, quality_ids: list[int] | None = None
) -> dict | None:
    """A finished cell, or None. A cell of timings taken one depth after another (before
    interleaving: no ``order_position``) is not reused; with ``quality_ids``, neither is
    one without the loops of its samples or the gold NLL of exactly those examples."""
    if not path.is_file():
        return None
    try:
        cell = read_json(path)
        expected: tuple[object, ...] = (
            policy.id,
            policy.inference_loops,
            new_tokens,
            samples,
            warmup,
            samples,
            samples,
        )
        found: tuple[object, ...] = (
            cell["policy"], cell["inference_loops"], cell["new_tokens"], cell["samples"], cell["warmup"],
            len(cell["seconds"]), len(cell["order_position"]),
        )  # fmt: skip
        if quality_ids is not None:
            quality = cell["quality"]
            scored = [len(quality[key]) for key in ("answer_tokens", "nll_sum", "executed_loops")]
            expected += (samples, quality_ids, [len(quality_ids)] * 3)
            found += (len(cell["token_loops"]), quality["example_ids"], scored)
    except (ValueError, KeyError, TypeError):
        return None
    recorded = {"threads", "device", "load_average_before", "load_average_after"} <= set(cell)
    return cell if found == expected and recorded else None


def timed_halting(ctx: RunContext) -> list[DepthPolicy]:
    """The halting policies the stage times beside the fixed depths: the ``adaptive``
    section's (``study.stages.adaptive.halting_policies``; for now its ``taus``) when the
    backbone halts while decoding (``Backbone.decode_halting``), else none. The hook for
    other thresholds (e.g. taus calibrated on the heldout slice): build that list and pass
    it to ``run_policies``."""
    if ctx.config.adaptive is None or ctx.backbone.decode_halting(ctx.config.looping) is None:
        return []
    return halting_policies(ctx)


def run(ctx: RunContext) -> None:
    run_policies(ctx, timed_halting(ctx))


def run_policies(ctx: RunContext, halting: Sequence[DepthPolicy]) -> None:
    """Time the fixed depths of ``latency.inference_loops`` and the ``halting`` policies,
    interleaved, per model (``latency.csv``, ``latency_fit.csv`` of the fixed depths).
    With halting policies every cell also scores its policy's quality on the examples
    timed, and ``adaptive_latency.csv`` has one row per (model, policy)."""
    config = ctx.config.latency
    pool = ctx.examples("nll_test")
    prompts = [pool[i % len(pool)].prompt for i in range(config.samples)]
    quality_examples = pool[: min(config.samples, len(pool))]  # every example timed, once
    grid = ctx.policies(config.inference_loops)
    decode_halting = ctx.backbone.decode_halting(ctx.config.looping)
    for policy in halting:
        if policy.halting is None or policy.backbone != ctx.config.model.backbone or decode_halting is None:
            raise StudyError(f"latency: {policy.id} is not a halting policy this backbone runs while decoding")
    timed = [*grid, *halting]
    scored = bool(halting)
    cells = [Cell(spec, policy) for spec in ctx.model_specs() for policy in timed]
    store = TimingStore(
        config.new_tokens, config.samples, config.warmup, [e.id for e in quality_examples] if scored else None
    )

    def finished(cell: Cell) -> bool:
        return store.read(sweep.path(cell), cell) is not None

    def compute(cell: Cell, loaded: Loaded, progress) -> dict:
        # the first pending policy of a model times all of its pending policies, interleaved;
        # the others are then read from what that measurement left in the model's cache
        measured = loaded.cache.setdefault("latency", {})
        if cell.policy.id not in measured:
            pending = [p for p in timed if p == cell.policy or not finished(Cell(cell.model, p))]
            order = timing_order(len(pending), config.samples, ctx.config.seed, cell.model.name)
            runners = [loaded.runner(p) for p in pending]
            values = measure_depths(
                runners, loaded.tokenizer, prompts, config.new_tokens, config.warmup, ctx.device, order, progress
            )
            if scored:  # after every timing: scoring never shares the clock
                encoded = [encode_example(loaded.tokenizer, e) for e in quality_examples]
                for runner, value in zip(runners, values, strict=True):
                    value["quality"] = quality_value(runner, encoded, progress)
            measured.update({v["policy"]: v for v in values})
        return measured.pop(cell.policy.id)

    def describe(cell: Cell, value: dict) -> str:
        return f"{float(np.median(value['seconds'])):.4f}s per sample of {config.new_tokens} tokens"

    sweep = Sweep(ctx, "latency", store, compute, describe, spread=False)
    values = sweep.run(cells)
    if values is None:  # another process of the run aggregates
        return
    rows, fits, adaptive_rows = [], [], []
    bootstrap = (ctx.config.nll.bootstrap_resamples, ctx.config.nll.confidence, ctx.config.seed)
    for spec in ctx.model_specs():
        model_rows = [latency_row(spec.name, values[Cell(spec, policy)]) for policy in grid]
        rows.extend(model_rows)
        fits.append(fit_row(spec.name, [p.inference_loops for p in grid], [r["median_s"] for r in model_rows]))
        if scored:
            assert decode_halting is not None  # checked with the policies
            for policy in timed:
                cell = values[Cell(spec, policy)]
                # a ladder (either backbone's) chooses its depth once per prompt, whatever the backbone's tokens can do
                how = "prompt" if isinstance(policy, RungLadder) else decode_halting
                adaptive_rows.append(adaptive_latency_row(spec.name, policy, cell, how, bootstrap))
    atomic_write_csv(ctx.results_path("latency.csv"), rows, LATENCY_COLUMNS)
    atomic_write_csv(ctx.results_path("latency_fit.csv"), fits, FIT_COLUMNS)
    if scored:
        atomic_write_csv(ctx.results_path("adaptive_latency.csv"), adaptive_rows, ADAPTIVE_LATENCY_COLUMNS)
    else:  # no halting policy timed: an earlier run's table would describe other cells
        ctx.results_path("adaptive_latency.csv").unlink(missing_ok=True)


STAGE = Stage(
    name="latency",
    run=run,
    # adaptive: the halting policies timed; nll: the bootstrap of their quality's CI
    sections=("seed", "replicates", "model", "sft", "latency", "looping", "sweep_dtype", "adaptive", "nll"),
    splits=("test",),
    needs_sft=True,
    outputs=("results/latency.csv", "results/latency_fit.csv", "results/adaptive_latency.csv"),
    cell_neutral=("inference_loops",),
)
