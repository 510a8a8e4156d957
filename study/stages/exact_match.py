"""Exact-match stage: greedy GSM8K answers at a few inference depths.

Each model × loop count decodes every ``em`` example greedily (``greedy_generate``,
batched, stopping at EOS or "Question:"), cuts the text at lm-eval's stop sequences
and judges it four ways (``score_text``, ``EXTRACTIONS``). The answer is found with
lm-eval's GSM8K regexes:

- strict: the first number after ``#### `` (the format the SFT data teaches);
- flexible: the last number anywhere in the text.

``strict``/``flexible`` compare it with the gold answer as exact decimals after
dropping ``,``, ``$`` and a trailing ``.`` ("18.00" is right for 18);
``lm_eval_strict``/``lm_eval_flexible`` are what lm-eval's ``gsm8k`` task reports (a
string comparison: "18.00" is wrong), so the project's numbers can be set beside the
literature's. Accuracy gets a Wilson 95% interval. Cells (one JSONL per model ×
loops) make the stage resumable.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from scipy import stats

from study.io import atomic_write_csv, atomic_write_jsonl
from study.models.generation import greedy_generate
from study.pipeline import RunContext, StudyError, cell_name
from study.tasks.gsm8k import EXTRACTIONS, Example, score_text  # score_text: public here too

EM_COLUMNS = ("model", "inference_loops", "extraction", "correct", "n", "accuracy", "ci_low", "ci_high")
GENERATION_FIELDS = (
    "model", "inference_loops", "example_id", "question", "text", "gold",
    *(f"{extraction}_answer" for extraction in EXTRACTIONS),
    *(f"{extraction}_correct" for extraction in EXTRACTIONS),
)  # fmt: skip


def wilson_interval(correct: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    if n < 1 or not 0 <= correct <= n:
        raise StudyError(f"exact_match: {correct} correct of {n} is not a proportion; the interval is refused")
    ci = stats.binomtest(correct, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def score_generation(model: str, loops: int, example: Example, text: str, eos: str | None = None) -> dict:
    """One generations.jsonl record: the text, and each extraction's answer and verdict."""
    verdicts = score_text(text, example.answer, eos)
    return {
        "model": model,
        "inference_loops": loops,
        "example_id": example.id,
        "question": example.question,
        "text": text,
        "gold": example.final_answer,
        **{f"{extraction}_answer": verdicts[f"{extraction}_answer"] for extraction in EXTRACTIONS},
        **{f"{extraction}_correct": verdicts[extraction] for extraction in EXTRACTIONS},
    }


def accuracy_rows(records: Sequence[dict], model: str, loops: int) -> list[dict]:
    rows = []
    for extraction in EXTRACTIONS:
        correct = sum(bool(r[f"{extraction}_correct"]) for r in records)
        low, high = wilson_interval(correct, len(records))
        rows.append(
            {
                "model": model,
                "inference_loops": loops,
                "extraction": extraction,
                "correct": correct,
                "n": len(records),
                "accuracy": correct / len(records),
                "ci_low": low,
                "ci_high": high,
            }
        )
    return rows


# ---- decoding ---------------------------------------------------------------------------


def generate_texts(
    model, tokenizer, examples: Sequence[Example], batch_size: int, max_new_tokens: int, loops: int
) -> list[str]:
    """Greedy texts in example order. Batches group prompts of similar token length,
    which cuts left padding; batched and one-at-a-time decoding give the same tokens."""
    lengths = [len(tokenizer.encode(e.prompt, add_special_tokens=False)) for e in examples]
    order = sorted(range(len(examples)), key=lambda i: -lengths[i])
    texts: list[str] = [""] * len(examples)
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        results = greedy_generate(
            model, tokenizer, [examples[i].prompt for i in batch], max_new_tokens, num_loops=loops
        )
        for i, result in zip(batch, results, strict=True):
            texts[i] = result.text
    return texts


# ---- cells ------------------------------------------------------------------------------


def cell_path(ctx: RunContext, model: str, loops: int) -> Path:
    return ctx.cells_dir("exact_match") / f"{cell_name(model, loops)}.jsonl"


def read_cell(path: Path, example_ids: list[int]) -> list[dict] | None:
    if not path.is_file():
        return None
    try:
        records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        ids = [r["example_id"] for r in records]
    except (ValueError, KeyError, TypeError):
        return None  # unreadable: decode again
    complete = all(set(r) == set(GENERATION_FIELDS) for r in records)
    return records if ids == example_ids and complete else None


def run(ctx: RunContext) -> None:
    config = ctx.config.exact_match
    grid = sorted(set(config.inference_loops))
    examples = ctx.examples("em")
    ids = [e.id for e in examples]
    records: list[dict] = []
    accuracy: list[dict] = []
    for spec in ctx.model_specs():
        model = tokenizer = None
        for loops in grid:
            ctx.check_stop()
            path = cell_path(ctx, spec.name, loops)
            cell = read_cell(path, ids)
            if cell is None:
                if model is None:
                    model, tokenizer = ctx.load_model(spec), ctx.load_tokenizer(spec)
                start = time.perf_counter()
                texts = generate_texts(model, tokenizer, examples, config.batch_size, config.max_new_tokens, loops)
                eos = tokenizer.eos_token
                cell = [score_generation(spec.name, loops, e, t, eos) for e, t in zip(examples, texts, strict=True)]
                atomic_write_jsonl(path, cell)
                share = sum(r["strict_correct"] for r in cell) / len(cell)
                print(f"exact_match {path.stem}: strict {share:.3f} ({time.perf_counter() - start:.1f}s)", flush=True)
            records.extend(cell)
            accuracy.extend(accuracy_rows(cell, spec.name, loops))
        del model
        if ctx.device.type == "cuda":
            torch.cuda.empty_cache()
    atomic_write_csv(ctx.results_path("exact_match.csv"), accuracy, EM_COLUMNS)
    atomic_write_jsonl(ctx.results_path("generations.jsonl"), records)
