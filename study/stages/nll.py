"""NLL stage: teacher-forced NLL of the gold GSM8K solution at every inference depth.

Scoring is ``study.scoring.score_continuations`` (lm-eval's ``loglikelihood``: the whole
solution and the final answer of each example); the statistics are ``study.stats``.

For each model × split × depth policy of ``nll.inference_loops``
(``M8`` for LoopFormer, ``euler-w12-15-K3`` for a looped decoder), one cell file
``results/cells/nll/<model>-<split>-<policy>.csv`` is written by the one sweep-cell
loop (``study.stages.sweep``: resume, Ctrl-C, processes); the K cells of a looped
decoder on one split form a cell group that runs the layers before the window once
per batch (``score_continuations_group``: the same rows bit for bit). With a ``schedules``
section (LoopFormer), every schedule of M steps is one more test cell per model,
summarised in ``schedules.csv`` (this stage owns it: same scorer, same loop). The splits
(``study.tasks.gsm8k``): ``test`` (test questions), ``heldout`` (train questions no SFT
subset of the run contains: the diagnostic) and ``seen`` (questions of the first
replicate's SFT subset: SFT data, labelled so wherever it is shown). Then:

- ``nll.csv``: one row per (model, split, policy, example), with the model's replicate
  ``seed`` (empty for the base) and ``train_loops``, the loops the policy runs
  (``inference_loops``) and the loops the example executed;
- ``nll_summary.csv``: token-weighted NLL per cell (sum NLL / sum tokens, the
  headline) with a percentile bootstrap CI over examples;
- ``preferred_depth.csv``: per (model, split), the best loop count and, from a
  paired bootstrap (the same resampled examples for every loop count), each loop's
  gap to the best with its CI and how often it wins (``p_best_is_train_loops`` is
  ``not in grid`` when the training depth is not a loop count of the grid);
  ``train_test_match``: whether the argmins on ``test`` and ``heldout`` (train-split
  questions) agree;
- ``replication.csv`` and ``depth_shift.csv`` (``study.stages.nll_shift``): per model
  family, split and replicate seed the argmin depth and every depth's gap to it, across
  seeds with a two-level (seeds, then questions) bootstrap; and for every two training
  depths the paired curve D(K) = NLL_a(K) - NLL_b(K) and the shift S = D(K_a) - D(K_b);
- ``schedules.csv``: per (model, schedule) on the test slice, NLL per token with its
  bootstrap CI and its rank among the schedules (1 = lowest NLL).

Everything is deterministic for a given seed on CPU: fixed batching, float64 sums,
seeded numpy generators.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import stats

from study.config import sft_model_name
from study.io import atomic_write_csv, read_csv
from study.looping.policies import DepthPolicy, StepSchedule
from study.looping.schedules import enumerate_schedules, uniform_schedule
from study.pipeline import RunContext
from study.scoring import ContinuationScore, score_continuations, score_continuations_group
from study.stages.nll_shift import (
    DEPTH_SHIFT_COLUMNS,
    NOT_IN_GRID,
    REPLICATION_COLUMNS,
    DepthCurves,
    depth_shift_rows,
    replication_rows,
)
from study.stages.stage import Stage
from study.stages.sweep import Cell, Loaded, Sweep
from study.stats import ci_cells, paired_depth_bootstrap, ratio_ci, ratio_of_sums
from study.tasks.gsm8k import encode_example

SPLITS = {"test": "nll_test", "heldout": "nll_heldout", "seen": "nll_seen"}  # split value -> ctx.examples subset
NLL_COLUMNS = (  # a cell file's columns
    "model", "split", "policy", "inference_loops", "executed_loops", "example_id", "answer_tokens", "nll_sum",
    "final_tokens", "final_nll_sum",
)  # fmt: skip
NLL_CSV_COLUMNS = (NLL_COLUMNS[0], "seed", "train_loops", *NLL_COLUMNS[1:])  # nll.csv: the model's seed and depth
SUMMARY_COLUMNS = (
    "model", "seed", "split", "policy", "inference_loops", "executed_loops", "examples", "tokens", "nll_per_token",
    "ci_low", "ci_high", "example_mean_nll", "final_tokens", "final_nll_per_token", "final_ci_low", "final_ci_high",
)  # fmt: skip
PREFERRED_COLUMNS = (
    "model", "seed", "split", "train_loops", "policy", "inference_loops", "nll_per_token", "best_loops", "best_nll",
    "is_best", "gap_to_best", "gap_ci_low", "gap_ci_high", "p_best", "p_best_is_train_loops", "train_test_match",
)  # fmt: skip

SCHEDULE_COLUMNS = (
    "model", "split", "policy", "steps", "uniform", "nll_per_token", "ci_low", "ci_high", "rank",
)  # fmt: skip


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


def encoded_split(cell: Cell, loaded: Loaded, examples: list) -> list:
    encoded = loaded.cache.get(split_of(cell))
    if encoded is None:  # each split is encoded once per model
        encoded = loaded.cache[split_of(cell)] = [encode_example(loaded.tokenizer, e) for e in examples]
    return encoded


def score_cell(cell: Cell, loaded: Loaded, examples: list, batch_size: int, progress=None) -> list[dict]:
    encoded = encoded_split(cell, loaded, examples)
    return cell_rows(cell, score_continuations(loaded.runner(cell.policy), encoded, batch_size, progress=progress))


def score_cell_group(cells: list[Cell], loaded: Loaded, examples: list, batch_size: int, progress=None) -> list:
    """``score_cell`` of each cell of one model and split whose policies share their first
    layers (the sweep's cell group), those layers computed once per batch; same rows."""
    encoded = encoded_split(cells[0], loaded, examples)
    runners = [loaded.runner(cell.policy) for cell in cells]
    scores = score_continuations_group(runners, encoded, batch_size, progress=progress)
    return [cell_rows(cell, cell_scores) for cell, cell_scores in zip(cells, scores, strict=True)]


def cell_rows(cell: Cell, scores: list[ContinuationScore]) -> list[dict]:
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

    def compute_group(cells: list[Cell], loaded: Loaded, progress) -> list[list[dict]]:
        # the sweep groups cells of one split only (its default group key)
        return score_cell_group(cells, loaded, examples[split_of(cells[0])], config.batch_size, progress)

    def describe(cell: Cell, rows: list[dict]) -> str:
        return f"{sum(r['nll_sum'] for r in rows) / sum(r['answer_tokens'] for r in rows):.4f} nats/token"

    store = NLLStore({split: [e.id for e in subset] for split, subset in examples.items()})
    values = Sweep(ctx, "nll", store, compute, describe, compute_group=compute_group).run(cells)
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
    # one example has no interval: empty cells (study.stats.ci_cells), never NaN
    ci = ci_cells(*ratio_ci(nll, tokens, resamples, confidence, seed))
    final_ci = ci_cells(*ratio_ci(final_nll, final_tokens, resamples, confidence, seed))
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
    of_model = {spec.name: {"seed": spec.seed, "train_loops": spec.train_loops} for spec in specs}
    nll_rows = [{**row, **of_model[key[0]]} for key in order for row in rows_of[key]]
    atomic_write_csv(ctx.results_path("nll.csv"), nll_rows, NLL_CSV_COLUMNS)

    summary = []
    for name, split, policy in order:
        stats_row = cell_summary(rows_of[name, split, policy], config.bootstrap_resamples, config.confidence, seed)
        summary.append(
            {
                "model": name,
                "seed": of_model[name]["seed"],
                "split": split,
                "policy": policy.id,
                "inference_loops": policy.inference_loops,
                **stats_row,
            }
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
        # do test questions and unseen train-split questions prefer the same depth?
        match = loops[results["test"].best_index] == loops[results["heldout"].best_index]
        for split, result in results.items():
            best = result.best_index
            # a train depth outside the grid has no share to report: said in words, never as 0.0
            p_train = result.p_best[loops.index(spec.train_loops)] if spec.train_loops in loops else NOT_IN_GRID
            for i, policy in enumerate(grid):
                gap_ci = ci_cells(*result.gap_ci[i])
                preferred.append(
                    {
                        "model": spec.name,
                        "seed": spec.seed,
                        "split": split,
                        "train_loops": spec.train_loops,
                        "policy": policy.id,
                        "inference_loops": policy.inference_loops,
                        "nll_per_token": result.nll_per_token[i],
                        "best_loops": loops[best],
                        "best_nll": result.nll_per_token[best],
                        "is_best": i == best,
                        "gap_to_best": result.gap[i],
                        "gap_ci_low": gap_ci[0],
                        "gap_ci_high": gap_ci[1],
                        "p_best": result.p_best[i],
                        "p_best_is_train_loops": p_train,
                        "train_test_match": match,
                    }
                )
    atomic_write_csv(ctx.results_path("preferred_depth.csv"), preferred, PREFERRED_COLUMNS)
    write_shift(ctx, rows_of, grid)


def depth_curves(
    ctx: RunContext, rows_of: dict[tuple[str, str, DepthPolicy], list[dict]], grid: list[DepthPolicy]
) -> list[DepthCurves]:
    """One ``DepthCurves`` per model family (the base; each training depth over its
    replicate seeds) and split, from the cells' rows: NLL sums [seeds, depths, questions]."""
    families: dict[str, list] = {}
    for spec in ctx.model_specs():
        family = spec.name if spec.seed is None else sft_model_name(spec.train_loops)
        families.setdefault(family, []).append(spec)
    curves = []
    for family, specs in families.items():
        for split in SPLITS:
            first = rows_of[specs[0].name, split, grid[0]]
            nll = [[[r["nll_sum"] for r in rows_of[spec.name, split, policy]] for policy in grid] for spec in specs]
            curves.append(
                DepthCurves(
                    model=family,
                    train_loops=specs[0].train_loops,
                    split=split,
                    inference_loops=[policy.inference_loops for policy in grid],
                    seeds=[spec.seed for spec in specs],
                    example_ids=[r["example_id"] for r in first],
                    nll=np.array(nll, dtype=np.float64),
                    tokens=np.array([r["answer_tokens"] for r in first]),
                )
            )
    return curves


def write_shift(
    ctx: RunContext, rows_of: dict[tuple[str, str, DepthPolicy], list[dict]], grid: list[DepthPolicy]
) -> None:
    """``replication.csv`` and ``depth_shift.csv`` (``study.stages.nll_shift``): each depth's
    gap to the argmin per seed and across seeds, and the paired shift between two
    training depths' curves, with two-level (seeds, then questions) bootstrap CIs."""
    config = ctx.config.nll
    curves = depth_curves(ctx, rows_of, grid)
    args = (config.bootstrap_resamples, config.confidence, ctx.config.seed)
    atomic_write_csv(ctx.results_path("replication.csv"), replication_rows(curves, *args), REPLICATION_COLUMNS)
    atomic_write_csv(ctx.results_path("depth_shift.csv"), depth_shift_rows(curves, *args), DEPTH_SHIFT_COLUMNS)


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
    sections=("seed", "replicates", "model", "data", "sft", "nll", "looping", "schedules", "sweep_dtype"),
    splits=("train", "test"),  # GSM8K's files: heldout and seen questions come from train
    needs_sft=True,
    outputs=(
        "results/nll.csv",
        "results/nll_summary.csv",
        "results/preferred_depth.csv",
        "results/replication.csv",
        "results/depth_shift.csv",
        "results/schedules.csv",
    ),
    cell_neutral=("inference_loops", "bootstrap_resamples", "confidence"),
)
