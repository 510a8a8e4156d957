"""study.scoring: the one continuation scorer, against log-softmax gathers written by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from study.looping import LoopSpec, loop_decoder
from study.pilot import score_looped
from study.scoring import (
    fit_to_window,
    gold_token_nll,
    length_batches,
    right_pad,
    score_continuations,
)
from study.tasks.gsm8k import EncodedExample
from tests.support.helpers_looped import tiny_llama
from tests.support.helpers_sweep import tiny_model


class TableModel(nn.Module):
    """Position-wise stub: the logits after token v are row v of a table (no attention),
    so every expected log-prob can be written down by hand."""

    def __init__(self, table: list[list[float]]) -> None:
        super().__init__()
        self.table = nn.Embedding.from_pretrained(torch.tensor(table))
        self.lm_head = nn.Identity()
        self.config = type("Config", (), {"model_type": "loopformer", "block_size": 16})()  # bind: a LoopFormer

    def gpt(self, input_ids, **kwargs):
        return type("Out", (), {"last_hidden_state": self.table(input_ids)})()


NAN = float("nan")
TABLE = [
    [NAN, NAN, NAN, NAN],  # token 0 is the padding value: scoring a padded position would give NaN
    [math.log(2), 0.0, 0.0, 0.0],  # after 1: p = 2/5, 1/5, 1/5, 1/5
    [0.0, 0.0, 0.0, math.log(3)],  # after 2: p = 1/6, 1/6, 1/6, 1/2
    [0.0, 0.0, 0.0, 0.0],  # after 3: uniform
]


def test_hand_computed_continuation_scores():
    examples = [
        EncodedExample(example_id=10, input_ids=[3, 1, 2, 3], answer_start=1, final_start=3),
        EncodedExample(example_id=11, input_ids=[1, 3], answer_start=1, final_start=1),
    ]
    first, second = score_continuations(TableModel(TABLE), examples, batch_size=2)
    # 1 after 3: 1/4; 2 after 1: 1/5; 3 after 2: 1/2 (the final answer)
    assert first.example_id == 10 and (first.answer_tokens, first.final_tokens) == (3, 1)
    assert first.nll_sum == pytest.approx(math.log(4) + math.log(5) + math.log(2), abs=1e-6)
    assert first.final_nll_sum == pytest.approx(math.log(2), abs=1e-6)
    # the short row is padded with token 0 (NaN logits): a finite score proves padding is never read
    assert (second.answer_tokens, second.final_tokens) == (1, 1)
    assert second.nll_sum == pytest.approx(math.log(5), abs=1e-6)
    assert second.final_nll_sum == second.nll_sum


def test_over_long_sequences_lose_their_earliest_tokens():
    example = EncodedExample(example_id=1, input_ids=list(range(10)), answer_start=4, final_start=8)
    assert fit_to_window(example, block_size=9) is example  # 9 inputs score all 10 tokens
    assert fit_to_window(example, block_size=6) == EncodedExample(1, list(range(3, 10)), 1, 5)
    assert fit_to_window(example, block_size=3) == EncodedExample(1, list(range(6, 10)), 1, 2)


def test_length_batches_longest_first_and_stable():
    assert length_batches([3, 5, 3, 9, 5], 2) == [[3, 1], [4, 0], [2]]


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=4, block_size=64)


def random_examples(count: int, seed: int) -> list[EncodedExample]:
    generator = torch.Generator().manual_seed(seed)
    examples = []
    for i in range(count):
        length = int(torch.randint(8, 40, (1,), generator=generator))
        ids = torch.randint(0, 50000, (length,), generator=generator).tolist()
        answer_start = int(torch.randint(1, length - 2, (1,), generator=generator))
        final_start = int(torch.randint(answer_start, length - 1, (1,), generator=generator))
        examples.append(EncodedExample(i, ids, answer_start, final_start))
    return examples


@pytest.mark.parametrize("loops", [{"num_loops": 3}, {"schedule": [0.5, 0.25, 0.25]}], ids=["3", "schedule"])
def test_scores_equal_full_forward_log_probs(model, loops):
    examples = random_examples(5, seed=0)
    scores = score_continuations(model, examples, batch_size=5, **loops)
    with torch.no_grad():
        for example, score in zip(examples, scores, strict=True):
            logits = model(torch.tensor([example.input_ids]), use_cache=False, **loops).logits[0]
            log_probs = torch.log_softmax(logits.double(), dim=-1)
            token_nll = [-log_probs[t - 1, example.input_ids[t]].item() for t in range(len(example.input_ids))]
            assert score.nll_sum == pytest.approx(sum(token_nll[example.answer_start :]), abs=1e-4)
            assert score.final_nll_sum == pytest.approx(sum(token_nll[example.final_start :]), abs=1e-4)
            assert score.answer_tokens == len(example.input_ids) - example.answer_start


def test_batched_equals_one_at_a_time(model):
    examples = random_examples(7, seed=1)
    batched = score_continuations(model, examples, batch_size=4, num_loops=2)
    alone = [score_continuations(model, [e], batch_size=1, num_loops=2)[0] for e in examples]
    for a, b in zip(batched, alone, strict=True):
        assert (a.example_id, a.answer_tokens, a.final_tokens) == (b.example_id, b.answer_tokens, b.final_tokens)
        assert abs(a.nll_sum - b.nll_sum) <= 1e-5 * max(1.0, abs(b.nll_sum))
        assert abs(a.final_nll_sum - b.final_nll_sum) <= 1e-5 * max(1.0, abs(b.final_nll_sum))


def test_right_pad_drops_the_last_token_and_masks_the_padding():
    rows = [EncodedExample(0, [5, 6, 7], 1, 2), EncodedExample(1, [8, 9, 10, 11, 12], 1, 3)]
    input_ids, mask = right_pad(rows)
    assert input_ids.tolist() == [[5, 6, 0, 0], [8, 9, 10, 11]]
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]


def test_gold_token_nll_is_the_log_softmax_gather_of_the_continuation():
    """On a random hidden state and head: row r's NLL at token t is -log_softmax(head(h[r, t - 1]))[id_t]."""
    generator = torch.Generator().manual_seed(0)
    rows = [EncodedExample(0, [1, 4, 2, 3], 2, 3), EncodedExample(1, [3, 0, 2], 1, 2)]
    head = nn.Linear(6, 5, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.randn(5, 6, generator=generator))
    hidden = torch.randn(2, 3, 6, generator=generator)
    got = gold_token_nll(hidden, head, rows)
    with torch.no_grad():
        log_probs = torch.log_softmax(head(hidden).double(), dim=-1)
    for r, row in enumerate(rows):
        expected = [-log_probs[r, t - 1, row.input_ids[t]].item() for t in range(row.answer_start, len(row.input_ids))]
        assert got[r].dtype == torch.float64 and got[r].tolist() == pytest.approx(expected, abs=1e-6)


def test_looping_pilot_scorer_equals_the_plain_model_at_one_naive_loop():
    """The training-free looping table's scorer (masked padding, a looped decoder) is the
    same gather: at one naive loop it matches a full forward of the plain model."""
    model = tiny_llama(seed=1)
    examples = random_examples(5, seed=2)
    nll, tokens, loops = score_looped(loop_decoder(model, LoopSpec((2, 3), 1, "naive")), examples, batch_size=3)
    with torch.no_grad():
        for i, example in enumerate(examples):
            logits = model(torch.tensor([example.input_ids]), use_cache=False).logits[0]
            log_probs = torch.log_softmax(logits.double(), dim=-1)
            expected = -sum(
                log_probs[t - 1, example.input_ids[t]].item()
                for t in range(example.answer_start, len(example.input_ids))
            )
            assert nll[i] == pytest.approx(expected, abs=1e-4)
            assert tokens[i] == len(example.input_ids) - example.answer_start
    assert loops.tolist() == [1.0] * 5


def test_looping_pilot_scorer_masks_the_padding_for_per_row_halting():
    """A halting row decides from all of its positions: batched with longer rows (so padded)
    it must run the depth and score the NLL it gets alone."""
    looped = loop_decoder(tiny_llama(seed=1), LoopSpec((1, 4), 6, "heavy_ball", halt_tau=0.3))
    examples = random_examples(6, seed=3)
    batched = score_looped(looped, examples, batch_size=6)
    alone = [score_looped(looped, [e], batch_size=1) for e in examples]
    assert len(set(batched[2].tolist())) > 1  # the rows really halt at different depths
    for i, (nll, tokens, loops) in enumerate(alone):
        assert (batched[1][i], batched[2][i]) == (tokens[0], loops[0])
        assert batched[0][i] == pytest.approx(nll[0], abs=1e-4)
