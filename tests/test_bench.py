"""The benchmark's machinery on a tiny shape: every figure is there, finite and positive,
and the decoders it compares chose the same tokens. Speed goals live in the benchmark
itself, not here (timings on a shared machine are not test material)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from study import bench
from study.models.loopformer import LoopFormerConfig, LoopFormerForCausalLM
from tests.support.bench import positive, run_bench

HEADLINE = ("decode_bandwidth_fraction", "nll_roofline_fraction", "decode_cached_vs_recompute", "generate_vs_decoder")


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    argv = [
        "--shape", "tiny", "--device", "cpu", "--threads", "1", "--out", str(out), "--loops", "2",
        "--new-tokens", "5", "--nll-examples", "3", "--nll-batch-size", "2", "--growth-tokens", "3",
        "--max-growth-loops", "4", "--growth-lengths", "3", "5", "--matmul-size", "128", "--copy-megabytes", "8",
        "--repeats", "1",
    ]  # fmt: skip
    return run_bench(argv, out)


def test_headline_figures_are_there(results: dict) -> None:
    for key in HEADLINE:
        assert positive(results[key]), key


def test_figures_are_recomputable_from_their_inputs(results: dict) -> None:
    decode, limits, nll = results["details"]["decode"], results["details"]["machine_limits"], results["details"]["nll"]
    assert decode["tokens_match"] is True
    loops = results["details"]["loops"]
    token_bytes = loops * decode["block_bytes_per_loop"] + decode["head_bytes"]
    bound = token_bytes / (limits["stream_copy_gbs"] * 1e9)
    assert decode["bound_per_token_s"] == pytest.approx(bound)
    assert results["decode_bandwidth_fraction"] == pytest.approx(bound / decode["per_token_s"])
    assert results["decode_cached_vs_recompute"] == pytest.approx(decode["recompute_s"] / decode["cached_s"])
    assert results["generate_vs_decoder"] == pytest.approx(decode["generate_s"] / decode["decoder_s"])
    assert results["nll_roofline_fraction"] == pytest.approx(nll["gflops"] / limits["matmul_gflops"])
    assert nll["peak_rss_bytes"] >= nll["rss_before_bytes"] > 0


def test_growth_covers_the_grid(results: dict) -> None:
    growth = results["details"]["growth"]
    assert list(growth["per_token_s_by_loops"]) == ["1", "2", "4"]
    # a difference of two timings (the run minus its prefill): on a tiny model under load it can be 0
    assert all(math.isfinite(v) and v >= 0 for v in growth["per_token_s_by_loops"].values())
    assert [g["new_tokens"] for g in growth["by_length"]] == [3, 5]
    assert all(positive(g["cached_s"]) and positive(g["recompute_s"]) for g in growth["by_length"])


def test_weight_bytes_count_blocks_and_head() -> None:
    config = LoopFormerConfig(**bench.RANDOM_SHAPES["tiny"], block_size=64)
    model = LoopFormerForCausalLM(config)
    per_loop, head = bench.decode_weight_bytes(model, loops=8)
    d, i = config.n_embd, config.intermediate_dim
    assert per_loop == config.n_layer * (4 * d * d + 2 * d * i) * 4
    assert head == config.vocab_size * d * 4


def test_released_shape_is_the_released_config() -> None:
    """The defaults of ``LoopFormerConfig`` are the released checkpoint's; the bench's shape must agree."""
    config = LoopFormerConfig()
    assert {k: getattr(config, k) for k in bench.RANDOM_SHAPES["released"]} == bench.RANDOM_SHAPES["released"]


def test_bench_cli_help_runs(capsys) -> None:
    with pytest.raises(SystemExit) as raised:
        bench.main(["--help"])
    assert raised.value.code == 0
    assert "--shape" in capsys.readouterr().out


def test_mini_shape_compares_batched_with_single(tmp_path, capsys) -> None:
    """The secondary view: the random mini-shaped model (no embedded base needed)."""
    out = tmp_path / "bench.json"
    argv = [
        "--shape", "mini", "--random", "--device", "cpu", "--out", str(out), "--loops", "2", "--new-tokens", "4",
        "--nll-examples", "3", "--nll-batch-size", "2", "--growth-tokens", "3", "--max-growth-loops", "2",
        "--growth-lengths", "3", "--matmul-size", "64", "--copy-megabytes", "8", "--repeats", "1",
    ]  # fmt: skip
    previous = torch.get_num_threads()
    try:
        assert bench.main(argv) == 0
    finally:
        torch.set_num_threads(previous)
    results = json.loads(out.read_text())
    assert all(positive(results[key]) for key in HEADLINE)
    single = results["details"]["nll"]["single"]
    assert positive(single["batched_vs_single"]) and single["max_abs_diff"] < 1e-3
    assert "RANDOM" in capsys.readouterr().out
