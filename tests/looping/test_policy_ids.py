"""``parse_policy``: every policy id reads back as the policy that wrote it."""

from __future__ import annotations

import pytest

from study.looping.policies import (
    HaltingWindow,
    LadderTrace,
    LoopedWindow,
    RungLadder,
    StepSchedule,
    UniformLoops,
    WindowLadder,
    WindowLadderTrace,
    WindowTrace,
    parse_policy,
)
from study.looping.spec import LoopSpec

POLICIES = [
    UniformLoops(8),
    StepSchedule((0.5, 0.25, 0.125, 0.125)),
    LoopedWindow(LoopSpec(window=(12, 15), loops=1)),
    LoopedWindow(LoopSpec(window=(12, 15), loops=3, strategy="euler")),
    LoopedWindow(LoopSpec(window=(12, 15), loops=3, strategy="euler", decode_mode="full")),
    LoopedWindow(
        LoopSpec(
            window=(1, 2),
            loops=4,
            strategy="ema",
            mode="layer",
            ema_alpha=0.7,
            halt_tau=1e-5,
            halt_scope="batch",
            cache_strategy="first",
            decode_mode="first_n",
            decode_first_n=3,
        )
    ),
    LoopedWindow(LoopSpec(window=(0, 3), loops=4, strategy="anderson", anderson_m=3, anderson_beta=0.5)),
    LoopedWindow(LoopSpec(window=(0, 3), loops=2, strategy="heavy_ball", ema_alpha=0.25, momentum_beta=0.6)),
    LoopedWindow(LoopSpec(window=(1, 2), loops=3, strategy="ema_sched", per_step_alphas=(0.1, 0.2, 0.3))),
    LoopedWindow(
        LoopSpec(
            window=(1, 3),
            loops=2,
            strategy="layer_anchored_frozen",
            mode="layer",
            anchor_beta=-0.5,
            anchor_rescale=True,
            cache_strategy="none",
        )
    ),
    HaltingWindow(LoopSpec(window=(12, 15), loops=8, strategy="euler"), "residual", 0.05),
    HaltingWindow(LoopSpec(window=(1, 2), loops=8, strategy="euler", decode_mode="full"), "kl", 1e-5),
    RungLadder((2, 4, 8), 0.01),
    LadderTrace((2, 4, 8)),
    WindowTrace(LoopSpec(window=(12, 15), loops=8, strategy="euler", decode_mode="full")),
    WindowLadder((1, 2, 4, 8), 0.01, LoopSpec(window=(12, 15), loops=8, strategy="euler", decode_mode="full")),
    WindowLadder((2, 4), 1e-05, LoopSpec(window=(0, 3), loops=4, strategy="anderson", anderson_m=3)),
    WindowLadderTrace(
        (1, 2, 4), LoopSpec(window=(12, 15), loops=4, strategy="euler", cache_strategy="per_loop", decode_mode="full")
    ),
]


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: p.id)
def test_every_id_parses_back_to_its_policy(policy):
    assert parse_policy(policy.id) == policy


def test_examples_of_the_results_files():
    assert parse_policy("M8") == UniformLoops(8)
    assert parse_policy("sched-0.5-0.25-0.125-0.125") == StepSchedule((0.5, 0.25, 0.125, 0.125))
    naive = parse_policy("naive-w12-15-K1")
    assert isinstance(naive, LoopedWindow)
    # what the id leaves out takes the spec's defaults
    assert naive.spec == LoopSpec(window=(12, 15), loops=1, strategy="naive")
    assert parse_policy("euler-w12-15-K3-decode-full").spec.decode_mode == "full"
    ladder = parse_policy("ladder-1-2-4-8-euler-w12-15-cache-per_loop-decode-full-kl0.01")
    assert isinstance(ladder, WindowLadder) and ladder.backbone == "looped_decoder"
    assert [rung.id for rung in ladder.rungs] == [f"euler-w12-15-K{k}-cache-per_loop-decode-full" for k in (1, 2, 4, 8)]
    assert ladder.inference_loops == 15 and ladder.describe()["ladder"] == [1, 2, 4, 8]
    assert parse_policy("ladder-2-4-8-kl0.01") == RungLadder((2, 4, 8), 0.01)  # LoopFormer's ids unchanged


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("euler-w1-2", "expected <strategy>"),
        ("M0", "positive integer"),
        ("sched-0.5-0.2", "sums to"),
        ("euler-w1-2-K3-decode-bypass", "cannot read '-decode-bypass'"),
        ("euler-w1-2-K3-cache-bogus", "cache_strategy"),
        ("ema-w1-2-K3-alpha0.5", "id is 'ema-w1-2-K3'"),  # a default spelt out: one name per computation
        ("euler-w1-2-K3-alpha0.7", "does not use ema_alpha"),
        ("naive-w1-2-K2-residual0.1", "cannot halt"),
        ("ladder-4-2-kl0.1", "must increase"),
        ("ladder-1-2-euler-w1-2-K2-kl0.1", "cannot read '-K2'"),  # a window ladder's id has no K
        ("ladder-2-3-aitken-w1-2-kl0.1", "loops must be even"),  # every rung must be a valid spec
        ("ladder-1-2-naive-w1-2-alpha0.7-kl0.1", "does not use ema_alpha"),
        ("ladder-1-2-ema-w1-2-alpha0.5-kl0.1", "id is 'ladder-1-2-ema-w1-2-kl0.1'"),  # a default spelt out
        ("wobble-w1-2-K3", "unknown strategy"),
    ],
)
def test_bad_ids_are_refused_with_the_reason(text, says):
    with pytest.raises(ValueError, match="policy") as caught:
        parse_policy(text)
    assert says in str(caught.value)
