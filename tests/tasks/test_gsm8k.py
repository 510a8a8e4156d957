"""GSM8K data layer: validation, seeded subsets, prompt format, lm-eval-style encoding."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from study.tasks.gsm8k import (
    BUNDLED_DIR,
    DataError,
    Subsets,
    encode_example,
    final_answer,
    load_gsm8k,
    make_subsets,
    read_jsonl,
    sft_subset,
)
from study.tokenizer import load_tokenizer
from tests.conftest import shared_dir


@pytest.fixture(scope="module")
def dataset():
    return load_gsm8k("bundled")


def test_bundled_copy_is_the_published_split(dataset) -> None:
    assert (len(dataset.train), len(dataset.test)) == (7473, 1319)
    # the canonical-record hash equals sha256sum of the upstream files
    assert dataset.sha256 == {
        "train": "17f347dc51477c50d4efb83959dbb7c56297aba886e5544ee2aaed3024813465",
        "test": "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14",
    }
    assert (BUNDLED_DIR / "LICENSE").is_file()


def test_bundled_copy_equals_shared() -> None:
    for split in ("train", "test"):
        source = shared_dir() / "data" / "gsm8k" / f"{split}.jsonl"
        assert (BUNDLED_DIR / f"{split}.jsonl").read_bytes() == source.read_bytes()


def test_prompt_and_target_follow_lm_eval(dataset) -> None:
    example = dataset.test[0]
    assert example.prompt == f"Question: {example.question}\nAnswer:"
    assert example.completion == " " + example.answer
    assert example.final_answer == "18"


@pytest.mark.parametrize(
    ("answer", "gold"),
    [("so 5\n#### 1,234", "1234"), ("#### -7", "-7"), ("x\n#### 3.5", "3.5"), ("#### 42 ", "42")],
)
def test_final_answer(answer: str, gold: str) -> None:
    assert final_answer(answer) == gold


def subsets(dataset, seed=2026, replicates=(2026,), sft=512, test=300, heldout=300, seen=300, em=40):
    return make_subsets(
        dataset, seed, replicates=list(replicates), sft_examples=sft, nll_test_examples=test,
        nll_heldout_examples=heldout, nll_seen_examples=seen, em_examples=em,
    )  # fmt: skip


def test_subsets_are_seeded_nested_and_independent(dataset) -> None:
    a = subsets(dataset)
    assert a == subsets(dataset)
    sft = a.sft[2026]
    assert len(set(sft)) == 512 and set(a.nll_seen) <= set(sft)
    smaller = subsets(dataset, test=200, heldout=200, seen=200)
    assert smaller.nll_test == a.nll_test[:200] and smaller.nll_seen == a.nll_seen[:200]  # v16 within v17
    assert smaller.nll_heldout == a.nll_heldout[:200]
    other_em = subsets(dataset, em=10)
    assert other_em.nll_test == a.nll_test and other_em.em == a.em[:10]
    assert subsets(dataset, 7, replicates=[7]).sft[7] != sft


def test_one_replicate_draws_the_subsets_of_the_runs_before_replicates(dataset) -> None:
    """The SFT subset and the seen slice (the old train slice) keep their ids (checked
    against the code before replicates: these are its first ids)."""
    a = subsets(dataset)
    assert a.sft[2026][:4] == [2782, 5568, 2547, 6638] and a.nll_seen[:4] == [2761, 6053, 2419, 1674]
    assert sft_subset(dataset, 2026, 512) == a.sft[2026]


def test_heldout_is_disjoint_from_every_replicates_sft_subset(dataset) -> None:
    seeds = [2026, 2027, 2028, 11, 12]
    a = subsets(dataset, replicates=seeds, sft=800, heldout=400)
    assert list(a.sft) == seeds and all(len(set(a.sft[s])) == 800 for s in seeds)
    assert len({tuple(ids) for ids in a.sft.values()}) == len(seeds)  # each seed its own subset
    for seed in seeds:
        assert subsets(dataset, replicates=[seed], sft=800).sft[seed] == a.sft[seed]  # a seed's subset is its own
        assert not set(a.nll_heldout) & set(a.sft[seed])
    assert len(set(a.nll_heldout)) == 400 and set(a.nll_seen) <= set(a.sft[2026])
    assert a.as_dict()["nll_heldout"] == a.nll_heldout and a.as_dict()["sft"]["2028"] == a.sft[2028]
    # the run seed draws the heldout slice: the same replicates and seed give the same ids
    assert subsets(dataset, replicates=seeds, sft=800, heldout=400) == a
    assert subsets(dataset, 9, replicates=seeds, sft=800, heldout=400).nll_heldout != a.nll_heldout


def test_heldout_larger_than_what_the_sft_subsets_leave_is_refused(dataset) -> None:
    left = len(dataset.train) - 7000
    with pytest.raises(DataError, match=rf"nll_heldout_examples: asked for {left + 1} .* only {left} are left"):
        subsets(dataset, sft=7000, heldout=left + 1, seen=4)
    assert len(subsets(dataset, sft=7000, heldout=left, seen=4).nll_heldout) == left


def test_a_heldout_id_inside_an_sft_subset_is_refused() -> None:
    with pytest.raises(DataError, match=r"nll_heldout: train ids \[3\] are in an SFT subset"):
        Subsets(sft={1: [1, 2], 2: [3]}, nll_test=[0], nll_heldout=[3, 4], nll_seen=[1], em=[0])
    with pytest.raises(DataError, match=r"nll_seen: ids outside the first replicate"):
        Subsets(sft={1: [1, 2], 2: [3]}, nll_test=[0], nll_heldout=[4], nll_seen=[3], em=[0])


def test_subset_larger_than_split_is_refused(dataset) -> None:
    with pytest.raises(DataError, match=r"data\.nll_test_examples: asked for 2000"):
        subsets(dataset, 0, replicates=[0], sft=8, test=2000, heldout=4, seen=4, em=4)


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"train\.jsonl: GSM8K train file not found"):
        read_jsonl(tmp_path / "train.jsonl", "train")


def test_not_json_names_file_and_line(tmp_path: Path) -> None:
    good = json.dumps({"question": "q", "answer": "a\n#### 1"})
    path = _write(tmp_path / "test.jsonl", [good, "{not json"])
    with pytest.raises(DataError, match=r"test\.jsonl:2: not valid JSON"):
        read_jsonl(path, "test")


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"answer": "#### 1"}, "missing or empty 'question'"),
        ({"question": "q"}, "missing or empty 'answer'"),
        ({"question": "q", "answer": "no final answer"}, "no '#### <number>'"),
        (["q", "a"], "expected a JSON object"),
    ],
)
def test_bad_records_name_file_line_and_field(tmp_path: Path, record, message: str) -> None:
    path = _write(tmp_path / "train.jsonl", [json.dumps({"question": "q", "answer": "#### 2"}), json.dumps(record)])
    with pytest.raises(DataError, match=rf"train\.jsonl:2: .*{message}"):
        read_jsonl(path, "train")


def test_encoding_splits_solution_and_final_answer(dataset) -> None:
    tokenizer = load_tokenizer()
    example = dataset.test[0]
    encoded = encode_example(tokenizer, example)
    assert tokenizer.decode(encoded.input_ids[: encoded.answer_start]) == example.prompt
    assert tokenizer.decode(encoded.input_ids[encoded.answer_start :]) == example.completion
    assert tokenizer.decode(encoded.input_ids[encoded.final_start :]) == " 18"


def test_encoding_equals_lm_evals_whole_string_split(dataset) -> None:
    """lm-eval 0.4 encodes prompt + continuation as one string and splits it at the
    prompt's token count; the separate encoding gives the same ids (a sample of records;
    all 8,792 agree, see study/scoring.py)."""
    tokenizer = load_tokenizer()
    for example in [*dataset.test[:150], *dataset.train[:150]]:
        encoded = encode_example(tokenizer, example)
        whole = tokenizer.encode(example.prompt + example.completion, add_special_tokens=False)
        context = tokenizer.encode(example.prompt, add_special_tokens=False)
        assert whole == encoded.input_ids and encoded.answer_start == len(context), example.id
