"""Time at equal quality: halting policies timed beside the fixed depths at batch 1, each
with the gold NLL it reaches through the decoding path (``results/adaptive_latency.csv``)."""

from __future__ import annotations

import pytest

from study.config import AdaptiveConfig, LatencyConfig
from study.io import read_csv, read_json
from study.looping.policies import HaltingWindow, LoopedWindow, RungLadder, UniformLoops, WindowLadder
from study.looping.spec import LoopSpec
from study.models.backbones import bind
from study.scoring import score_continuations, score_decoding
from study.stages import latency, nll
from study.stages.latency import ADAPTIVE_LATENCY_COLUMNS, adaptive_latency_row
from study.tasks.gsm8k import encode_example, load_gsm8k
from study.tokenizer import load_tokenizer
from tests.support.helpers_looped import looped_context, tiny_llama
from tests.support.helpers_sweep import make_context, one_thread, tiny_model

PER_LOOP = LoopSpec(window=(2, 3), loops=3, strategy="euler", cache_strategy="per_loop", decode_mode="full")


def nll_per_token(scores) -> float:
    return sum(s.nll_sum for s in scores) / sum(s.answer_tokens for s in scores)


@pytest.fixture(scope="module")
def examples():
    return [encode_example(load_tokenizer(None), e) for e in load_gsm8k().test[:3]]


@pytest.mark.parametrize(
    "model, fixed, halting",
    [
        (tiny_model, UniformLoops(4), RungLadder((1, 2, 4), 0.0)),
        (tiny_llama, LoopedWindow(PER_LOOP), HaltingWindow(PER_LOOP, "kl", 0.0)),
        (tiny_llama, LoopedWindow(PER_LOOP), WindowLadder((1, 3), 0.0, PER_LOOP)),
    ],
    ids=["loopformer", "looped-decoder", "looped-decoder-ladder"],
)
def test_decoding_the_gold_answer_scores_the_nll_stage_value_and_tau_zero_is_fixed_depth(
    examples, model, fixed, halting
):
    """Fed token by token through the cache, a fixed depth gives the teacher-forced NLL of
    the NLL stage (within 1e-5), and a halting policy at tau = 0 that fixed depth's."""
    network = model(0)
    with one_thread():
        teacher_forced = score_continuations(bind(network, fixed), examples, batch_size=2)
        decoded = score_decoding(bind(network, fixed), examples)
        never_stops = score_decoding(bind(network, halting), examples)
    assert [s.answer_tokens for s in decoded] == [s.answer_tokens for s in teacher_forced]
    assert nll_per_token(decoded) == pytest.approx(nll_per_token(teacher_forced), abs=1e-5)
    for a, b in zip(decoded, teacher_forced, strict=True):
        assert a.nll_sum == pytest.approx(b.nll_sum, abs=1e-5 * a.answer_tokens)
    assert [s.nll_sum for s in never_stops] == [s.nll_sum for s in decoded]
    assert {s.executed_loops for s in never_stops} == {float(fixed.inference_loops)}


def test_a_halting_window_decodes_each_gold_token_at_its_own_depth(examples):
    network = tiny_llama(0)
    with one_thread():
        scores = score_decoding(bind(network, HaltingWindow(PER_LOOP, "kl", 0.05)), examples)
        fixed = score_decoding(bind(network, LoopedWindow(PER_LOOP)), examples)
    assert all(s.executed_loops < PER_LOOP.loops for s in scores)  # some gold tokens stopped early
    assert nll_per_token(scores) != nll_per_token(fixed)


def looped_latency_context(tmp_path, samples: int = 3, cache_strategy: str = "per_loop"):
    ctx = looped_context(tmp_path, nll_loops=(1, 2), sft_loops=(2,))
    assert ctx.config.looping is not None
    looping = ctx.config.looping.model_copy(update={"cache_strategy": cache_strategy, "decode_mode": "full"})
    update = {
        "looping": looping,
        "latency": LatencyConfig(inference_loops=[1, 2], new_tokens=3, warmup=0, samples=samples),
        "adaptive": AdaptiveConfig(k_max=2, rules=["kl"], taus=[0.0, 0.05]),
    }
    ctx.config = ctx.config.model_copy(update=update)
    return ctx


@pytest.fixture(scope="module")
def looped_run(tmp_path_factory):
    ctx = looped_latency_context(tmp_path_factory.mktemp("adaptive-latency"))
    with one_thread():
        nll.run(ctx)
        latency.run(ctx)
    return ctx


def test_stage_writes_one_row_per_model_and_policy(looped_run):
    rows = read_csv(looped_run.results_path("adaptive_latency.csv"))
    assert tuple(rows[0]) == ADAPTIVE_LATENCY_COLUMNS
    head = "euler-w2-3-K{}-cache-per_loop-decode-full"
    policies = [head.format(1), head.format(2), head.format(2) + "-kl0", head.format(2) + "-kl0.05"]
    assert [(r["model"], r["policy"]) for r in rows] == [(m, p) for m in ("base", "train2") for p in policies]
    assert [r["halting"] for r in rows[:4]] == ["false", "false", "true", "true"]
    assert [(r["rule"], r["tau"], r["decode_halting"]) for r in rows[1:4]] == [
        ("", "", ""),
        ("kl", "0.0", "token"),
        ("kl", "0.05", "token"),
    ]
    # three samples: medians only, said so; quality on the three distinct test examples timed
    assert all(r["s_p10"] == r["s_p90"] == "" and r["note"].startswith("median only") for r in rows)
    assert all(r["samples"] == "3" and r["new_tokens"] == "3" and r["quality_examples"] == "3" for r in rows)
    assert all(float(r["nll_ci_low"]) <= float(r["nll_per_token"]) <= float(r["nll_ci_high"]) for r in rows)
    assert [float(r["loops_per_token"]) for r in rows[:3]] == [1.0, 2.0, 2.0]  # fixed: K; tau 0 runs K_max
    assert float(rows[3]["loops_per_token"]) <= 2.0 and float(rows[3]["gold_loops_per_token"]) < 2.0
    # latency.csv keeps the fixed depths only
    assert [(r["model"], r["inference_loops"]) for r in read_csv(looped_run.results_path("latency.csv"))] == [
        ("base", "1"),
        ("base", "2"),
        ("train2", "1"),
        ("train2", "2"),
    ]


def test_fixed_depth_quality_is_the_nll_stage_value_and_tau_zero_equals_fixed(looped_run):
    rows = read_csv(looped_run.results_path("adaptive_latency.csv"))
    summary = read_csv(looped_run.results_path("nll_summary.csv"))
    stage = {(r["model"], r["policy"]): float(r["nll_per_token"]) for r in summary if r["split"] == "test"}
    fixed = [r for r in rows if r["halting"] == "false"]
    assert len(fixed) == 4
    for row in fixed:
        assert float(row["nll_per_token"]) == pytest.approx(stage[row["model"], row["policy"]], abs=1e-5)
    for model in ("base", "train2"):
        by = {r["policy"]: r for r in rows if r["model"] == model}
        head = "euler-w2-3-K2-cache-per_loop-decode-full"
        assert by[head + "-kl0"]["nll_per_token"] == by[head]["nll_per_token"]


def test_halting_policies_are_timed_interleaved_with_the_fixed_depths(looped_run):
    cell = read_json(latency.cell_path(looped_run, "base", "euler-w2-3-K2-cache-per_loop-decode-full-kl0.05"))
    assert len(cell["interleaved_with"]) == 4 and len(cell["token_loops"]) == 3
    assert cell["prefill_seconds"] == []  # a halting policy's prefill is not timed apart
    assert cell["quality"]["example_ids"] == [e.id for e in looped_run.examples("nll_test")]


def test_cells_without_quality_are_timed_again_when_halting_is_timed(tmp_path):
    ctx = looped_latency_context(tmp_path, samples=1)
    ctx.config = ctx.config.model_copy(update={"adaptive": None})
    with one_thread():
        latency.run(ctx)
    assert not ctx.results_path("adaptive_latency.csv").exists()
    path = latency.cell_path(ctx, "base", "euler-w2-3-K1-cache-per_loop-decode-full")
    assert "quality" not in read_json(path)
    ctx.config = ctx.config.model_copy(update={"adaptive": AdaptiveConfig(k_max=2, rules=["kl"], taus=[0.0])})
    with one_thread():
        latency.run(ctx)
    assert read_json(path)["quality"]["example_ids"] == [ctx.examples("nll_test")[0].id]
    assert len(read_csv(ctx.results_path("adaptive_latency.csv"))) == 2 * 3


def test_a_looped_decoder_without_per_loop_slots_times_no_halting_policy(tmp_path):
    ctx = looped_latency_context(tmp_path, samples=1, cache_strategy="last")
    assert latency.timed_halting(ctx) == []


def test_loopformer_times_its_per_prompt_ladder(tmp_path):
    ctx = make_context(tmp_path, latency_loops=(1, 4), sft_loops=(2,))
    ctx.config = ctx.config.model_copy(update={"adaptive": AdaptiveConfig(ladder=[1, 2, 4], taus=[0.0])})
    with one_thread():
        latency.run(ctx)
    rows = read_csv(ctx.results_path("adaptive_latency.csv"))
    ladder = [r for r in rows if r["model"] == "base" and r["halting"] == "true"]
    assert [(r["policy"], r["rule"], r["decode_halting"]) for r in ladder] == [("ladder-1-2-4-kl0", "kl", "prompt")]
    top = next(r for r in rows if r["model"] == "base" and r["policy"] == "M4")
    # tau 0 climbs to the top rung: M4's tokens and quality, the climb's cost in its time only
    assert ladder[0]["loops_per_token"] == top["loops_per_token"] == "4.0"
    assert float(ladder[0]["nll_per_token"]) == pytest.approx(float(top["nll_per_token"]), abs=1e-9)


def timed_cell(seconds: list[float]) -> dict:
    quality = {"example_ids": [1, 2], "answer_tokens": [4, 6], "nll_sum": [2.0, 3.0], "executed_loops": [2.0, 1.5]}
    return {"seconds": seconds, "token_loops": [1.5] * len(seconds), "samples": len(seconds), "new_tokens": 8,
            "quality": quality}  # fmt: skip


def test_percentiles_need_ten_samples():
    policy = HaltingWindow(PER_LOOP, "kl", 0.01)
    few = adaptive_latency_row("base", policy, timed_cell([0.1 * i for i in range(1, 10)]), "token", (200, 0.95, 7))
    assert (few["s_p10"], few["s_p90"]) == ("", "") and few["note"] == "median only (n = 9 < 10)"
    ten = adaptive_latency_row("base", policy, timed_cell([0.1 * i for i in range(1, 11)]), "token", (200, 0.95, 7))
    assert ten["s_p10"] == pytest.approx(0.19) and ten["s_p90"] == pytest.approx(0.91) and ten["note"] == ""
    assert ten["nll_per_token"] == 0.5 and ten["loops_per_token"] == 1.5 and ten["quality_examples"] == 2
    assert ten["gold_loops_per_token"] == pytest.approx((2.0 * 3 + 1.5 * 5) / 8)  # weighted by tokens fed back
    assert (ten["halting"], ten["rule"], ten["tau"]) == ("true", "kl", 0.01)


def test_report_draws_the_frontier_and_tables_the_policies(looped_run, tmp_path):
    from study.report import load_results, plot_adaptive_latency, render_report, write_figures

    results = load_results(looped_run.run_dir, models=looped_run.model_specs(), config=looped_run.config)
    assert results.adaptive_latency is not None and results.adaptive_latency["halting"].dtype == bool
    figure = plot_adaptive_latency(results)
    assert len(figure.axes) == 2
    for ax in figure.axes:
        legend = ax.get_legend()
        assert legend is not None
        assert [text.get_text() for text in legend.get_texts()] == ["fixed depth", "halting: kl (label: tau)"]
        assert "(3 questions)" in ax.get_title()
    figures = write_figures(results, tmp_path)
    assert figures["adaptive_latency"] is not None
    report = render_report(results, figures)
    assert "## Time at equal quality: halting in decoding" in report
    assert "| halting kl, tau = 0.05 |" in report and "Source: `results/adaptive_latency.csv`" in report
    assert "](figures/adaptive_latency.png)" in report
