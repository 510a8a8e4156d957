"""``python -m study.sft_cost`` on a tiny Llama: it trains (the loss moves the weights),
times each step after the warm-up, and prints one JSON line naming the policy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from study import sft_cost
from study.tokenizer import load_tokenizer
from tests.support.helpers_looped import tiny_llama

ROOT = Path(__file__).resolve().parent.parent


def test_sft_cost_times_steps_at_the_training_depth(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = tmp_path / "base"
    tiny_llama(0).save_pretrained(base)
    load_tokenizer(None).save_pretrained(base)
    config = yaml.safe_load((ROOT / "configs" / "smol-smoke.yaml").read_text())
    config["model"] = {"source": str(base), "backbone": "looped_decoder", "tokenizer": "auto"}
    config["looping"]["window"] = [2, 3]
    config["sft"]["max_length"] = 64
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    assert (
        sft_cost.main(["--version", str(path), "--loops", "3", "--steps", "2", "--run-dir", str(tmp_path / "run")]) == 0
    )
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["loops"] == 3 and result["policy"].startswith("euler-w2-3-K3")
    assert result["steps"] == 2 and len(result["seconds"]) == 2 and result["median_s"] > 0
    assert all(0 < tokens <= 64 for tokens in result["tokens"]) and result["peak_rss_mib"] > 0
