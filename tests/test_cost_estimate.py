"""``python -m study.cost_estimate``: the README's FLOP estimate, by hand on a tiny shape and
for v17 (the schedule sweep and every NLL slice are counted)."""

from __future__ import annotations

import pytest

from study.config import load_config
from study.cost_estimate import (
    PETA,
    RELEASED_SHAPE,
    TokenCounts,
    generation_flops,
    main,
    sequence_flops,
    study_flops,
)
from study.models.loopformer import LoopFormerConfig

SHAPE = LoopFormerConfig(n_embd=8, n_head=2, n_layer=3, intermediate_dim=16, vocab_size=100, block_size=64)
BLOCK = 2 * (4 * 64 + 2 * 8 * 16)  # 1024 weight-matmul FLOPs per token per block


def test_sequence_and_generation_flops_by_hand() -> None:
    # 2 loops x 3 blocks x (4 tokens x 1024 + 4 x 8 x (1+2+3+4) attention) + head on 2 positions
    assert sequence_flops(SHAPE, 2, 4, 2) == 6 * (4 * BLOCK + 32 * 10) + 2 * 2 * 8 * 100
    # prefill of 4 (head once), then 2 steps attending to 5 and 6 keys
    steps = sum(6 * (BLOCK + 32 * 1) + 1600 + 6 * 32 * (4 + j) for j in (1, 2))
    assert generation_flops(SHAPE, 2, 4, 3) == sequence_flops(SHAPE, 2, 4, 1) + steps


def test_study_flops_counts_every_stage_and_the_schedules() -> None:
    config = load_config("v17")
    counts = TokenCounts(prompt=60.0, answer=96.0, sft=155.0)
    parts = study_flops(config, RELEASED_SHAPE, counts)
    assert set(parts) == {"sft", "nll_depth_grid", "schedules", "exact_match", "latency"}
    models, grid = 3, config.nll.inference_loops
    one = sum(sequence_flops(RELEASED_SHAPE, k, 156.0, 96.0) for k in grid)
    assert parts["nll_depth_grid"] == pytest.approx(models * 900 * one)  # test, heldout and seen: 300 each
    # 35 schedules of 4 steps in eighths on the 300 test questions: 35 x 4 = 140 loops per
    # question, against the grid's 58 on three times the questions
    assert parts["schedules"] == pytest.approx(models * 300 * 35 * sequence_flops(RELEASED_SHAPE, 4, 156.0, 96.0))
    sft = sum(3 * 2 * 512 * sequence_flops(RELEASED_SHAPE, k, 155.0, 155.0) for k in (8, 4))
    assert parts["sft"] == pytest.approx(sft)
    assert 5.5 < parts["nll_depth_grid"] / PETA < 6.5 and 4.5 < parts["schedules"] / PETA < 5.5


def test_the_command_prints_each_part_and_refuses_a_looped_decoder(capsys) -> None:
    assert main(["--version", "v17"]) == 0
    out = capsys.readouterr().out
    assert "schedules" in out and "nll_depth_grid" in out and "GPU-minutes at 6.5 TFLOP/s" in out
    assert main(["--version", "smol"]) == 2
    assert "looped-decoder config" in capsys.readouterr().err
