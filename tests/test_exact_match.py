"""Answer extraction, Wilson intervals and the resumable exact-match stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from scipy import stats

from study.io import read_csv
from study.models.generation import greedy_generate
from study.stages import exact_match as em_stage
from study.stages.exact_match import (
    EM_COLUMNS,
    GENERATION_FIELDS,
    score_generation,
    score_text,
    wilson_interval,
)
from study.tasks.gsm8k import Example, extract_flexible, extract_strict, is_correct, normalize
from tests.helpers_sweep import ScriptedModel, gpt2_tokenizer, make_context, one_thread


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    with one_thread():
        yield


@pytest.mark.parametrize(
    ("text", "strict", "flexible"),
    [
        ("She pays 3 * 4 = 12 dollars.\n#### 1,234", "1234", "1234"),
        ("It costs $1,000.50 in total.\n#### 1,000.50", "1000.50", "1000.50"),
        ("It costs $1,000.50 in total.", None, "1000.50"),
        ("#### $5", None, "5"),  # the strict pattern, like lm-eval's, takes no currency sign
        ("The temperature drops to -7 degrees.\n#### -7", "-7", "-7"),
        ("So the answer is 18.", None, "18"),
        ("#### 42.\nQuestion", "42", "42"),
        ("First 5 then 3.5 and finally 12", None, "12"),
        ("no digits here", None, None),
        ("#### 7 but later 9", "7", "9"),
        ("####5", None, "5"),  # strict needs the space after ####, as in lm-eval
    ],
)
def test_extraction(text, strict, flexible):
    assert extract_strict(text) == strict
    assert extract_flexible(text) == flexible


def test_normalize_and_numeric_comparison():
    assert normalize("$1,234.") == "1234"
    assert is_correct("18.00", "18")
    assert is_correct("-3", "-3")
    assert is_correct("1234", "1,234")
    assert not is_correct("17", "18")
    assert not is_correct(None, "18")
    assert not is_correct("..", "18")  # matched by the flexible pattern but not a number
    assert not is_correct("", "0")


def test_score_generation_fields():
    example = Example("test", 3, "How many?", "2 + 2 = 4\n#### 4")
    record = score_generation("base", 2, example, " 2 + 2 = 4\n#### 4")
    assert tuple(sorted(record)) == tuple(sorted(GENERATION_FIELDS))
    assert record["strict_correct"] and record["flexible_correct"] and record["gold"] == "4"
    record = score_generation("base", 2, example, " I think it is 4 apples, or 5")
    assert record["strict_answer"] is None and not record["strict_correct"]
    assert record["flexible_answer"] == "5" and not record["flexible_correct"]


@pytest.mark.parametrize(("correct", "n"), [(0, 40), (7, 40), (40, 40), (1, 3)])
def test_wilson_equals_scipy(correct, n):
    direct = stats.binomtest(correct, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert wilson_interval(correct, n) == (direct.low, direct.high)
    low, high = wilson_interval(correct, n)
    assert 0.0 <= low <= correct / n <= high <= 1.0


def test_generation_stops_at_question():
    tokenizer = gpt2_tokenizer()
    prompt = "Question: 2+2?\nAnswer:"
    script = tokenizer.encode(" 2 + 2 = 4\n#### 4\n\nQuestion: 3+3?\nAnswer: 6")
    scripted = ScriptedModel(script, len(tokenizer.encode(prompt)))
    (result,) = greedy_generate(scripted, tokenizer, [prompt], max_new_tokens=64)
    assert result.text == " 2 + 2 = 4\n#### 4\n\n"
    assert extract_strict(result.text) == "4" and extract_flexible(result.text) == "4"


def test_run_writes_results_and_resumes(tmp_path, monkeypatch):
    ctx = make_context(tmp_path)
    em_stage.run(ctx)
    rows = read_csv(ctx.results_path("exact_match.csv"))
    assert tuple(rows[0]) == EM_COLUMNS
    assert [(r["model"], r["inference_loops"], r["extraction"]) for r in rows[:4]] == [
        ("base", "1", "strict"),
        ("base", "1", "flexible"),
        ("base", "2", "strict"),
        ("base", "2", "flexible"),
    ]
    assert all(r["n"] == "3" for r in rows)
    lines = ctx.results_path("generations.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 2 * 2 * 3  # models × loops × examples
    assert set(records[0]) == set(GENERATION_FIELDS)
    assert [r["example_id"] for r in records[:3]] == [e.id for e in ctx.examples("em")]
    first = {name: ctx.results_path(name).read_bytes() for name in ("exact_match.csv", "generations.jsonl")}

    calls = []
    real = em_stage.generate_texts
    monkeypatch.setattr(em_stage, "generate_texts", lambda *a: calls.append(a[-1]) or real(*a))
    em_stage.cell_path(ctx, "train4", 1).unlink()
    em_stage.run(ctx)
    assert calls == [1]  # only the deleted cell is decoded again
    assert {name: ctx.results_path(name).read_bytes() for name in first} == first


LM_EVAL_CASES = Path(__file__).parent / "fixtures" / "lm_eval_gsm8k_cases.jsonl"


def test_lm_eval_verdicts_equal_lm_evals_own_on_fuzzed_generations():
    """5,000 near-miss generations scored by lm-eval 0.4.13's own gsm8k filters and
    exact_match (tests/fixtures/make_lm_eval_gsm8k_cases.py): same answers, same verdicts."""
    cases = [json.loads(line) for line in LM_EVAL_CASES.read_text(encoding="utf-8").splitlines()]
    assert len(cases) == 5000
    differ = []
    for case in cases:
        scored = score_text(case["text"], case["gold"], eos=case["eos"])
        ours = [scored[f"lm_eval_{name}{suffix}"] for name in ("strict", "flexible") for suffix in ("_answer", "")]
        theirs = [case[f"{name}{suffix}"] for name in ("strict", "flexible") for suffix in ("_answer", "")]
        if ours != theirs:
            differ.append((case["text"], ours, theirs))
        # numeric verdicts are never stricter than lm-eval's string comparison
        assert scored["strict"] >= scored["lm_eval_strict"] and scored["flexible"] >= scored["lm_eval_flexible"]
    assert not differ, f"{len(differ)} of {len(cases)} differ, e.g. {differ[:3]}"
    # the table is not degenerate: each verdict is sometimes right, sometimes wrong
    for name in ("strict", "flexible"):
        assert 0.05 < sum(case[name] for case in cases) / len(cases) < 0.5
