"""The smol study (training-free looped SmolLM2) end to end on its smoke config, offline.
Slow (minutes on 2 CPU cores): marked, and run in CI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from safetensors import safe_open

from study.io import read_csv
from tests.support.study_runner import project_deprecations, run_study

pytestmark = pytest.mark.slow


def test_smol_smoke_runs_offline_end_to_end(tmp_path: Path) -> None:
    run_dir = tmp_path / "smol"
    result = run_study(
        "--version", "smol-smoke", "--seed", "2026", "--output-dir", str(run_dir), timeout=3600, show_deprecations=True
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert project_deprecations(result.stderr) == []  # every call into transformers uses the current names
    manifest = json.loads((run_dir / "manifest.json").read_text())
    provenance = manifest["model"]["provenance"]
    assert provenance["quantization"].startswith("Q4_1-quantized") and len(provenance["sha256"]) == 64
    assert manifest["model"]["backbone"] == "looped_decoder" and manifest["model"]["train_loops"] == 1
    report = (run_dir / "report.md").read_text()
    assert "Q4_1-quantized-then-dequantized" in report and "Table 1" in report
    assert "| Train2 (seed 2027) | 2 |" in report and "| Train4 (seed 2026) | 4 |" in report  # K = 2 and 4
    nll = (run_dir / "results" / "nll.csv").read_text().splitlines()
    assert nll[0].startswith("model,seed,train_loops,split,policy,inference_loops,executed_loops")
    assert len(nll) == 1 + 5 * 3 * (3 + 3 + 3)  # (base + 2 depths x 2 seeds) x K x (test + heldout + seen)
    assert "euler-w12-15-K4-cache-per_loop-decode-full" in nll[-1]  # generation scores the NLL model
    # the heldout slice: train questions that neither seed's SFT subset contains, with its own preferred depth
    subsets = manifest["data"]["subsets"]
    assert set(subsets["sft"]) == {"2026", "2027"} and len(subsets["nll_heldout"]) == 3
    assert all(not set(subsets["nll_heldout"]) & set(ids) for ids in subsets["sft"].values())
    preferred = (run_dir / "results" / "preferred_depth.csv").read_text().splitlines()
    assert preferred[0].startswith("model,seed,split,") and any(",heldout," in row for row in preferred[1:])
    # replicate seeds and the depth-shift test: Train4 vs Train2 pooled over both seeds, on test and heldout
    shift = list(csv.DictReader((run_dir / "results" / "depth_shift.csv").open()))
    pooled_s = {(r["model_a"], r["model_b"], r["split"]) for r in shift if r["statistic"] == "S" and r["seed"] == "all"}
    assert {("train4", "train2", "test"), ("train4", "train2", "heldout")} <= pooled_s
    assert all(r["ci_low"] and float(r["ci_low"]) <= float(r["value"]) <= float(r["ci_high"])
               for r in shift if r["statistic"] == "S" and r["seed"] == "all")  # fmt: skip
    replication = list(csv.DictReader((run_dir / "results" / "replication.csv").open()))
    assert {r["seed"] for r in replication if r["model"] == "train4"} == {"2026", "2027", "all"}
    for model, loops in (("train2-s2026", 2), ("train2-s2027", 2), ("train4-s2026", 4), ("train4-s2027", 4)):
        folder = run_dir / "models" / model
        assert json.loads((folder / "loop_policy.json").read_text())["train_loops"] == loops
        with safe_open(folder / "model.safetensors", "pt") as tensors:
            assert all(key.startswith(("model.", "lm_head.")) for key in tensors.keys())  # noqa: SIM118
    # adaptive: both families of halting policies on every model, the ladder's trace one cell per model
    adaptive = list(csv.DictReader((run_dir / "results" / "adaptive.csv").open()))
    ladder = "ladder-1-2-4-euler-w12-15-cache-per_loop-decode-full"
    halting = {r["policy"] for r in adaptive if r["model"] == "base" and r["kind"] == "halting"}
    window = "euler-w12-15-K4-cache-per_loop-decode-full"
    # the config's tau and the heldout quantiles of each family's own signal, every one tried
    assert {f"{window}-kl0.01", f"{ladder}-kl0.01"} < halting
    assert all(p.startswith((f"{window}-kl", f"{ladder}-kl")) for p in halting)
    calibrated = read_csv(run_dir / "results" / "adaptive_calibrated.csv")
    assert {r["family"] for r in calibrated} == {f"{window}-trace", f"{ladder}-trace"}
    assert {(r["calibration_split"], r["split"]) for r in calibrated} == {("heldout", "test")}
    assert (run_dir / "results" / "cells" / "adaptive" / f"base-test-{ladder}-trace.csv").is_file()
    assert len(list((run_dir / "figures").glob("*.png"))) >= 5
    # halting in decoding timed beside the fixed depths, each with its gold NLL (one sample: medians only)
    timed = read_csv(run_dir / "results" / "adaptive_latency.csv")
    assert len(timed) == 5 * (3 + 2)  # (base + 2 depths x 2 seeds) x (K = 1, 2, 4; window and ladder at kl 0.01)
    halting = [r for r in timed if r["halting"] == "true"]
    assert sorted(r["policy"] for r in halting) == [f"{window}-kl0.01"] * 5 + [f"{ladder}-kl0.01"] * 5
    # the window halts each generated token; the ladder picks K once per prompt
    assert {(r["policy"], r["decode_halting"]) for r in halting} == {
        (f"{window}-kl0.01", "token"),
        (f"{ladder}-kl0.01", "prompt"),
    }
    assert all(float(r["loops_per_token"]) <= 4 for r in halting)
    assert all(r["s_p10"] == "" and r["quality_examples"] == "1" and float(r["nll_per_token"]) > 0 for r in timed)
    assert "## Time at equal quality: halting in decoding" in report
    check_benchmarks(run_dir, report)


def check_benchmarks(run_dir: Path, report: str) -> None:
    """lm-eval's tasks at every K through the loopdepth model: accuracy rows inside their
    Wilson CIs for every model, depth, task and metric, and the paired test across depths."""
    from study.stages.benchmarks import BENCHMARK_COLUMNS, DEPTH_COLUMNS

    rows = read_csv(run_dir / "results" / "benchmarks.csv")
    assert rows and list(rows[0]) == list(BENCHMARK_COLUMNS)
    tasks, depths, models = ({r[key] for r in rows} for key in ("task", "inference_loops", "model"))
    replicates = {f"train{k}-s{seed}" for k in (2, 4) for seed in (2026, 2027)}
    assert len(tasks) >= 2 and len(depths) >= 3 and models == {"base"} | replicates
    assert {(r["model"], r["inference_loops"], r["task"]) for r in rows} == {
        (m, k, t) for m in models for k in depths for t in tasks
    }
    for row in rows:
        assert float(row["ci_low"]) <= float(row["value"]) <= float(row["ci_high"]), row
        seed = row["model"].rsplit("-s", 1)[1] if row["model"] in replicates else ""  # the base: none, as in nll.csv
        assert int(row["n"]) >= 1 and row["metric"] in ("acc", "acc_norm") and row["seed"] == seed
        assert "cache-per_loop" in row["policy"]  # the config's own policies
    depth = read_csv(run_dir / "results" / "benchmarks_depth.csv")
    assert list(depth[0]) == list(DEPTH_COLUMNS) and len(depth) == len(rows)
    assert "## lm-eval benchmarks at each depth" in report and "](figures/benchmarks.png)" in report
