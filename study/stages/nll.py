"""NLL stage: teacher-forced NLL of the gold GSM8K solution at every inference depth.

Scoring follows lm-eval's ``loglikelihood``: each continuation token is scored by the
logits at the position before it. lm-eval 0.4 encodes prompt + continuation as one
string and splits the ids at the prompt's token count; ``encode_example`` encodes the
prompt, the solution and the final answer separately and joins them. On GSM8K both
give the same ids, because every piece after the prompt starts with a space (``" {answer}"``,
``"#### 18"`` split before ``" 18"``) and byte-level BPE never merges across that
boundary: checked on all 8,792 bundled records with GPT-2's tokenizer and the mini
model's (``tests/test_data.py`` keeps a sample of it). Two targets per example: the
whole solution (tokens from ``answer_start``) and the final answer alone (from ``final_start``).

For each model × split (``test``, ``train``) × depth policy of ``nll.inference_loops``
(``M8`` for LoopFormer, ``euler-w12-15-K3`` for a looped decoder), one cell file
``results/cells/nll/<model>-<split>-<policy>.csv`` is written by the one sweep-cell
loop (``study.stages.sweep``: resume, Ctrl-C, processes). With a ``schedules``
section (LoopFormer), every schedule of M steps is one more test cell per model,
summarised in ``schedules.csv`` (this stage owns it: same scorer, same loop). Then:

- ``nll.csv``: one row per (model, split, policy, example), with the loops the
  policy runs (``inference_loops``) and the loops the example executed;
- ``nll_summary.csv``: token-weighted NLL per cell (sum NLL / sum tokens, the
  headline) with a percentile bootstrap CI over examples;
- ``preferred_depth.csv``: per (model, split), the best loop count and, from a
  paired bootstrap (the same resampled examples for every loop count), each loop's
  gap to the best with its CI and how often it wins;
- ``schedules.csv``: per (model, schedule) on the test slice, NLL per token with its
  bootstrap CI and its rank among the schedules (1 = lowest NLL).

Everything is deterministic for a given seed on CPU: fixed batching, float64 sums,
seeded numpy generators.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import ArrayLike
from scipy import stats

from study.io import atomic_write_csv, read_csv
from study.looping.policies import DepthPolicy, StepSchedule, UniformLoops
from study.looping.schedules import enumerate_schedules, uniform_schedule
from study.models.backbones import PolicyRunner, bind
from study.pipeline import RunContext, StudyError
from study.stages.stage import Stage
from study.stages.sweep import Cell, Loaded, Sweep
from study.tasks.gsm8k import EncodedExample, encode_example

SPLITS = {"test": "nll_test", "train": "nll_train"}  # split column value -> ctx.examples subset
NLL_COLUMNS = (
    "model", "split", "policy", "inference_loops", "executed_loops", "example_id", "answer_tokens", "nll_sum",
    "final_tokens", "final_nll_sum",
)  # fmt: skip
SUMMARY_COLUMNS = (
    "model", "split", "policy", "inference_loops", "executed_loops", "examples", "tokens", "nll_per_token", "ci_low",
    "ci_high", "example_mean_nll", "final_tokens", "final_nll_per_token", "final_ci_low", "final_ci_high",
)  # fmt: skip
PREFERRED_COLUMNS = (
    "model", "split", "train_loops", "policy", "inference_loops", "nll_per_token", "best_loops", "best_nll",
    "is_best", "gap_to_best", "gap_ci_low", "gap_ci_high", "p_best", "p_best_is_train_loops", "train_test_match",
)  # fmt: skip
SCHEDULE_COLUMNS = (
    "model", "split", "policy", "steps", "uniform", "nll_per_token", "ci_low", "ci_high", "rank",
)  # fmt: skip


# ---- scoring --------------------------------------------------------------------------


@dataclass(frozen=True)
class ContinuationScore:
    example_id: int
    answer_tokens: int  # tokens of the whole gold solution
    nll_sum: float  # their summed NLL (nats)
    final_tokens: int  # tokens of the final answer (after '####')
    final_nll_sum: float
    executed_loops: float = 0.0  # loops the policy ran for this example (its own count for a halting rule)


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, longest first (so an out-of-memory
    batch fails at once, not at the end); ties keep input order, so batching is fixed."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def fit_to_window(example: EncodedExample, block_size: int) -> EncodedExample:
    """The last ``block_size + 1`` tokens, as lm-eval truncates: the final token is only
    ever a target, so a window of ``block_size`` inputs scores ``block_size + 1`` tokens.
    Only over-long sequences lose their earliest (prompt) tokens."""
    cut = len(example.input_ids) - (block_size + 1)
    if cut <= 0:
        return example
    return EncodedExample(
        example.example_id,
        example.input_ids[cut:],
        max(example.answer_start - cut, 1),
        max(example.final_start - cut, 1),
    )


def loopformer_policy(model, schedule: Sequence[float] | None, num_loops: int | None) -> DepthPolicy:
    """The policy of LoopFormer's ``schedule``/``num_loops`` arguments (its train_loops when neither)."""
    if schedule is not None:
        return StepSchedule(tuple(schedule))
    # neither: the model's own default depth (stand-in models without one loop once)
    return UniformLoops(num_loops if num_loops is not None else int(getattr(model.config, "train_loops", 1)))


@torch.inference_mode()
def score_continuations(
    model,
    examples: Sequence[EncodedExample],
    batch_size: int,
    schedule: Sequence[float] | None = None,
    num_loops: int | None = None,
    progress=None,
) -> list[ContinuationScore]:
    """Summed NLL of each example's solution and final answer, in input order.

    ``model`` is a ``PolicyRunner`` (any backbone at any depth policy) or a LoopFormer
    run at ``schedule``/``num_loops``. ``progress(total=..., desc=...)`` may give a bar
    over the examples.

    Batches are right-padded and passed *without* an attention mask: attention is
    causal, so a real token never sees the padding after it, positions are plain
    ``arange`` as for an unpadded row, and SDPA keeps its fused causal kernel. The
    padded positions are never gathered, so padding is never scored. Only the
    positions that predict continuation tokens go through the LM head, and the last
    token, which predicts nothing, is not fed at all."""
    runner = model if isinstance(model, PolicyRunner) else bind(model, loopformer_policy(model, schedule, num_loops))
    device = runner.device
    examples = [fit_to_window(e, runner.context_limit) for e in examples]
    scores: list[ContinuationScore | None] = [None] * len(examples)
    bar = progress(total=len(examples), desc="examples", inner=True) if progress is not None else None
    for batch in length_batches([len(e.input_ids) for e in examples], batch_size):
        rows = [examples[i] for i in batch]
        width = max(len(e.input_ids) for e in rows) - 1
        input_ids = torch.zeros((len(rows), width), dtype=torch.long)
        for r, example in enumerate(rows):
            input_ids[r, : len(example.input_ids) - 1] = torch.tensor(example.input_ids[:-1])
        prompt_lengths = torch.tensor([e.answer_start for e in rows])  # a halting policy decides from these
        hidden, executed = runner.hidden(input_ids.to(device), prompt_lengths)  # [B, T, H], [B]
        # token t (t >= answer_start) is predicted by the hidden state at t - 1
        counts = [len(e.input_ids) - e.answer_start for e in rows]
        row_index = torch.cat([torch.full((count,), r) for r, count in enumerate(counts)])
        positions = torch.cat([torch.arange(e.answer_start - 1, len(e.input_ids) - 1) for e in rows])
        targets = torch.cat([torch.tensor(e.input_ids[e.answer_start :]) for e in rows])
        logits = runner.head(hidden[row_index.to(device), positions.to(device)])
        token_nll = F.cross_entropy(logits.float(), targets.to(device), reduction="none").double().cpu()
        for r, (example, index, nll) in enumerate(zip(rows, batch, token_nll.split(counts), strict=True)):
            final_from = example.final_start - example.answer_start
            scores[index] = ContinuationScore(
                example_id=example.example_id,
                answer_tokens=len(nll),
                nll_sum=float(nll.sum()),
                final_tokens=len(nll) - final_from,
                final_nll_sum=float(nll[final_from:].sum()),
                executed_loops=float(executed[r]),
            )
        if bar is not None:
            bar.update(len(rows))
    if bar is not None:
        bar.close()
    return scores  # type: ignore[return-value]


# ---- statistics (plain arrays in, plain floats out) --------------------------------------


def require_finite(what: str, *arrays: np.ndarray) -> None:
    """Statistics of NaN or infinite NLL are not numbers to report: a diverged model, or
    overflowing weights, must stop the run rather than win an argmin."""
    bad = sum(int(np.size(a) - np.isfinite(a).sum()) for a in arrays)
    if bad:
        total = sum(int(np.size(a)) for a in arrays)
        raise StudyError(
            f"{what}: {bad} of {total} input values are NaN or infinite (a model that trained to NaN, or "
            "overflowing weights); the statistic is refused. Check results/nll.csv and the SFT loss"
        )


def ratio_of_sums(nll: np.ndarray, tokens: np.ndarray, axis: int = -1) -> np.ndarray:
    """Token-weighted NLL: sum of NLL over sum of tokens (vectorised along ``axis``)."""
    return np.sum(nll, axis=axis) / np.sum(tokens, axis=axis)


def ratio_ci(nll: ArrayLike, tokens: ArrayLike, resamples: int, confidence: float, seed: int) -> tuple[float, float]:
    """Percentile bootstrap CI of sum(nll)/sum(tokens), resampling examples (pairs)."""
    nll, tokens = np.asarray(nll, dtype=float), np.asarray(tokens, dtype=float)
    require_finite("nll: bootstrap CI", nll, tokens)
    if len(nll) < 2:
        return float("nan"), float("nan")  # one example: no spread to resample
    result = stats.bootstrap(
        (nll, tokens),
        ratio_of_sums,
        paired=True,
        vectorized=True,
        n_resamples=resamples,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


@dataclass(frozen=True)
class DepthPreference:
    best_index: int  # into the loop axis
    nll_per_token: list[float]
    gap: list[float]  # nll_per_token - best
    gap_ci: list[tuple[float, float]]
    p_best: list[float]  # share of resamples in which each loop count has the lowest NLL


def paired_depth_bootstrap(
    nll: np.ndarray, tokens: np.ndarray, resamples: int, confidence: float, seed: int
) -> DepthPreference:
    """``nll`` is (loops, examples) summed NLL, ``tokens`` (examples,) token counts (the
    same at every depth). scipy's paired bootstrap draws one set of example indices per
    resample and scores every loop count on it, so gaps and wins are paired across depths."""
    nll, tokens = np.asarray(nll, dtype=float), np.asarray(tokens, dtype=float)
    require_finite("nll: preferred depth", nll, tokens)
    loops = len(nll)
    point = ratio_of_sums(nll, tokens)
    best = int(np.argmin(point))
    if nll.shape[1] < 2:  # one example: nothing to resample
        return DepthPreference(
            best_index=best,
            nll_per_token=[float(v) for v in point],
            gap=[float(v - point[best]) for v in point],
            gap_ci=[(float("nan"), float("nan"))] * loops,
            p_best=[float(i == best) for i in range(loops)],
        )

    def per_depth_and_gaps(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
        *rows, counts = samples
        ratios = np.stack([ratio_of_sums(row, counts, axis=axis) for row in rows])
        return np.concatenate([ratios, ratios - ratios[best]])

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)  # the best's gap to itself is 0
        result = stats.bootstrap(
            (*nll, tokens),
            per_depth_and_gaps,
            paired=True,
            vectorized=True,
            n_resamples=resamples,
            confidence_level=confidence,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
    ratios = result.bootstrap_distribution[:loops]  # (loops, resamples)
    low, high = result.confidence_interval.low[loops:], result.confidence_interval.high[loops:]
    wins = np.bincount(np.argmin(ratios, axis=0), minlength=loops) / resamples
    return DepthPreference(
        best_index=best,
        nll_per_token=[float(v) for v in point],
        gap=[float(v - point[best]) for v in point],
        gap_ci=[(float(a), float(b)) for a, b in zip(low, high, strict=True)],
        p_best=[float(v) for v in wins],
    )


# ---- cells ---------------------------------------------------------------------------------


class NLLStore:
    """One CSV per cell: its examples' rows (``NLL_COLUMNS``)."""

    suffix = ".csv"

    def __init__(self, example_ids: dict[str, list[int]]) -> None:
        self.example_ids = example_ids  # per split

    def read(self, path: Path, cell: Cell) -> list[dict] | None:
        return read_cell(path, self.example_ids[split_of(cell)], cell.policy.id)

    def write(self, path: Path, cell: Cell, rows: list[dict]) -> None:
        atomic_write_csv(path, rows, NLL_COLUMNS)


def split_of(cell: Cell) -> str:
    """The split of an NLL cell (every one has its split)."""
    assert cell.split is not None, f"NLL cell {cell.name} has no split"
    return cell.split


def cell_path(ctx: RunContext, model: str, split: str, policy: str) -> Path:
    return ctx.cells_dir("nll") / f"{model}-{split}-{policy}{NLLStore.suffix}"


def read_cell(path: Path, example_ids: list[int], policy: str | None = None) -> list[dict] | None:
    """A finished cell's rows (typed), or None when missing, unreadable or not for these
    examples (or, given ``policy``, for another policy)."""
    if not path.is_file():
        return None
    try:
        rows = [
            {
                "model": r["model"],
                "split": r["split"],
                "policy": r["policy"],
                "inference_loops": int(r["inference_loops"]),
                "executed_loops": float(r["executed_loops"]),
                "example_id": int(r["example_id"]),
                "answer_tokens": int(r["answer_tokens"]),
                "nll_sum": float(r["nll_sum"]),
                "final_tokens": int(r["final_tokens"]),
                "final_nll_sum": float(r["final_nll_sum"]),
            }
            for r in read_csv(path)
        ]
    except (KeyError, ValueError, TypeError):
        return None  # unreadable: recompute
    if policy is not None and any(r["policy"] != policy for r in rows):
        return None
    return rows if [r["example_id"] for r in rows] == example_ids else None


def score_cell(cell: Cell, loaded: Loaded, examples: list, batch_size: int, progress=None) -> list[dict]:
    encoded = loaded.cache.get(split_of(cell))
    if encoded is None:  # each split is encoded once per model
        encoded = loaded.cache[split_of(cell)] = [encode_example(loaded.tokenizer, e) for e in examples]
    scores = score_continuations(loaded.runner(cell.policy), encoded, batch_size, progress=progress)
    return [
        {
            "model": cell.model.name,
            "split": cell.split,
            "policy": cell.policy.id,
            "inference_loops": cell.policy.inference_loops,
            "executed_loops": s.executed_loops,
            "example_id": s.example_id,
            "answer_tokens": s.answer_tokens,
            "nll_sum": s.nll_sum,
            "final_tokens": s.final_tokens,
            "final_nll_sum": s.final_nll_sum,
        }
        for s in scores
    ]


def schedule_policies(ctx: RunContext) -> list[StepSchedule]:
    """Every schedule of the ``schedules`` section, plus the uniform one when the grid
    of step sizes cannot express it (e.g. 3 steps in eighths)."""
    if ctx.config.schedules is None:
        return []
    found = enumerate_schedules(ctx.config.schedules.loops, ctx.config.schedules.granularity)
    uniform = uniform_schedule(ctx.config.schedules.loops)
    return found if any(p.is_uniform for p in found) else [*found, uniform]


def run(ctx: RunContext) -> None:
    config = ctx.config.nll
    grid = ctx.policies(config.inference_loops)
    examples = {split: ctx.examples(subset) for split, subset in SPLITS.items()}
    schedules = schedule_policies(ctx)
    cells = [Cell(spec, policy, split) for spec in ctx.model_specs() for split in SPLITS for policy in grid]
    cells += [Cell(spec, policy, "test") for spec in ctx.model_specs() for policy in schedules]
    # model-major order: a process's share of the cells loads each model once
    order = {spec.name: i for i, spec in enumerate(ctx.model_specs())}
    cells.sort(key=lambda c: order[c.model.name])

    def compute(cell: Cell, loaded: Loaded, progress) -> list[dict]:
        return score_cell(cell, loaded, examples[split_of(cell)], config.batch_size, progress)

    def describe(cell: Cell, rows: list[dict]) -> str:
        return f"{sum(r['nll_sum'] for r in rows) / sum(r['answer_tokens'] for r in rows):.4f} nats/token"

    store = NLLStore({split: [e.id for e in subset] for split, subset in examples.items()})
    values = Sweep(ctx, "nll", store, compute, describe).run(cells)
    if values is None:  # another process of the run aggregates
        return
    by_key = {(c.model.name, split_of(c), c.policy.id): rows for c, rows in values.items()}
    write_results(ctx, by_key, grid)
    if schedules:
        write_schedules(ctx, by_key, schedules)


def cell_summary(rows: list[dict], resamples: int, confidence: float, seed: int) -> dict:
    """Token-weighted NLL of one cell with its bootstrap CI (whole solution and final answer)."""
    nll = np.array([r["nll_sum"] for r in rows])
    tokens = np.array([r["answer_tokens"] for r in rows])
    final_nll = np.array([r["final_nll_sum"] for r in rows])
    final_tokens = np.array([r["final_tokens"] for r in rows])
    ci = ratio_ci(nll, tokens, resamples, confidence, seed)
    final_ci = ratio_ci(final_nll, final_tokens, resamples, confidence, seed)
    return {
        "executed_loops": float(np.mean([r["executed_loops"] for r in rows])),
        "examples": len(rows),
        "tokens": int(tokens.sum()),
        "nll_per_token": float(ratio_of_sums(nll, tokens)),
        "ci_low": ci[0],
        "ci_high": ci[1],
        "example_mean_nll": float(np.mean(nll / tokens)),  # each example weighted equally
        "final_tokens": int(final_tokens.sum()),
        "final_nll_per_token": float(ratio_of_sums(final_nll, final_tokens)),
        "final_ci_low": final_ci[0],
        "final_ci_high": final_ci[1],
    }


def write_results(ctx: RunContext, cells: dict[tuple[str, str, str], list[dict]], grid: list[DepthPolicy]) -> None:
    config, seed = ctx.config.nll, ctx.config.seed
    specs = ctx.model_specs()
    order = [(spec.name, split, policy) for spec in specs for split in SPLITS for policy in grid]
    rows_of = {key: cells[key[0], key[1], key[2].id] for key in order}
    atomic_write_csv(ctx.results_path("nll.csv"), [row for key in order for row in rows_of[key]], NLL_COLUMNS)

    summary = []
    for name, split, policy in order:
        stats_row = cell_summary(rows_of[name, split, policy], config.bootstrap_resamples, config.confidence, seed)
        summary.append(
            {"model": name, "split": split, "policy": policy.id, "inference_loops": policy.inference_loops, **stats_row}
        )
    atomic_write_csv(ctx.results_path("nll_summary.csv"), summary, SUMMARY_COLUMNS)

    loops = [policy.inference_loops for policy in grid]
    preferred = []
    for spec in specs:
        results = {}
        for split in SPLITS:
            nll = np.array([[r["nll_sum"] for r in rows_of[spec.name, split, policy]] for policy in grid])
            tokens = np.array([r["answer_tokens"] for r in rows_of[spec.name, split, grid[0]]])
            results[split] = paired_depth_bootstrap(nll, tokens, config.bootstrap_resamples, config.confidence, seed)
        match = loops[results["test"].best_index] == loops[results["train"].best_index]
        for split, result in results.items():
            best = result.best_index
            # a train depth outside the grid never wins a resample
            p_train = result.p_best[loops.index(spec.train_loops)] if spec.train_loops in loops else 0.0
            for i, policy in enumerate(grid):
                preferred.append(
                    {
                        "model": spec.name,
                        "split": split,
                        "train_loops": spec.train_loops,
                        "policy": policy.id,
                        "inference_loops": policy.inference_loops,
                        "nll_per_token": result.nll_per_token[i],
                        "best_loops": loops[best],
                        "best_nll": result.nll_per_token[best],
                        "is_best": i == best,
                        "gap_to_best": result.gap[i],
                        "gap_ci_low": result.gap_ci[i][0],
                        "gap_ci_high": result.gap_ci[i][1],
                        "p_best": result.p_best[i],
                        "p_best_is_train_loops": p_train,
                        "train_test_match": match,
                    }
                )
    atomic_write_csv(ctx.results_path("preferred_depth.csv"), preferred, PREFERRED_COLUMNS)


def write_schedules(
    ctx: RunContext, cells: dict[tuple[str, str, str], list[dict]], schedules: list[StepSchedule]
) -> None:
    """``schedules.csv``: every schedule's test NLL per model, ranked (1 = lowest NLL;
    equal NLLs share the lower rank)."""
    config, seed = ctx.config.nll, ctx.config.seed
    rows = []
    for spec in ctx.model_specs():
        values = []
        for policy in schedules:
            rows_of = cells[spec.name, "test", policy.id]
            values.append((policy, cell_summary(rows_of, config.bootstrap_resamples, config.confidence, seed)))
        ranks = stats.rankdata([s["nll_per_token"] for _, s in values], method="min")
        for (policy, summary), rank in zip(values, ranks, strict=True):
            rows.append(
                {
                    "model": spec.name,
                    "split": "test",
                    "policy": policy.id,
                    "steps": " ".join(f"{s:g}" for s in policy.steps),
                    "uniform": policy.is_uniform,
                    "nll_per_token": summary["nll_per_token"],
                    "ci_low": summary["ci_low"],
                    "ci_high": summary["ci_high"],
                    "rank": int(rank),
                }
            )
    atomic_write_csv(ctx.results_path("schedules.csv"), rows, SCHEDULE_COLUMNS)


STAGE = Stage(
    name="nll",
    run=run,
    sections=("seed", "model", "data", "sft", "nll", "looping", "schedules"),
    splits=("train", "test"),
    needs_sft=True,
    outputs=("results/nll.csv", "results/nll_summary.csv", "results/preferred_depth.csv", "results/schedules.csv"),
    cell_neutral=("inference_loops", "bootstrap_resamples", "confidence"),
)
