"""The analytic FLOP count, the fit and the resumable latency stage (no timing assertions)."""

from __future__ import annotations

import math

import pytest

from study.io import read_csv, read_json
from study.models.loopformer import LoopFormerConfig
from study.stages import latency as latency_stage
from study.stages.latency import (
    FIT_COLUMNS,
    LATENCY_COLUMNS,
    fit_row,
    generation_flops_per_token,
    latency_row,
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
    assert math.isnan(fit_row("m", [4], [0.5])["slope_s_per_loop"])


def test_latency_row_statistics():
    cell = {
        "policy": "M4",
        "inference_loops": 4,
        "new_tokens": 8,
        "samples": 5,
        "warmup": 1,
        "device": "cpu",
        "seconds": [0.5, 0.1, 0.3, 0.2, 0.4],
        "prefill_seconds": [0.01, 0.03, 0.02, 0.05, 0.04],
        "prompt_tokens": [10] * 5,
        "flops_per_token": 123,
    }
    row = latency_row("base", cell)
    assert tuple(row) == LATENCY_COLUMNS
    assert row["median_s"] == 0.3 and row["prefill_s"] == 0.03
    assert row["p10_s"] == pytest.approx(0.14) and row["p90_s"] == pytest.approx(0.46)
    assert row["tokens_per_s"] == pytest.approx(8 / 0.3)


def test_run_writes_results_and_resumes(tmp_path, monkeypatch):
    ctx = make_context(tmp_path)
    latency_stage.run(ctx)
    rows = read_csv(ctx.results_path("latency.csv"))
    assert tuple(rows[0]) == LATENCY_COLUMNS
    assert [(r["model"], r["inference_loops"]) for r in rows] == [
        ("base", "1"),
        ("base", "2"),
        ("train4", "1"),
        ("train4", "2"),
    ]
    assert all(float(r["median_s"]) > 0 and r["new_tokens"] == "3" and r["samples"] == "2" for r in rows)
    assert int(rows[1]["flops_per_token"]) > int(rows[0]["flops_per_token"])
    fits = read_csv(ctx.results_path("latency_fit.csv"))
    assert tuple(fits[0]) == FIT_COLUMNS and [f["model"] for f in fits] == ["base", "train4"]
    cell = read_json(latency_stage.cell_path(ctx, "base", "M1"))
    assert len(cell["seconds"]) == len(cell["prefill_seconds"]) == 2

    measured = []
    real = latency_stage.measure_cell
    monkeypatch.setattr(latency_stage, "measure_cell", lambda *a: measured.append(a[0].policy.id) or real(*a))
    latency_stage.cell_path(ctx, "train4", "M2").unlink()
    latency_stage.run(ctx)
    assert measured == ["M2"]  # only the deleted cell is timed again
    again = read_csv(ctx.results_path("latency.csv"))
    assert again[:3] == rows[:3]  # finished cells are read back unchanged
