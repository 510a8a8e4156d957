"""GSM8K: loading (hub or the bundled copy), validation, seeded subsets, prompts.

Subsets are prefixes of seeded permutations, one independent random stream per
subset, so a larger slice (v17's 300) extends a smaller one (v16's 200) with the
same seed, and changing one subset's size never changes another's ids:

- ``sft``: ``sft_examples`` ids from train (the fine-tuning data);
- ``nll_test``: ``nll_test_examples`` ids from test (the held-out NLL slice);
- ``nll_train``: ``nll_train_examples`` ids drawn from the SFT subset (train
  diagnostics, to compare the depth preferred on seen vs unseen data);
- ``em``: ``em_examples`` ids from test (exact match; may overlap ``nll_test``).

Prompt and target follow lm-eval's GSM8K task: ``"Question: {q}\\nAnswer:"`` and
``" {answer}"``; the gold final answer is the number after ``####``.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

BUNDLED_DIR = Path(__file__).parent / "assets" / "gsm8k"
HUB_DATASET = ("openai/gsm8k", "main")
SPLITS = ("train", "test")
FINAL_ANSWER = re.compile(r"####\s*(-?[0-9][0-9,]*(?:\.[0-9]+)?)\s*$")
# independent random streams, one per subset: ids never depend on another subset's size
SUBSET_STREAMS = {"sft": 1, "nll_test": 2, "nll_train": 3, "em": 4}


class DataError(ValueError):
    """Bad or missing data (user error, reported in one line)."""


@dataclass(frozen=True)
class Example:
    split: str
    id: int  # 0-based line index in the split file
    question: str
    answer: str

    @property
    def prompt(self) -> str:
        return format_prompt(self.question)

    @property
    def completion(self) -> str:
        return " " + self.answer

    @property
    def final_answer(self) -> str:
        return final_answer(self.answer)


@dataclass(frozen=True)
class Dataset:
    source: Literal["bundled", "hub"]
    train: list[Example]
    test: list[Example]
    sha256: dict[str, str]  # per split, over the canonical JSONL of its records

    def split(self, name: str) -> list[Example]:
        return {"train": self.train, "test": self.test}[name]


def format_prompt(question: str) -> str:
    return f"Question: {question}\nAnswer:"


def final_answer(answer: str) -> str:
    """The gold number after ``####``, commas removed."""
    match = FINAL_ANSWER.search(answer)
    if match is None:
        raise DataError(f"answer has no '#### <number>' final answer: {answer[-60:]!r}")
    return match.group(1).replace(",", "")


def split_final(answer: str) -> tuple[str, str]:
    """(solution up to and including ``####``, the final-answer text after it)."""
    cut = answer.rindex("####") + len("####")
    return answer[:cut], answer[cut:]


def _canonical_line(question: str, answer: str) -> str:
    # the serialisation of the upstream files, so bundled and hub copies hash alike
    return json.dumps({"question": question, "answer": answer}) + "\n"


def _validated(split: str, records: list[tuple[str, object]]) -> tuple[list[Example], str]:
    """Examples from (location, record) pairs, with a one-line error naming the location."""
    examples, digest = [], hashlib.sha256()
    for index, (where, record) in enumerate(records):
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected a JSON object with 'question' and 'answer'")
        for field in ("question", "answer"):
            if not isinstance(record.get(field), str) or not record[field].strip():
                raise DataError(f"{where}: missing or empty '{field}' (a string is required)")
        if FINAL_ANSWER.search(record["answer"]) is None:
            raise DataError(f"{where}: 'answer' has no '#### <number>' final answer")
        examples.append(Example(split, index, record["question"], record["answer"]))
        digest.update(_canonical_line(record["question"], record["answer"]).encode())
    if not examples:
        raise DataError(f"{split}: no records")
    return examples, digest.hexdigest()


def read_jsonl(path: Path, split: str) -> tuple[list[Example], str]:
    if not path.is_file():
        raise DataError(f"{path}: GSM8K {split} file not found")
    records: list[tuple[str, object]] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                records.append((f"{path}:{number}", json.loads(line)))
            except json.JSONDecodeError as error:
                raise DataError(f"{path}:{number}: not valid JSON ({error.msg})") from None
    return _validated(split, records)


def load_gsm8k(source: Literal["bundled", "hub"] = "bundled", directory: Path | None = None) -> Dataset:
    """GSM8K from the hub (``openai/gsm8k``, ``main``) or from JSONL files
    (``directory``/{train,test}.jsonl, default the bundled copy)."""
    if source == "hub":
        from datasets import load_dataset

        parts = {}
        for split in SPLITS:
            rows = load_dataset(*HUB_DATASET, split=split)
            parts[split] = _validated(
                split, [(f"{HUB_DATASET[0]}[{split}][{i}]", dict(r)) for i, r in enumerate(rows)]
            )
    else:
        folder = directory or BUNDLED_DIR
        parts = {split: read_jsonl(folder / f"{split}.jsonl", split) for split in SPLITS}
    return Dataset(
        source=source,
        train=parts["train"][0],
        test=parts["test"][0],
        sha256={split: parts[split][1] for split in SPLITS},
    )


def _seeded_prefix(population: int, size: int, seed: int, stream: str, what: str) -> list[int]:
    if size > population:
        raise DataError(f"{what}: asked for {size} examples but only {population} are available")
    rng = np.random.default_rng([seed, SUBSET_STREAMS[stream]])
    return [int(i) for i in rng.permutation(population)[:size]]


@dataclass(frozen=True)
class Subsets:
    sft: list[int]  # train ids
    nll_test: list[int]  # test ids
    nll_train: list[int]  # train ids, all inside ``sft``
    em: list[int]  # test ids

    def as_dict(self) -> dict[str, list[int]]:
        return {"sft": self.sft, "nll_test": self.nll_test, "nll_train": self.nll_train, "em": self.em}


def make_subsets(
    dataset: Dataset,
    seed: int,
    sft_examples: int,
    nll_test_examples: int,
    nll_train_examples: int,
    em_examples: int,
) -> Subsets:
    sft = _seeded_prefix(len(dataset.train), sft_examples, seed, "sft", "data.sft_examples")
    drawn = _seeded_prefix(len(sft), nll_train_examples, seed, "nll_train", "data.nll_train_examples")
    return Subsets(
        sft=sft,
        nll_test=_seeded_prefix(len(dataset.test), nll_test_examples, seed, "nll_test", "data.nll_test_examples"),
        nll_train=[sft[i] for i in drawn],
        em=_seeded_prefix(len(dataset.test), em_examples, seed, "em", "data.em_examples"),
    )


@dataclass(frozen=True)
class EncodedExample:
    """Token ids of prompt + gold continuation, scored the way lm-eval scores a
    continuation: context and continuation tokenised separately, then joined."""

    example_id: int
    input_ids: list[int]
    answer_start: int  # first token of the whole gold solution " {answer}"
    final_start: int  # first token of the final answer (the text after '####')


def encode_example(tokenizer, example: Example) -> EncodedExample:
    solution, final = split_final(example.answer)
    prompt_ids = tokenizer.encode(example.prompt, add_special_tokens=False)
    solution_ids = tokenizer.encode(" " + solution, add_special_tokens=False)
    final_ids = tokenizer.encode(final, add_special_tokens=False)
    return EncodedExample(
        example_id=example.id,
        input_ids=prompt_ids + solution_ids + final_ids,
        answer_start=len(prompt_ids),
        final_start=len(prompt_ids) + len(solution_ids),
    )
