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

For each model (loaded once) × split (``test``, ``train``) × loop count, one cell
file ``results/cells/nll/<model>-<split>-L<loops>.csv`` is written atomically; a
rerun reads finished cells back instead of recomputing them. Then:

- ``nll.csv``: one row per (model, split, loops, example);
- ``nll_summary.csv``: token-weighted NLL per cell (sum NLL / sum tokens, the
  headline) with a percentile bootstrap CI over examples;
- ``preferred_depth.csv``: per (model, split), the best loop count and, from a
  paired bootstrap (the same resampled examples for every loop count), each loop's
  gap to the best with its CI and how often it wins.

Everything is deterministic for a given seed on CPU: fixed batching, float64 sums,
seeded numpy generators.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats

from study.io import atomic_write_csv, read_csv
from study.pipeline import RunContext, StudyError, cell_name
from study.tasks.gsm8k import EncodedExample, encode_example

SPLITS = {"test": "nll_test", "train": "nll_train"}  # split column value -> ctx.examples subset
NLL_COLUMNS = (
    "model", "split", "inference_loops", "example_id", "answer_tokens", "nll_sum", "final_tokens", "final_nll_sum",
)  # fmt: skip
SUMMARY_COLUMNS = (
    "model", "split", "inference_loops", "examples", "tokens", "nll_per_token", "ci_low", "ci_high",
    "example_mean_nll", "final_tokens", "final_nll_per_token", "final_ci_low", "final_ci_high",
)  # fmt: skip
PREFERRED_COLUMNS = (
    "model", "split", "train_loops", "inference_loops", "nll_per_token", "best_loops", "best_nll", "is_best",
    "gap_to_best", "gap_ci_low", "gap_ci_high", "p_best", "p_best_is_train_loops", "train_test_match",
)  # fmt: skip


# ---- scoring --------------------------------------------------------------------------


@dataclass(frozen=True)
class ContinuationScore:
    example_id: int
    answer_tokens: int  # tokens of the whole gold solution
    nll_sum: float  # their summed NLL (nats)
    final_tokens: int  # tokens of the final answer (after '####')
    final_nll_sum: float


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


@torch.inference_mode()
def score_continuations(
    model,
    examples: Sequence[EncodedExample],
    batch_size: int,
    schedule: Sequence[float] | None = None,
    num_loops: int | None = None,
) -> list[ContinuationScore]:
    """Summed NLL of each example's solution and final answer, in input order.

    Batches are right-padded and passed *without* an attention mask: attention is
    causal, so a real token never sees the padding after it, positions are plain
    ``arange`` as for an unpadded row, and SDPA keeps its fused causal kernel. The
    padded positions are never gathered, so padding is never scored. Only the
    positions that predict continuation tokens go through the LM head, and the last
    token, which predicts nothing, is not fed at all."""
    device = next(model.parameters()).device
    examples = [fit_to_window(e, model.config.block_size) for e in examples]
    scores: list[ContinuationScore | None] = [None] * len(examples)
    for batch in length_batches([len(e.input_ids) for e in examples], batch_size):
        rows = [examples[i] for i in batch]
        width = max(len(e.input_ids) for e in rows) - 1
        input_ids = torch.zeros((len(rows), width), dtype=torch.long)
        for r, example in enumerate(rows):
            input_ids[r, : len(example.input_ids) - 1] = torch.tensor(example.input_ids[:-1])
        hidden = model.gpt(
            input_ids.to(device), schedule=schedule, num_loops=num_loops, use_cache=False
        ).last_hidden_state
        # token t (t >= answer_start) is predicted by the hidden state at t - 1
        counts = [len(e.input_ids) - e.answer_start for e in rows]
        row_index = torch.cat([torch.full((count,), r) for r, count in enumerate(counts)])
        positions = torch.cat([torch.arange(e.answer_start - 1, len(e.input_ids) - 1) for e in rows])
        targets = torch.cat([torch.tensor(e.input_ids[e.answer_start :]) for e in rows])
        logits = model.lm_head(hidden[row_index.to(device), positions.to(device)])
        token_nll = F.cross_entropy(logits.float(), targets.to(device), reduction="none").double().cpu()
        for example, index, nll in zip(rows, batch, token_nll.split(counts), strict=True):
            final_from = example.final_start - example.answer_start
            scores[index] = ContinuationScore(
                example_id=example.example_id,
                answer_tokens=len(nll),
                nll_sum=float(nll.sum()),
                final_tokens=len(nll) - final_from,
                final_nll_sum=float(nll[final_from:].sum()),
            )
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


def ratio_ci(
    nll: Sequence[float], tokens: Sequence[int], resamples: int, confidence: float, seed: int
) -> tuple[float, float]:
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


def cell_path(ctx: RunContext, model: str, split: str, loops: int) -> Path:
    return ctx.cells_dir("nll") / f"{cell_name(model, split, loops)}.csv"


def read_cell(path: Path, example_ids: list[int]) -> list[dict] | None:
    """A finished cell's rows (typed), or None when missing or not for these examples."""
    if not path.is_file():
        return None
    try:
        rows = [
            {
                "model": r["model"],
                "split": r["split"],
                "inference_loops": int(r["inference_loops"]),
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
    return rows if [r["example_id"] for r in rows] == example_ids else None


def score_cell(model, encoded: list[EncodedExample], batch_size: int, name: str, split: str, loops: int) -> list[dict]:
    scores = score_continuations(model, encoded, batch_size, num_loops=loops)
    return [
        {
            "model": name,
            "split": split,
            "inference_loops": loops,
            "example_id": s.example_id,
            "answer_tokens": s.answer_tokens,
            "nll_sum": s.nll_sum,
            "final_tokens": s.final_tokens,
            "final_nll_sum": s.final_nll_sum,
        }
        for s in scores
    ]


def run(ctx: RunContext) -> None:
    config = ctx.config.nll
    grid = sorted(set(config.inference_loops))
    examples = {split: ctx.examples(subset) for split, subset in SPLITS.items()}
    cells: dict[tuple[str, str, int], list[dict]] = {}
    for spec in ctx.model_specs():
        model = tokenizer = None
        encoded: dict[str, list[EncodedExample]] = {}
        for split, subset in examples.items():
            ids = [e.id for e in subset]
            for loops in grid:
                ctx.check_stop()
                path = cell_path(ctx, spec.name, split, loops)
                rows = read_cell(path, ids)
                if rows is None:
                    if model is None:  # load each model once, and only if a cell of it is missing
                        model, tokenizer = ctx.load_model(spec), ctx.load_tokenizer(spec)
                    if split not in encoded:
                        encoded[split] = [encode_example(tokenizer, e) for e in subset]
                    start = time.perf_counter()
                    rows = score_cell(model, encoded[split], config.batch_size, spec.name, split, loops)
                    atomic_write_csv(path, rows, NLL_COLUMNS)
                    value = sum(r["nll_sum"] for r in rows) / sum(r["answer_tokens"] for r in rows)
                    print(f"nll {path.stem}: {value:.4f} nats/token ({time.perf_counter() - start:.1f}s)", flush=True)
                cells[spec.name, split, loops] = rows
        del model
        if ctx.device.type == "cuda":
            torch.cuda.empty_cache()
    write_results(ctx, cells, grid)


def write_results(ctx: RunContext, cells: dict[tuple[str, str, int], list[dict]], grid: list[int]) -> None:
    config, seed = ctx.config.nll, ctx.config.seed
    specs = ctx.model_specs()
    order = [(spec.name, split, loops) for spec in specs for split in SPLITS for loops in grid]
    atomic_write_csv(ctx.results_path("nll.csv"), [row for key in order for row in cells[key]], NLL_COLUMNS)

    summary = []
    for name, split, loops in order:
        rows = cells[name, split, loops]
        nll = np.array([r["nll_sum"] for r in rows])
        tokens = np.array([r["answer_tokens"] for r in rows])
        final_nll = np.array([r["final_nll_sum"] for r in rows])
        final_tokens = np.array([r["final_tokens"] for r in rows])
        ci = ratio_ci(nll, tokens, config.bootstrap_resamples, config.confidence, seed)
        final_ci = ratio_ci(final_nll, final_tokens, config.bootstrap_resamples, config.confidence, seed)
        summary.append(
            {
                "model": name,
                "split": split,
                "inference_loops": loops,
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
        )
    atomic_write_csv(ctx.results_path("nll_summary.csv"), summary, SUMMARY_COLUMNS)

    preferred = []
    for spec in specs:
        results = {}
        for split in SPLITS:
            nll = np.array([[r["nll_sum"] for r in cells[spec.name, split, loops]] for loops in grid])
            tokens = np.array([r["answer_tokens"] for r in cells[spec.name, split, grid[0]]])
            results[split] = paired_depth_bootstrap(nll, tokens, config.bootstrap_resamples, config.confidence, seed)
        match = grid[results["test"].best_index] == grid[results["train"].best_index]
        for split, result in results.items():
            best = result.best_index
            # a train depth outside the grid never wins a resample
            p_train = result.p_best[grid.index(spec.train_loops)] if spec.train_loops in grid else 0.0
            for i, loops in enumerate(grid):
                preferred.append(
                    {
                        "model": spec.name,
                        "split": split,
                        "train_loops": spec.train_loops,
                        "inference_loops": loops,
                        "nll_per_token": result.nll_per_token[i],
                        "best_loops": grid[best],
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
