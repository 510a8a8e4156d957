"""The analytic FLOP count, the fit and the resumable latency stage (no timing assertions)."""

from __future__ import annotations

import json

import pytest
import torch

from study.io import read_csv, read_json
from study.manifest import cpu_model
from study.models.loopformer import LoopFormerConfig
from study.stages import latency as latency_stage
from study.stages.latency import (
    FIT_COLUMNS,
    LATENCY_COLUMNS,
    fit_row,
    generation_flops_per_token,
    latency_row,
    timing_order,
    token_flops,
)
from tests.support.helpers_sweep import make_context


def test_token_flops_by_hand():
    config = LoopFormerConfig(n_embd=8, n_head=2, n_layer=3, intermediate_dim=16, vocab_size=100, block_size=32)
    # per block: 2 * (4*64 + 2*8*16) = 1024 matmul FLOPs, plus 4 * context * 8 for attention
    assert token_flops(config, loops=1, context=10, head=False) == 3 * (1024 + 320)
    assert token_flops(config, loops=2, context=10) == 2 * 3 * (1024 + 320) + 2 * 8 * 100
    # mean context of 5 new tokens after a 10-token prompt is 10 + 2
    assert generation_flops_per_token(config, 4, 10.0, 5) == token_flops(config, 4, 12.0)


def test_fit_row():
    fit = fit_row("m", [2, 4, 8], [0.3, 0.5, 0.9])
    assert fit["slope_s_per_loop"] == pytest.approx(0.1)
    assert fit["intercept_s"] == pytest.approx(0.1)
    assert fit["r_squared"] == pytest.approx(1.0)
    one = fit_row("m", [4], [0.5])  # no line through one loop count: empty cells, never NaN
    assert (one["slope_s_per_loop"], one["intercept_s"], one["r_squared"]) == ("", "", "")


def timing_cell(seconds: list[float], prefill: list[float]) -> dict:
    return {
        "policy": "M4", "inference_loops": 4, "new_tokens": 9, "samples": len(seconds), "warmup": 1,
        "device": "Some CPU @ 2.0GHz", "threads": 1, "seconds": seconds, "prefill_seconds": prefill,
        "order_position": [0] * len(seconds), "prompt_tokens": [10] * len(seconds), "flops_per_token": 123,
        "load_average_before": [1.5, 1.0, 0.5], "load_average_after": [2.5, 1.0, 0.5],
    }  # fmt: skip


def test_latency_row_median_only_below_ten_samples_and_prefill_apart_from_decode():
    row = latency_row("base", timing_cell([0.5, 0.1, 0.3, 0.2, 0.4], [0.01, 0.03, 0.02, 0.05, 0.04]))
    assert tuple(row) == LATENCY_COLUMNS
    assert row["median_s"] == 0.3 and row["prefill_s"] == 0.03
    assert (row["p10_s"], row["p90_s"]) == ("", "")  # 5 samples: no percentiles
    assert row["note"] == "median only (n = 5 < 10)"
    # decode: the 8 tokens after the first over the median of generation - prefill (0.49 .07 .28 .15 .36)
    assert row["decode_tokens_per_s"] == pytest.approx(8 / 0.28)
    assert (row["threads"], row["device"], row["load_1m_before"], row["load_1m_after"]) == (
        1,
        "Some CPU @ 2.0GHz",
        1.5,
        2.5,
    )

    ten = latency_row("base", timing_cell([0.1 * i for i in range(1, 11)], [0.01] * 10))
    assert ten["p10_s"] == pytest.approx(0.19) and ten["p90_s"] == pytest.approx(0.91) and ten["note"] == ""
    noisy = latency_row("base", timing_cell([0.1, 0.1], [0.2, 0.2]))  # generation no slower than its prefill
    assert noisy["decode_tokens_per_s"] == "" and "decode rate not resolved" in noisy["note"]


def test_timing_order_is_a_seeded_permutation_per_round_not_ascending():
    order = timing_order(6, 12, seed=2026, model="base")
    assert len(order) == 12 and all(sorted(r) == list(range(6)) for r in order)
    assert any(r != sorted(r) for r in order) and len({tuple(r) for r in order}) > 1  # shuffled, and anew each round
    assert order == timing_order(6, 12, seed=2026, model="base")  # seeded: a rerun times in the same order
    assert order != timing_order(6, 12, seed=2027, model="base") != timing_order(6, 12, seed=2026, model="train4")


def test_run_times_depths_interleaved_writes_results_and_resumes(tmp_path, monkeypatch):
    ctx = make_context(tmp_path)
    calls = []
    real = latency_stage.measure_depths
    monkeypatch.setattr(latency_stage, "measure_depths", lambda *a: calls.append(a) or real(*a))
    latency_stage.run(ctx)
    # one interleaved measurement per model, of every depth, in the seeded order
    assert [[r.policy.id for r in c[0]] for c in calls] == [["M1", "M2"], ["M1", "M2"]]
    assert calls[0][6] == timing_order(2, 2, ctx.config.seed, "base")
    rows = read_csv(ctx.results_path("latency.csv"))
    assert tuple(rows[0]) == LATENCY_COLUMNS
    assert [(r["model"], r["inference_loops"]) for r in rows] == [
        ("base", "1"),
        ("base", "2"),
        ("train4", "1"),
        ("train4", "2"),
    ]
    assert all(float(r["median_s"]) > 0 and r["new_tokens"] == "3" and r["samples"] == "2" for r in rows)
    assert all(r["p10_s"] == r["p90_s"] == "" and r["note"].startswith("median only") for r in rows)
    assert all(float(r["prefill_s"]) > 0 and r["threads"] == str(torch.get_num_threads()) for r in rows)
    assert int(rows[1]["flops_per_token"]) > int(rows[0]["flops_per_token"])
    fits = read_csv(ctx.results_path("latency_fit.csv"))
    assert tuple(fits[0]) == FIT_COLUMNS and [f["model"] for f in fits] == ["base", "train4"]
    cell = read_json(latency_stage.cell_path(ctx, "base", "M1"))
    assert len(cell["seconds"]) == len(cell["prefill_seconds"]) == len(cell["order_position"]) == 2
    assert cell["interleaved_with"] == ["M1", "M2"] and cell["device"] == cpu_model()
    assert cell["order_position"] == [r.index(0) for r in timing_order(2, 2, ctx.config.seed, "base")]
    assert len(cell["load_average_before"]) == len(cell["load_average_after"]) == 3

    calls.clear()
    latency_stage.cell_path(ctx, "train4", "M2").unlink()
    latency_stage.run(ctx)
    assert [[r.policy.id for r in c[0]] for c in calls] == [["M2"]]  # only the deleted cell is timed again
    again = read_csv(ctx.results_path("latency.csv"))
    assert again[:3] == rows[:3]  # finished cells are read back unchanged


def test_cells_timed_one_depth_after_another_are_not_reused(tmp_path):
    """A cell from before interleaving (no order_position, no machine record) is timed again."""
    ctx = make_context(tmp_path, latency_loops=(1,))
    latency_stage.run(ctx)
    path = latency_stage.cell_path(ctx, "base", "M1")
    cell = read_json(path)
    policy = ctx.policies([1])[0]
    assert latency_stage.read_cell(path, policy, 3, 2, 1) == cell
    for key in ("order_position", "threads", "load_average_before"):
        old = {k: v for k, v in cell.items() if k != key}
        path.write_text(json.dumps(old))
        assert latency_stage.read_cell(path, policy, 3, 2, 1) is None, key
