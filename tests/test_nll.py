"""Continuation scoring, the bootstrap statistics and the resumable NLL stage."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats
from torch import nn

from study.io import read_csv
from study.stages import nll as nll_stage
from study.stages.nll import (
    NLL_COLUMNS,
    PREFERRED_COLUMNS,
    SUMMARY_COLUMNS,
    fit_to_window,
    length_batches,
    paired_depth_bootstrap,
    ratio_ci,
    ratio_of_sums,
    score_continuations,
)
from study.tasks.gsm8k import EncodedExample
from tests.helpers_sweep import make_context, one_thread, tiny_model


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    with one_thread():
        yield


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


def test_ratio_ci_equals_scipy():
    rng = np.random.default_rng(0)
    tokens = rng.integers(20, 200, size=40)
    nll = tokens * rng.uniform(0.5, 2.0, size=40)
    ours = ratio_ci(nll, tokens, resamples=500, confidence=0.9, seed=3)
    direct = stats.bootstrap(
        (nll, tokens.astype(float)),
        lambda a, b, axis: a.sum(axis=axis) / b.sum(axis=axis),
        paired=True,
        vectorized=True,
        n_resamples=500,
        confidence_level=0.9,
        method="percentile",
        rng=np.random.default_rng(3),
    ).confidence_interval
    assert ours == (direct.low, direct.high)
    assert ours[0] < ratio_of_sums(nll, tokens) < ours[1]


def test_paired_bootstrap_dominant_loop_always_wins():
    rng = np.random.default_rng(1)
    tokens = rng.integers(10, 100, size=30).astype(float)
    base = tokens * rng.uniform(1.0, 3.0, size=30)
    # loop index 1 is better on every single example, so it wins every resample
    nll = np.stack([base + 0.2 * tokens, base, base + 0.05 * tokens, base + rng.uniform(0.01, 1.0, 30) * tokens])
    result = paired_depth_bootstrap(nll, tokens, resamples=300, confidence=0.95, seed=5)
    assert result.best_index == 1
    assert result.p_best == [0.0, 1.0, 0.0, 0.0]
    assert result.gap[1] == 0.0 and result.gap_ci[1] == (0.0, 0.0)
    assert all(low > 0 for i, (low, _) in enumerate(result.gap_ci) if i != 1)
    assert result.gap[2] == pytest.approx(0.05)
    again = paired_depth_bootstrap(nll, tokens, resamples=300, confidence=0.95, seed=5)
    assert again == result


def recompute_summary_from_rows(ctx) -> None:
    """Every summary cell from nll.csv by hand: the headline is token-weighted (sum of NLL
    over sum of tokens), example_mean_nll the plain mean of per-example ratios, and
    p_best_is_train_loops the p_best of the model's training depth (0 off the grid)."""
    rows = pd.read_csv(ctx.results_path("nll.csv"))
    summary = pd.read_csv(ctx.results_path("nll_summary.csv"))
    preferred = pd.read_csv(ctx.results_path("preferred_depth.csv"))
    assert len(summary) == rows.groupby(["model", "split", "inference_loops"]).ngroups
    for _, cell in summary.iterrows():
        mine = rows[
            (rows["model"] == cell["model"])
            & (rows["split"] == cell["split"])
            & (rows["inference_loops"] == cell["inference_loops"])
        ]
        assert cell["examples"] == len(mine) and cell["tokens"] == mine["answer_tokens"].sum()
        assert cell["nll_per_token"] == pytest.approx(mine["nll_sum"].sum() / mine["answer_tokens"].sum(), rel=1e-12)
        assert cell["example_mean_nll"] == pytest.approx((mine["nll_sum"] / mine["answer_tokens"]).mean(), rel=1e-12)
        assert cell["final_tokens"] == mine["final_tokens"].sum()
        final = mine["final_nll_sum"].sum() / mine["final_tokens"].sum()
        assert cell["final_nll_per_token"] == pytest.approx(final, rel=1e-12)
        assert cell["ci_low"] <= cell["nll_per_token"] <= cell["ci_high"]
    train_loops = {"base": 8, "train1": 1}  # tiny_model's default depth (off the grid); the SFT entry
    for (model, split), group in preferred.groupby(["model", "split"]):
        assert set(group["train_loops"]) == {train_loops[model]}
        at_train = group[group["inference_loops"] == train_loops[model]]["p_best"]
        expected = float(at_train.iloc[0]) if len(at_train) else 0.0
        assert set(group["p_best_is_train_loops"]) == {expected}, (model, split)
        cells = summary[(summary["model"] == model) & (summary["split"] == split)]
        best = cells.loc[cells["nll_per_token"].idxmin()]
        assert set(group["best_loops"]) == {best["inference_loops"]}
        assert group["best_nll"].to_list() == pytest.approx([best["nll_per_token"]] * len(group), rel=1e-12)


def test_run_writes_results_and_resumes(tmp_path, monkeypatch):
    ctx = make_context(tmp_path, sft_loops=(1,))  # train1: its training depth is on the grid, base's is not
    nll_stage.run(ctx)
    recompute_summary_from_rows(ctx)
    outputs = ("nll.csv", "nll_summary.csv", "preferred_depth.csv")
    first = {name: ctx.results_path(name).read_bytes() for name in outputs}

    rows = read_csv(ctx.results_path("nll.csv"))
    assert tuple(rows[0]) == NLL_COLUMNS
    assert tuple(read_csv(ctx.results_path("nll_summary.csv"))[0]) == SUMMARY_COLUMNS
    preferred = read_csv(ctx.results_path("preferred_depth.csv"))
    assert tuple(preferred[0]) == PREFERRED_COLUMNS
    test_ids = [e.id for e in ctx.examples("nll_test")]
    assert [int(r["example_id"]) for r in rows[: len(test_ids)]] == test_ids
    assert [(r["model"], r["split"], r["inference_loops"]) for r in rows[:: len(test_ids)]][:2] == [
        ("base", "test", "1"),
        ("base", "test", "2"),
    ]
    assert {r["model"] for r in preferred} == {"base", "train1"}
    assert all(int(r["answer_tokens"]) > int(r["final_tokens"]) > 0 for r in rows)
    for model in ("base", "train1"):
        matches = {r["train_test_match"] for r in preferred if r["model"] == model}
        assert len(matches) == 1
    assert sum(float(r["p_best"]) for r in preferred if (r["model"], r["split"]) == ("base", "test")) == 1.0

    # resume: one cell deleted is recomputed, the others are read back; outputs are byte-identical
    calls = []
    real = nll_stage.score_continuations
    monkeypatch.setattr(nll_stage, "score_continuations", lambda *a, **k: calls.append(a[0].policy.id) or real(*a, **k))
    nll_stage.cell_path(ctx, "train1", "train", "M2").unlink()
    nll_stage.run(ctx)
    assert calls == ["M2"]
    assert {name: ctx.results_path(name).read_bytes() for name in outputs} == first

    # everything finished: no model is even loaded
    monkeypatch.setattr(ctx, "load_model", lambda spec: pytest.fail(f"{spec.name} reloaded"))
    nll_stage.run(ctx)
    assert {name: ctx.results_path(name).read_bytes() for name in outputs} == first


def test_check_stop_between_cells(tmp_path, monkeypatch):
    from study.pipeline import Interrupted

    ctx = make_context(tmp_path)
    ctx._stop[0] = True
    with pytest.raises(Interrupted):
        nll_stage.run(ctx)
    assert not ctx.cells_dir("nll").exists()
