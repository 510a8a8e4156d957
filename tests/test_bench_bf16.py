"""``python -m study.bench bf16-deviation`` on fast models (a tiny looped Llama, the embedded
mini LoopFormer): the table has one row per depth of the config's grid, its figures are
consistent with each other, and bad input is one line with exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from study import bench
from study.tokenizer import load_tokenizer
from tests.support.helpers_looped import tiny_llama

ROOT = Path(__file__).resolve().parent.parent


def tiny_looped_config(tmp_path: Path) -> Path:
    base = tmp_path / "base"
    tiny_llama(0).save_pretrained(base)
    load_tokenizer(None).save_pretrained(base)
    config = yaml.safe_load((ROOT / "configs" / "smol-smoke.yaml").read_text())
    config["model"] = {"source": str(base), "backbone": "looped_decoder", "tokenizer": "auto"}
    config["looping"]["window"] = [2, 3]
    config["nll"]["inference_loops"] = [1, 2, 3]
    config["adaptive"]["ladder"] = [1, 2]  # a looped decoder's ladder rungs lie on the NLL grid
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_tool(version: str, tmp_path: Path, examples: str = "3") -> tuple[str, dict]:
    out = tmp_path / "deviation.md"
    argv = ["bf16-deviation", "--version", version, "--examples", examples, "--run-dir", str(tmp_path / "run"),
            "--threads", "1", "--out", str(out)]  # fmt: skip
    previous = torch.get_num_threads()
    try:
        assert bench.main(argv) == 0
    finally:
        torch.set_num_threads(previous)
    return out.read_text(), json.loads(out.with_suffix(".json").read_text())


@pytest.mark.parametrize("which", ["tiny-llama", "smoke"])
def test_table_has_every_depth_and_consistent_figures(which: str, tmp_path: Path) -> None:
    version = str(tiny_looped_config(tmp_path)) if which == "tiny-llama" else "smoke"
    text, figures = run_tool(version, tmp_path)
    rows, facts = figures["rows"], figures["summary"]
    grid = [1, 2, 3] if which == "tiny-llama" else [2, 4, 8]
    symbol = "K" if which == "tiny-llama" else "M"
    assert [r["K"] for r in rows] == grid and figures["examples"] == 3
    assert text.count("\n| ") == len(grid) + 1 and f"| {symbol} | NLL/token fp32 |" in text  # header + one row per K
    for dtype in ("fp32", "bf16"):
        best = min(rows, key=lambda r: r[f"nll_{dtype}"])
        assert facts[f"argmin_{dtype}"] == best["K"] and best[f"gap_{dtype}"] == 0.0
        assert all(r[f"gap_{dtype}"] >= 0 for r in rows)
    assert facts["argmin_changed"] == (facts["argmin_fp32"] != facts["argmin_bf16"])
    for r in rows:
        assert 0 < r["deviation_mean"] <= r["deviation_max"] < 0.5  # bf16 really ran, and stayed close
        assert r["speedup"] == pytest.approx(r["s_fp32"] / r["s_bf16"])
        assert abs(r["nll_bf16"] - r["nll_fp32"]) <= r["deviation_max"] + 1e-12  # a weighted mean of the deviations
    assert facts["deviation_max"] == max(r["deviation_max"] for r in rows)
    assert ("CHANGED" in text) == facts["argmin_changed"]


def test_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["bf16-deviation", "--version", "no-such-config"]) == 2
    assert bench.main(["bf16-deviation", "--version", "smoke", "--examples", "0"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and "unknown version 'no-such-config'" in errors[0] and "--examples 0" in errors[1]
    assert not (tmp_path / "deviation.md").exists()
