"""GSM8K: loading (hub or the bundled copy), validation, seeded subsets, prompts.

Subsets are prefixes of seeded permutations, one independent random stream per
subset, so a larger slice (v17's 300) extends a smaller one (v16's 200) with the
same seed, and changing one subset's size never changes another's ids:

- ``sft``: per replicate seed, ``sft_examples`` ids from train drawn with that seed
  (the fine-tuning data of that seed's models; a single replicate at the run's seed
  draws the ids of the runs before replicates existed);
- ``nll_test``: ``nll_test_examples`` ids from test (the NLL slice ``test``);
- ``nll_heldout``: ``nll_heldout_examples`` ids from train that *no* SFT subset of the
  run contains (the slice ``heldout``: diagnostics, and the calibration set of anything
  tuned). Its stream is filtered by the union of the SFT subsets, so adding a replicate
  can change it. Held out from fine-tuning only: the embedded tiny LoopFormer was
  pretrained on train questions outside its seed-2026 SFT subset (``study.pretrain``);
- ``nll_seen``: ``nll_seen_examples`` ids drawn from the SFT subset of the *first*
  replicate seed (the slice ``seen``: SFT data, the old train slice under its real name);
- ``em``: ``em_examples`` ids from test (exact match; may overlap ``nll_test``).

Prompt and target follow lm-eval's GSM8K task: ``"Question: {q}\\nAnswer:"`` and
``" {answer}"``; the gold final answer is the number after ``####``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Literal

import numpy as np

from study.errors import DataError as DataError  # re-exported: raised here

BUNDLED_DIR = Path(__file__).parent.parent / "assets" / "gsm8k"
HUB_DATASET = ("openai/gsm8k", "main")
SPLITS = ("train", "test")
FINAL_ANSWER = re.compile(r"####\s*(-?[0-9][0-9,]*(?:\.[0-9]+)?)\s*$")
# lm-eval's GSM8K answer extraction: strict takes the number after '#### ', flexible the last number
STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
# lm-eval's `gsm8k` task (lm-evaluation-harness 0.4, gsm8k.yaml): generation is cut at these strings
# and at the tokenizer's EOS string; an answer its regex filter cannot find becomes "[invalid]"; its
# exact_match deletes these patterns from prediction and reference (the full gold answer, so the
# third one strips the worked solution), lower-cases both and compares the strings
LM_EVAL_STOP_SEQUENCES = ("Question:", "</s>", "<|im_end|>")
LM_EVAL_INVALID = "[invalid]"
LM_EVAL_IGNORED = tuple(re.compile(pattern) for pattern in (",", r"\$", r"(?s).*#### ", r"\.$"))
EXTRACTIONS = ("strict", "flexible", "lm_eval_strict", "lm_eval_flexible")
# independent random streams, one per subset: ids never depend on another subset's size
# (nll_seen keeps the stream of the train slice it renames, so its ids are unchanged)
SUBSET_STREAMS = {"sft": 1, "nll_test": 2, "nll_seen": 3, "em": 4, "nll_heldout": 5}


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
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise DataError(
                    f"{path}:{number}: not UTF-8 text (byte 0x{raw[error.start]:02x} at column {error.start + 1})"
                ) from None
            if not line.strip():
                continue
            try:
                records.append((f"{path}:{number}", json.loads(line)))
            except json.JSONDecodeError as error:
                raise DataError(f"{path}:{number}: not valid JSON ({error.msg})") from None
    if not records:
        raise DataError(f"{path}: empty (no GSM8K records)")
    return _validated(split, records)


def load_gsm8k(source: Literal["bundled", "hub"] = "bundled", directory: Path | None = None) -> Dataset:
    """GSM8K from the hub (``openai/gsm8k``, ``main``) or from JSONL files
    (``directory``/{train,test}.jsonl, default the bundled copy)."""
    if source == "hub":
        from datasets import load_dataset

        parts = {}
        for split in SPLITS:
            rows = load_dataset(*HUB_DATASET, split=split)
            parts[split] = _validated(split, [(f"{HUB_DATASET[0]}[{split}][{i}]", dict(r)) for i, r in enumerate(rows)])
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


def sft_subset(dataset: Dataset, seed: int, size: int) -> list[int]:
    """The SFT subset of replicate ``seed``: ``size`` train ids."""
    return _seeded_prefix(len(dataset.train), size, seed, "sft", "data.sft_examples")


@dataclass(frozen=True)
class Subsets:
    sft: dict[int, list[int]]  # replicate seed -> train ids (its SFT subset), in replicate order
    nll_test: list[int]  # test ids
    nll_heldout: list[int]  # train ids outside every SFT subset
    nll_seen: list[int]  # train ids inside the first replicate's SFT subset
    em: list[int]  # test ids

    def __post_init__(self) -> None:
        # checked wherever a Subsets is made, not asserted: a heldout question that was
        # fine-tuned on would make every heldout number a claim about seen data
        trained = self.sft_union
        leaked = sorted(set(self.nll_heldout) & trained)
        if leaked:
            raise DataError(f"nll_heldout: train ids {leaked[:5]} are in an SFT subset; heldout must be disjoint")
        first = set(next(iter(self.sft.values()), []))
        if not set(self.nll_seen) <= first:
            raise DataError("nll_seen: ids outside the first replicate's SFT subset")

    @property
    def sft_union(self) -> set[int]:
        """The train ids any replicate fine-tunes on."""
        return {i for ids in self.sft.values() for i in ids}

    def as_dict(self) -> dict[str, object]:
        """For the manifest: each replicate's SFT ids (by seed) beside the slices' ids."""
        return {
            "sft": {str(seed): ids for seed, ids in self.sft.items()},
            "nll_test": self.nll_test,
            "nll_heldout": self.nll_heldout,
            "nll_seen": self.nll_seen,
            "em": self.em,
        }


def make_subsets(
    dataset: Dataset,
    seed: int,
    *,
    replicates: Sequence[int],
    sft_examples: int,
    nll_test_examples: int,
    nll_heldout_examples: int,
    nll_seen_examples: int,
    em_examples: int,
) -> Subsets:
    """Every subset of a run: ``seed`` is the run's seed (the NLL slices and exact match),
    ``replicates`` the seeds of the SFT subsets (the first one holds the seen slice)."""
    if not replicates:
        raise DataError("replicates: at least one seed is needed")
    sft = {int(r): sft_subset(dataset, r, sft_examples) for r in replicates}
    first = sft[int(replicates[0])]
    drawn = _seeded_prefix(len(first), nll_seen_examples, seed, "nll_seen", "data.nll_seen_examples")
    trained = {i for ids in sft.values() for i in ids}
    order = np.random.default_rng([seed, SUBSET_STREAMS["nll_heldout"]]).permutation(len(dataset.train))
    outside = [int(i) for i in order if int(i) not in trained]
    if nll_heldout_examples > len(outside):
        raise DataError(
            f"data.nll_heldout_examples: asked for {nll_heldout_examples} train questions outside the SFT subsets "
            f"of replicates {list(replicates)}, but only {len(outside)} are left"
        )
    return Subsets(
        sft=sft,
        nll_test=_seeded_prefix(len(dataset.test), nll_test_examples, seed, "nll_test", "data.nll_test_examples"),
        nll_heldout=outside[:nll_heldout_examples],
        nll_seen=[first[i] for i in drawn],
        em=_seeded_prefix(len(dataset.test), em_examples, seed, "em", "data.em_examples"),
    )


@dataclass(frozen=True)
class EncodedExample:
    """Token ids of prompt + gold continuation. The three pieces are encoded separately and
    joined; on GSM8K that equals lm-eval 0.4's encoding of the whole string split at the
    prompt's length (each later piece starts with a space, which BPE never merges across)."""

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


# ---- answer extraction ------------------------------------------------------------------


def normalize(answer: str) -> str:
    """Drop thousands separators and currency, and a sentence-ending period."""
    answer = answer.replace(",", "").replace("$", "").strip()
    return answer[:-1] if answer.endswith(".") else answer


def extract_strict(text: str) -> str | None:
    """The first ``#### <number>`` in the text, normalised; None when absent."""
    match = STRICT.search(text)
    return normalize(match.group(1)) if match else None


def extract_flexible(text: str) -> str | None:
    """The last number-like span in the text, normalised; None when there is none."""
    matches = FLEXIBLE.findall(text)
    if not matches:
        return None
    wide, narrow = matches[-1]
    return normalize(wide or narrow)


def parse_number(answer: str | None) -> Decimal | None:
    """The answer as an exact decimal (floats would merge integers above 2**53); None when
    it is not a finite number."""
    if answer is None:
        return None
    try:
        value = Decimal(answer)
    except InvalidOperation:
        return None
    return value if value.is_finite() else None


def is_correct(answer: str | None, gold: str) -> bool:
    """Numeric equality after parsing ("18.00" == "18"); anything unparseable is wrong."""
    value, target = parse_number(answer), parse_number(normalize(gold))
    return value is not None and target is not None and value == target


# ---- lm-eval's verdicts --------------------------------------------------------------------


def lm_eval_cut(text: str, eos: str | None = None) -> str:
    """``text`` as lm-eval's generation returns it: cut before each stop sequence in turn
    (``Question:``, ``</s>``, ``<|im_end|>``, then the EOS string)."""
    stops = list(LM_EVAL_STOP_SEQUENCES)
    if eos is not None and eos not in stops:
        stops.append(eos)
    for stop in stops:
        if stop:
            text = text.split(stop, 1)[0]
    return text


def lm_eval_extract(text: str, pattern: re.Pattern[str], group_select: int) -> str:
    """lm-eval's ``regex`` filter: the ``group_select``-th match (a match of several groups
    gives its first non-empty one), stripped; ``[invalid]`` when nothing matches."""
    matches = pattern.findall(text)
    if not matches:
        return LM_EVAL_INVALID
    match = matches[group_select]
    if isinstance(match, tuple):
        match = next((group for group in match if group), LM_EVAL_INVALID)
    return match.strip()


def _lm_eval_normalized(text: str) -> str:
    for pattern in LM_EVAL_IGNORED:
        text = pattern.sub("", text)
    return text.lower()


def lm_eval_exact_match(prediction: str, reference: str) -> bool:
    """lm-eval's ``exact_match`` with the gsm8k task's options (ignore_case, the ignored
    patterns above, punctuation kept): a string comparison, so "18.00" is not "18"."""
    return _lm_eval_normalized(prediction) == _lm_eval_normalized(reference)


def score_text(text: str, gold: str, eos: str | None = None) -> dict[str, str | bool | None]:
    """Verdicts of one generation under the four extractions of ``EXTRACTIONS``.

    ``gold`` is the dataset's full answer (solution + ``#### N``; a bare number works too).
    All four read ``text`` cut as lm-eval cuts it (its stop sequences and ``eos``):

    - ``strict`` / ``flexible``: lm-eval's regexes, judged numerically as exact decimals
      ("18.00" == "18", "$1,000" == "1000");
    - ``lm_eval_strict`` / ``lm_eval_flexible``: what lm-eval's ``gsm8k`` task reports
      (its regex filters and string ``exact_match``).

    Returns each verdict (bool) and each extracted answer (``<name>_answer``: the
    normalised number or None for the numeric ones, lm-eval's filtered string otherwise)."""
    text = lm_eval_cut(text, eos)
    number = gold.rsplit("####", 1)[-1]  # the final answer, as the metric's "(?s).*#### " leaves it
    strict, flexible = extract_strict(text), extract_flexible(text)
    lm_strict = lm_eval_extract(text, STRICT, 0)
    lm_flexible = lm_eval_extract(text, FLEXIBLE, -1)
    return {
        "strict": is_correct(strict, number),
        "flexible": is_correct(flexible, number),
        "lm_eval_strict": lm_eval_exact_match(lm_strict, gold),
        "lm_eval_flexible": lm_eval_exact_match(lm_flexible, gold),
        "strict_answer": strict,
        "flexible_answer": flexible,
        "lm_eval_strict_answer": lm_strict,
        "lm_eval_flexible_answer": lm_flexible,
    }
