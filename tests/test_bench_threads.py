"""``python -m study.bench threads``: every stage kind timed at 1 and 2 threads per shape,
with the load average around it (timings themselves are not test material)."""

from __future__ import annotations

import math

import pytest
import torch

from study.bench_threads import KINDS
from tests.support.bench import run_bench


@pytest.mark.parametrize("shape", ["tiny-llama", "mini"])
def test_every_kind_is_timed_at_one_and_two_threads(shape: str, tmp_path) -> None:
    out = tmp_path / "threads.json"
    argv = [
        "threads", "--shapes", shape, "--tokenizer", "gpt2", "--repeats", "1", "--batch", "2", "--pool", "4",
        "--em-batch", "2", "--new-tokens", "2", "--sft-max-length", "24", "--out", str(out),
    ]  # fmt: skip
    previous = torch.get_num_threads()
    results = run_bench(argv, out)
    assert torch.get_num_threads() == previous  # the bench leaves the process's threads as it found them
    timed = results["threads"][shape]
    assert set(timed) == set(KINDS)
    for kind, figures in timed.items():
        assert set(figures) == {"1", "2", "speedup"}, kind
        assert all(math.isfinite(figures[n]) and figures[n] > 0 for n in ("1", "2")), kind
        assert figures["speedup"] == pytest.approx(figures["1"] / figures["2"])
    details = results["details"]
    assert len(details["load_before"]) == 3 and len(details["load_after"]) == 3 and details["cpu_count"] >= 1
    assert details["cpu_model"] and "git_commit" in details
    shape_details = details["shapes"][shape]
    assert shape_details["nll_batch"] == 2 and shape_details["em_batch"] == 2 and shape_details["sft_tokens"] == 24
    expected = ("M8", "M8") if shape == "mini" else ("euler-w2-3-K4", "euler-w2-3-K2")
    assert shape_details["policy"].startswith(expected[0]) and shape_details["sft_policy"].startswith(expected[1])
