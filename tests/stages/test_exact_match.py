"""Answer extraction, Wilson intervals and the resumable exact-match stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from study.io import read_csv
from study.models.generation import greedy_generate
from study.stages import exact_match as em_stage
from study.stages.exact_match import (
    EM_COLUMNS,
    EXTRACTIONS,
    GENERATION_FIELDS,
    score_generation,
    score_text,
)
from study.stats import wilson_interval
from study.tasks.gsm8k import Example, extract_flexible, extract_strict, is_correct, normalize
from tests.support.helpers_sweep import ScriptedModel, gpt2_tokenizer, make_context


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
    # exact decimals: as floats these two are the same number (both round to 2**53)
    assert not is_correct("9007199254740993", "9007199254740992")
    assert is_correct("9007199254740993.000", "9,007,199,254,740,993")
    assert is_correct(".5", "0.5") and is_correct("-0", "0")
    assert not is_correct("NaN", "0") and not is_correct("Infinity", "Infinity")


@pytest.mark.parametrize(
    ("text", "verdicts"),
    [
        (" 2 + 16 = 18\n#### 18", (True, True, True, True)),
        (" #### 18.00", (True, True, False, False)),  # numerically right, not as lm-eval's strings
        (" #### 18.0 or rather 18", (True, True, False, True)),
        (" The answer is $18.", (False, True, False, True)),
        (" The answer is 18.0", (False, True, False, False)),
        (" #### 18 and 19", (True, False, True, False)),
        (" #### 17</s>#### 18", (False, False, False, False)),  # lm-eval's stop sequence cuts first
        (" 18<|endoftext|>#### 5", (False, True, False, True)),  # the EOS string too
        ("Answer: 18 <|im_end|> #### 18", (False, True, False, True)),
    ],
)
def test_score_text_four_verdicts(text, verdicts):
    gold = "He has 16 + 2 = <<16+2=18>>18 apples.\n#### 18"
    scored = score_text(text, gold, eos="<|endoftext|>")
    assert tuple(scored[name] for name in EXTRACTIONS) == verdicts
    assert EXTRACTIONS == ("strict", "flexible", "lm_eval_strict", "lm_eval_flexible")
    assert score_text(text, "18", eos="<|endoftext|>") == scored  # a bare gold number works the same


def test_accuracy_rows_count_each_extraction_on_its_own():
    """Four generations whose verdicts differ per extraction: 3 strict, 4 flexible,
    1 lm-eval strict and 2 lm-eval flexible hits, so any column read for another fails."""
    example = Example("test", 3, "How many?", "16 + 2 = 18\n#### 18")
    texts = [" #### 18", " #### 18.00", " #### 18.0 or 18", " it is 18.0"]
    records = [score_generation("base", 2, example, text) for text in texts]
    rows = {row["extraction"]: row for row in em_stage.accuracy_rows(records, "base", 2)}
    assert list(rows) == list(EXTRACTIONS)
    assert {name: rows[name]["correct"] for name in rows} == {
        "strict": 3, "flexible": 4, "lm_eval_strict": 1, "lm_eval_flexible": 2,
    }  # fmt: skip
    assert all(rows[name]["n"] == 4 and rows[name]["accuracy"] == rows[name]["correct"] / 4 for name in rows)
    assert (rows["strict"]["ci_low"], rows["strict"]["ci_high"]) == wilson_interval(3, 4)


def test_score_generation_fields():
    example = Example("test", 3, "How many?", "2 + 2 = 4\n#### 4")
    record = score_generation("base", 2, example, " 2 + 2 = 4\n#### 4")
    assert tuple(sorted(record)) == tuple(sorted(GENERATION_FIELDS))
    assert record["strict_correct"] and record["flexible_correct"] and record["gold"] == "4"
    record = score_generation("base", 2, example, " I think it is 4 apples, or 5")
    assert record["strict_answer"] is None and not record["strict_correct"]
    assert record["flexible_answer"] == "5" and not record["flexible_correct"]


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
    assert [(r["model"], r["inference_loops"], r["extraction"]) for r in rows[:8]] == [
        ("base", loops, extraction) for loops in ("1", "2") for extraction in EXTRACTIONS
    ]
    assert all(r["n"] == "3" for r in rows)
    lines = ctx.results_path("generations.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 2 * 2 * 3  # models × loops × examples
    assert set(records[0]) == {"policy", *GENERATION_FIELDS} and records[0]["policy"] == "M1"
    assert [r["example_id"] for r in records[:3]] == [e.id for e in ctx.examples("em")]
    first = {name: ctx.results_path(name).read_bytes() for name in ("exact_match.csv", "generations.jsonl")}

    calls = []
    real = em_stage.generate_texts
    monkeypatch.setattr(em_stage, "generate_texts", lambda *a: calls.append(a[0].policy.id) or real(*a))
    em_stage.cell_path(ctx, "train4", "M1").unlink()
    em_stage.run(ctx)
    assert calls == ["M1"]  # only the deleted cell is decoded again
    assert {name: ctx.results_path(name).read_bytes() for name in first} == first


LM_EVAL_CASES = Path(__file__).resolve().parents[1] / "fixtures" / "lm_eval_gsm8k_cases.jsonl"


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


def test_stage_counts_a_model_right_only_under_flexible_extraction(tmp_path, monkeypatch):
    """Every em gold is 18 and every model answers " The answer is 18.0" (no '####'):
    right under flexible extraction only, so exact_match.csv must say 0, 1, 0, 0."""
    from study.tasks.gsm8k import Dataset

    ctx = make_context(tmp_path)
    answer = "16 + 2 = 18\n#### 18"
    train = [Example("train", i, "How many apples?", answer) for i in range(11)]  # 8 SFT, 3 heldout
    test = [Example("test", i, "How many apples?", answer) for i in range(8)]
    ctx.dataset_loader = lambda: Dataset("bundled", train, test, {"train": "-", "test": "-"})
    longer = ctx.config.exact_match.model_copy(update={"max_new_tokens": 16})
    ctx.config = ctx.config.model_copy(update={"exact_match": longer})
    tokenizer = gpt2_tokenizer()
    prompt_length = len(tokenizer.encode(ctx.examples("em")[0].prompt))
    script = [*tokenizer.encode(" The answer is 18.0"), tokenizer.eos_token_id]
    monkeypatch.setattr(ctx, "load_model", lambda spec: ScriptedModel(script, prompt_length))
    em_stage.run(ctx)
    table = read_csv(ctx.results_path("exact_match.csv"))
    accuracy = {(r["model"], r["inference_loops"], r["extraction"]): r for r in table}
    assert len(accuracy) == 2 * 2 * len(EXTRACTIONS)
    for (model, loops, extraction), row in accuracy.items():
        assert row["n"] == "3"
        assert row["correct"] == ("3" if extraction == "flexible" else "0"), (model, loops, extraction)
    records = [json.loads(line) for line in ctx.results_path("generations.jsonl").read_text().splitlines()]
    assert {r["text"] for r in records} == {" The answer is 18.0"}
    assert all(r["flexible_correct"] and not r["lm_eval_flexible_correct"] and not r["strict_correct"] for r in records)
    assert {r["lm_eval_strict_answer"] for r in records} == {"[invalid]"} and {r["gold"] for r in records} == {"18"}
