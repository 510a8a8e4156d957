"""``python -m study.bench --shape smol`` on the tiny-llama shape: every measurement runs,
every figure is in the JSON, finite, positive and recomputable from its inputs; the
analytic costs count what the looped decoder runs. Speed goals live in the bench itself
(timings on a shared machine are not test material)."""

from __future__ import annotations

import argparse

import pytest
import torch

from study import bench_smol
from study.models.entries.looped_decoder import decoder_layer_flops
from study.scoring import score_continuations
from study.tasks.gsm8k import encode_example, load_gsm8k
from study.tokenizer import load_tokenizer
from tests.support.bench import positive, run_bench
from tests.support.helpers_sweep import one_thread

HEADLINE = (
    "smol_nll_roofline_fraction", "smol_nll_sweep_speedup", "smol_nll_sweep_speedup_bf16", "smol_sft_step_speedup",
    "smol_decode_bandwidth_fraction",
)  # fmt: skip


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("bench") / "bench-smol.json"
    # one thread: two on a loaded machine make a tiny model's timings noise (measure_sft's two are tested apart)
    argv = [
        "--shape", "tiny-llama", "--tokenizer", "gpt2", "--threads", "1", "--out", str(out), "--nll-examples", "2",
        "--nll-pool", "6", "--sweep-grid", "1", "2", "--new-tokens", "8", "--sft-steps", "1", "--sft-max-length",
        "48", "--matmul-size", "64", "--copy-megabytes", "4", "--repeats", "2",
    ]  # fmt: skip
    return run_bench(argv, out)


def test_every_headline_figure_is_there(results: dict) -> None:
    assert [key for key in results if key != "details"] == sorted(HEADLINE)
    for key in HEADLINE:
        assert positive(results[key]), key
    details = results["details"]
    assert details["shape"] == "tiny-llama" and details["threads"] == 1
    assert details["cpu_model"] and "git_commit" in details  # a quoted figure names its machine and code
    assert details["tokenizer"].startswith("GPT-2") and "folded" in details["tokenizer"]


def test_figures_are_recomputable_from_their_inputs(results: dict) -> None:
    d = results["details"]
    nll, sweep, decode, sft = d["nll"], d["sweep"], d["decode"], d["sft"]
    assert results["smol_nll_roofline_fraction"] == pytest.approx(nll["gflops"] / nll["matmul_gflops"])
    assert nll["gflops"] == pytest.approx(nll["useful_gflop"] / nll["seconds"])
    assert nll["policy"].startswith("euler-w2-3-K4") and nll["threads"] == 1
    assert results["smol_nll_sweep_speedup"] == pytest.approx(sweep["baseline_s"] / sweep["fp32_s"])
    assert results["smol_nll_sweep_speedup_bf16"] == pytest.approx(sweep["baseline_s"] / sweep["bf16_s"])
    assert sweep["work"] == sweep["questions"] * len(sweep["grid"]) == 4
    assert sweep["per_second"]["fp32"] == pytest.approx(sweep["work"] / sweep["fp32_s"])
    # the chosen settings run the grouped K-sweep (prefix shared), fp32 and bf16
    assert sweep["fp32_ran_as"] == sweep["bf16_ran_as"] == "grouped (prefix shared)"
    assert sweep["fp32_max_abs_diff_per_token"] == 0.0 < sweep["bf16_max_abs_diff_per_token"] < 0.5
    bound = decode["total_bytes"] / (decode["stream_copy_gbs"] * 1e9)
    assert decode["bound_per_token_s"] == pytest.approx(bound)
    assert results["smol_decode_bandwidth_fraction"] == pytest.approx(bound / decode["per_token_s"])
    assert decode["policy"].startswith("euler-w2-3-K4-cache-per_loop")
    assert results["smol_sft_step_speedup"] == 1.0 and set(sft["times"]) == {"1"}  # chosen = 1: one timing
    assert sft["policy"].startswith("euler-w2-3-K2")


def test_sft_step_is_timed_at_one_and_the_chosen_threads_alternately() -> None:
    model = bench_smol.random_llama("tiny-llama")
    tokenizer = bench_smol.FoldedTokenizer(load_tokenizer(None), 512)
    args = argparse.Namespace(sft_loops=2, sft_steps=2, sft_max_length=32)
    before = [p.detach().clone() for p in model.parameters()]
    previous = torch.get_num_threads()
    try:
        sft = bench_smol.measure_sft(model, bench_smol.looped_family("tiny-llama"), tokenizer, 2, args)
    finally:
        torch.set_num_threads(previous)
    assert set(sft["times"]) == {"1", "2"} and [len(t) for t in sft["times"].values()] == [2, 2]
    assert sft["speedup"] == pytest.approx(min(sft["times"]["1"]) / min(sft["times"]["2"]))
    assert sft["tokens"] == [32, 32] and not model.training
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))  # it trained


def test_layer_passes_count_the_window_k_times() -> None:
    smol = bench_smol.random_llama("tiny-llama").config
    smol.num_hidden_layers = 30  # the count is all that matters here
    policy = bench_smol.looped_family("smol").policy(4)
    assert bench_smol.layer_passes(smol, policy) == 30 - 4 + 4 * 4


def test_decode_bytes_are_every_pass_weights_its_kv_slot_and_the_head() -> None:
    model = bench_smol.random_llama("tiny-llama")
    d, i, kv_width = 32, 64, 2 * (32 // 4)
    layer = (2 * d * d + 2 * d * kv_width + 3 * d * i + 2 * d) * 4  # q, o, k, v, MLP, two RMSNorms
    cost = bench_smol.decode_token_bytes(model, passes=12, context=10.0)
    assert cost["layer_bytes"] == layer and cost["head_bytes"] == 512 * d * 4
    assert cost["kv_bytes"] == 12 * 2 * kv_width * 10.0 * 4
    assert cost["total_bytes"] == 12 * layer + 512 * d * 4 + cost["kv_bytes"]


def test_nll_flops_sum_every_position_of_every_pass() -> None:
    config = bench_smol.random_llama("tiny-llama").config
    length, scored, passes = 7, 3, 12
    by_position = sum(decoder_layer_flops(config, float(p)) for p in range(1, length + 1))
    expected = passes * by_position + 2 * config.hidden_size * config.vocab_size * scored
    assert bench_smol.looped_nll_flops(config, passes, [length], [scored]) == pytest.approx(expected)


def test_the_grouped_sweep_gives_the_separate_cells_scores_bit_for_bit() -> None:
    model = bench_smol.random_llama("tiny-llama")
    tokenizer = bench_smol.FoldedTokenizer(load_tokenizer(None), 512)
    encoded = [encode_example(tokenizer, e) for e in load_gsm8k().test[:2]]
    policies = [bench_smol.looped_family("tiny-llama").policy(k) for k in (1, 2, 3)]
    with one_thread():
        separate = bench_smol.score_sweep(model, policies, encoded, 2, grouped=False)
        direct = score_continuations(bench_smol.bind(model, policies[1]), encoded, 2)
        _, grouped, how = bench_smol.timed_sweep(model, policies, encoded, 1, grouped=True)
    assert list(separate) == [p.id for p in policies] and separate[policies[1].id] == direct
    assert grouped == separate and how == "grouped (prefix shared)"


def test_folded_ids_fit_the_vocabulary_and_keep_gpt2_lengths() -> None:
    gpt2 = load_tokenizer(None)
    folded = bench_smol.FoldedTokenizer(gpt2, 49152)
    text = " ".join(gpt2.decode([i]) for i in (50250, 50256, 100))
    ids = folded.encode(text)
    assert len(ids) == len(gpt2.encode(text)) and max(ids) < 49152
    assert folded.eos_token_id == 50256 % 49152
