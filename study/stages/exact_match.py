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
literature's. Accuracy gets a Wilson 95% interval. Cells (one JSONL per model × depth
policy, through the one sweep-cell loop of ``study.stages.sweep``) make the stage resumable.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from study.io import atomic_write_csv, atomic_write_jsonl
from study.models.backbones import PolicyRunner
from study.pipeline import RunContext
from study.stages.stage import Stage
from study.stages.sweep import Cell, Loaded, Sweep
from study.stats import wilson_interval
from study.tasks.gsm8k import EXTRACTIONS, Example, score_text  # score_text: public here too

EM_COLUMNS = ("model", "policy", "inference_loops", "extraction", "correct", "n", "accuracy", "ci_low", "ci_high")
GENERATION_FIELDS = (
    "model", "inference_loops", "example_id", "question", "text", "gold",
    *(f"{extraction}_answer" for extraction in EXTRACTIONS),
    *(f"{extraction}_correct" for extraction in EXTRACTIONS),
)  # fmt: skip
RECORD_FIELDS = ("policy", *GENERATION_FIELDS)  # a generations.jsonl record: the scored generation and its policy


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
    runner: PolicyRunner, tokenizer, examples: Sequence[Example], batch_size: int, max_new_tokens: int, progress=None
) -> list[str]:
    """Greedy texts in example order (``runner``: a backbone at a depth policy). Batches
    group prompts of similar token length, which cuts left padding; batched and
    one-at-a-time decoding give the same tokens."""
    lengths = [len(tokenizer.encode(e.prompt, add_special_tokens=False)) for e in examples]
    order = sorted(range(len(examples)), key=lambda i: -lengths[i])
    texts: list[str] = [""] * len(examples)
    bar = progress(total=len(examples), desc="examples", inner=True) if progress is not None else None
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        results = runner.generate(tokenizer, [examples[i].prompt for i in batch], max_new_tokens)
        for i, result in zip(batch, results, strict=True):
            texts[i] = result.text
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()
    return texts


# ---- cells ------------------------------------------------------------------------------


class GenerationStore:
    """One JSONL per cell: its examples' generation records (``GENERATION_FIELDS``)."""

    suffix = ".jsonl"

    def __init__(self, example_ids: list[int]) -> None:
        self.example_ids = example_ids

    def read(self, path: Path, cell: Cell) -> list[dict] | None:
        return read_cell(path, self.example_ids, cell.policy.id)

    def write(self, path: Path, cell: Cell, records: list[dict]) -> None:
        atomic_write_jsonl(path, records)


def cell_path(ctx: RunContext, model: str, policy: str) -> Path:
    return ctx.cells_dir("exact_match") / f"{model}-{policy}{GenerationStore.suffix}"


def read_cell(path: Path, example_ids: list[int], policy: str | None = None) -> list[dict] | None:
    if not path.is_file():
        return None
    try:
        records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        ids = [r["example_id"] for r in records]
        policies = {r["policy"] for r in records}
    except (ValueError, KeyError, TypeError):
        return None  # unreadable: decode again
    complete = all(set(r) == set(RECORD_FIELDS) for r in records)
    same_policy = policy is None or policies <= {policy}
    return records if ids == example_ids and complete and same_policy else None


def run(ctx: RunContext) -> None:
    config = ctx.config.exact_match
    examples = ctx.examples("em")
    cells = [Cell(spec, policy) for spec in ctx.model_specs() for policy in ctx.policies(config.inference_loops)]

    def compute(cell: Cell, loaded: Loaded, progress) -> list[dict]:
        runner = loaded.runner(cell.policy)
        texts = generate_texts(runner, loaded.tokenizer, examples, config.batch_size, config.max_new_tokens, progress)
        name, loops, eos = cell.model.name, cell.policy.inference_loops, loaded.tokenizer.eos_token
        return [
            {"policy": cell.policy.id, **score_generation(name, loops, e, t, eos)}
            for e, t in zip(examples, texts, strict=True)
        ]

    def describe(cell: Cell, records: list[dict]) -> str:
        return f"strict {sum(r['strict_correct'] for r in records) / len(records):.3f}"

    values = Sweep(ctx, "exact_match", GenerationStore([e.id for e in examples]), compute, describe).run(cells)
    if values is None:  # another process of the run aggregates
        return
    records: list[dict] = []
    accuracy: list[dict] = []
    for cell in cells:
        records.extend(values[cell])
        rows = accuracy_rows(values[cell], cell.model.name, cell.policy.inference_loops)
        accuracy.extend({**row, "policy": cell.policy.id} for row in rows)
    atomic_write_csv(ctx.results_path("exact_match.csv"), accuracy, EM_COLUMNS)
    atomic_write_jsonl(ctx.results_path("generations.jsonl"), records)


STAGE = Stage(
    name="exact_match",
    run=run,
    sections=("seed", "replicates", "model", "data", "sft", "exact_match", "looping", "sweep_dtype"),
    splits=("test",),
    needs_sft=True,
    outputs=("results/exact_match.csv", "results/generations.jsonl"),
    cell_neutral=("inference_loops",),
)
