"""End to end: the smoke study runs, is reproducible to the byte, and resumes after a
kill or Ctrl-C with the same results. Slow (minutes): marked, and run in CI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from study.stages import PIPELINE_ORDER, stage_named
from tests.support.study_runner import (
    DETERMINISTIC_RESULTS,
    any_file,
    copy_run,
    project_deprecations,
    run_study,
    run_until,
    snapshot,
    study_command,
)

pytestmark = pytest.mark.slow
SMOKE = ("--version", "smoke", "--seed", "2026")


def stage_outputs(name: str) -> tuple[str, ...]:
    """What a stage writes (its declared outputs and its cells), so a test can undo it."""
    stage = stage_named(name)
    return ((f"results/cells/{name}",) if stage.cell_neutral is not None else ()) + stage.outputs


def later(name: str) -> tuple[str, ...]:
    """A stage and every stage after it: what must rerun once it is undone."""
    return PIPELINE_ORDER[PIPELINE_ORDER.index(name) :]


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("smoke") / "run"
    result = run_study(*SMOKE, "--output-dir", str(run_dir), show_deprecations=True)
    assert result.returncode == 0, result.stdout + result.stderr
    # transformers renames arguments between releases: our own calls must use the current names
    assert project_deprecations(result.stderr) == []
    return run_dir


def _results(run_dir: Path) -> dict[str, bytes]:
    return {name: (run_dir / "results" / name).read_bytes() for name in DETERMINISTIC_RESULTS}


def test_smoke_run_writes_every_output(smoke_run: Path) -> None:
    for name in (*DETERMINISTIC_RESULTS, "latency.csv", "latency_fit.csv"):
        assert (smoke_run / "results" / name).stat().st_size > 0, name
    for model in ("train8", "train4"):
        assert (smoke_run / "models" / model / "model.safetensors").is_file()
    manifest = json.loads((smoke_run / "manifest.json").read_text())
    assert manifest["seed"] == 2026 and manifest["config"]["name"] == "smoke"
    assert manifest["data"]["sha256"]["test"].startswith("3730d312")
    assert manifest["versions"]["torch"] and manifest["hardware"]["device"] == "cpu"
    # the smoke config has no benchmarks section: that stage runs, says so and writes nothing
    assert set(manifest["stages"]) == {
        "check", "sft", "nll", "adaptive", "exact_match", "latency", "benchmarks", "report",
    }  # fmt: skip
    assert not (smoke_run / "results" / "benchmarks.csv").exists()
    assert all("finished" in stage for stage in manifest["stages"].values())
    assert manifest["model"]["tokenizer"]["vocab_size"] == 2048 and manifest["hardware"]["cpu_model"]
    assert (smoke_run / "report.md").is_file()
    assert "not the released model" in (smoke_run / "report.md").read_text()
    assert len(list((smoke_run / "figures").glob("*.png"))) >= 5
    nll = (smoke_run / "results" / "nll.csv").read_text().splitlines()
    assert len(nll) == 1 + 3 * 3 * (8 + 4 + 8)  # models x loops x (test + heldout + seen examples)
    assert json.loads((smoke_run / "results" / "checks.json").read_text())["passed"]


def test_same_seed_gives_identical_bytes(smoke_run: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    result = run_study(*SMOKE, "--output-dir", str(again))
    assert result.returncode == 0, result.stderr
    assert _results(again) == _results(smoke_run)
    for model in ("train8", "train4"):
        first = load_file(smoke_run / "models" / model / "model.safetensors")
        second = load_file(again / "models" / model / "model.safetensors")
        assert all((first[k] == second[k]).all() for k in first), model


def test_rerun_skips_finished_stages(smoke_run: Path) -> None:
    before = snapshot(smoke_run)
    result = run_study(*SMOKE, "--output-dir", str(smoke_run))
    assert result.returncode == 0, result.stderr
    for stage in PIPELINE_ORDER[:-1]:  # every stage but the report, which is always redrawn
        assert f"[{stage}] done already" in result.stdout
    after = snapshot(smoke_run)
    assert {k: v for k, v in after.items() if k.startswith(("results", "models"))} == {
        k: v for k, v in before.items() if k.startswith(("results", "models"))
    }


def test_kill_during_sft_resumes_from_checkpoint(smoke_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "killed"
    args = [*SMOKE, "--output-dir", str(run_dir)]
    checkpoint = run_dir / "sft" / "train8" / "checkpoint-2" / "trainer_state.json"
    code, output, sent = run_until(args, checkpoint.is_file)
    assert sent and code == -signal.SIGKILL, output
    assert not (run_dir / "models" / "train8").exists()  # the final model is only ever written whole
    result = run_study(*args)
    assert result.returncode == 0, result.stderr
    assert "resuming from checkpoint-2" in result.stdout
    assert _results(run_dir) == _results(smoke_run)


@pytest.mark.parametrize("stage", ["nll", "adaptive", "exact_match"])
def test_kill_during_sweep_resumes_from_finished_cells(smoke_run: Path, tmp_path: Path, stage: str) -> None:
    drop = tuple(p for undone in later(stage) for p in stage_outputs(undone))
    run_dir = copy_run(smoke_run, tmp_path / "killed", later(stage), drop)
    args = [*SMOKE, "--output-dir", str(run_dir)]
    cells = run_dir / "results" / "cells" / stage
    code, output, sent = run_until(args, any_file(cells))
    assert sent and code == -signal.SIGKILL, output
    finished = {p.name: p.read_bytes() for p in cells.iterdir() if not p.name.startswith(".")}
    result = run_study(*args)
    assert result.returncode == 0, result.stderr
    assert _results(run_dir) == _results(smoke_run)
    for name, data in finished.items():  # finished cells were reused, not redone
        assert (cells / name).read_bytes() == data


def test_ctrl_c_stops_between_cells_and_says_how_to_resume(smoke_run: Path, tmp_path: Path) -> None:
    drop = tuple(p for undone in later("nll") for p in stage_outputs(undone))
    run_dir = copy_run(smoke_run, tmp_path / "interrupted", later("nll"), drop)
    args = [*SMOKE, "--output-dir", str(run_dir)]
    code, output, sent = run_until(args, any_file(run_dir / "results" / "cells" / "nll"), sig=signal.SIGINT)
    assert sent and code == 130, output
    assert "Resume with" in output and "Traceback" not in output
    result = run_study(*args)
    assert result.returncode == 0, result.stderr
    assert _results(run_dir) == _results(smoke_run)


def cpu_seconds(pid: int) -> float:
    """CPU time a process has used (user + system), from /proc: unlike wall time, the same
    point of start-up on a loaded machine and on an idle one."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.parametrize("cpu_delay", [0.15, 0.5, 1.0, 2.0, 3.0])
def test_ctrl_c_during_start_up_exits_130_without_a_traceback(tmp_path: Path, cpu_delay: float) -> None:
    """Ctrl-C while torch and transformers import, or while the config and data are
    validated: exit 130 at once, one line, and nothing written. (Before the interpreter
    has run the script's first line, about 0.05 s of CPU, Python itself handles it.)"""
    run_dir = tmp_path / "run"
    process = subprocess.Popen(
        study_command(*SMOKE, "--output-dir", str(run_dir)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while process.poll() is None and cpu_seconds(process.pid) < cpu_delay and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, out + err
    assert "Traceback" not in err and "Error" not in err, err
    if "[check]" not in out:  # still starting up: nothing was written
        assert not run_dir.exists() and err.strip() == "interrupted"


def test_kill_during_report_then_rerun_completes(smoke_run: Path, tmp_path: Path) -> None:
    run_dir = copy_run(smoke_run, tmp_path / "report", ("report",), stage_outputs("report"))
    args = [*SMOKE, "--output-dir", str(run_dir)]
    code, output, sent = run_until(args, any_file(run_dir / "figures"))
    assert sent and code == -signal.SIGKILL, output
    result = run_study(*args)
    assert result.returncode == 0, result.stderr
    assert (run_dir / "report.md").is_file() and len(list((run_dir / "figures").glob("*.png"))) >= 5
    assert _results(run_dir) == _results(smoke_run)


def test_sft_entry_point_under_accelerate_launch(smoke_run: Path, tmp_path: Path) -> None:
    """The SFT stage runs unchanged under ``accelerate launch`` (here one CPU process)
    and trains the very weights the pipeline trained."""
    import subprocess
    import sys

    run_dir = tmp_path / "launched"
    run_dir.mkdir()
    (run_dir / "config.resolved.json").write_bytes((smoke_run / "config.resolved.json").read_bytes())
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "study.stages.sft", "--run-dir", str(run_dir),
        "--train-loops", "4",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    ours = load_file(run_dir / "models" / "train4" / "model.safetensors")
    pipeline = load_file(smoke_run / "models" / "train4" / "model.safetensors")
    assert all((ours[k] == pipeline[k]).all() for k in pipeline)


def test_v17_code_path_with_a_local_released_layout_model(tmp_path: Path) -> None:
    """v17 as published, but with a local checkpoint folder in the released layout
    (tiny random weights, vocab 50304, GPT-2 tokenizer files beside them), the bundled
    data and every slice shrunk: the real code path, end to end."""
    import torch

    from study.models.loopformer import LoopFormerConfig, LoopFormerForCausalLM
    from study.tokenizer import load_tokenizer

    torch.manual_seed(0)
    folder = tmp_path / "LoopFormer-3block-8iterations"
    config = LoopFormerConfig(block_size=1024, vocab_size=50304, n_layer=3, n_head=2, n_embd=16, intermediate_dim=40)
    LoopFormerForCausalLM(config).save_pretrained(folder)
    load_tokenizer().save_pretrained(folder)
    shrink = [
        "data.source=bundled", "data.sft_examples=4", "data.nll_test_examples=3", "data.nll_heldout_examples=2",
        "data.nll_seen_examples=2", "data.em_examples=2", "sft.epochs=1", "sft.grad_accum=2", "sft.max_length=64",
        "nll.inference_loops=[2,8]", "exact_match.inference_loops=[2]", "exact_match.max_new_tokens=3",
        "latency.inference_loops=[2,4]", "latency.new_tokens=2", "latency.samples=1", "latency.warmup=0",
        "checks.examples=2", "nll.bootstrap_resamples=50",
    ]  # fmt: skip
    run_dir = tmp_path / "run"
    args = ["--version", "v17", "--seed", "2026", "--model", str(folder), "--output-dir", str(run_dir)]
    for item in shrink:
        args += ["--set", item]
    result = run_study(*args, "--skip-checks")  # random weights: the NLL gate refuses them, rightly
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["config"]["name"] == "v17" and manifest["model"]["source"] == str(folder)
    assert manifest["checks_skipped"] is True
    assert "skipped" in (run_dir / "report.md").read_text()
    assert len((run_dir / "results" / "nll.csv").read_text().splitlines()) == 1 + 3 * (3 + 2 + 2) * 2


def test_figures_notebook_runs_on_the_smoke_run(smoke_run: Path, monkeypatch) -> None:
    from .test_notebook import execute, images

    notebook = execute(smoke_run, monkeypatch)
    assert images(notebook) >= 5


def test_two_launched_processes_write_the_results_of_one(smoke_run: Path, tmp_path: Path) -> None:
    """``accelerate launch`` with two processes (CPU, gloo) splits the SFT models and the sweep
    cells between them; the results files are byte-identical to the single-process run."""
    import subprocess
    import sys

    from tests.support.study_runner import REPO_ROOT

    run_dir = tmp_path / "two"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
        "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(REPO_ROOT / "run_study.py"), *SMOKE,
        "--output-dir", str(run_dir),
    ]  # fmt: skip
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=1500, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "process 1 of 2" in output and "[process 1] nll:" in output and "[process 0] nll:" in output
    assert _results(run_dir) == _results(smoke_run)
    for model in ("train8", "train4"):
        ours = load_file(run_dir / "models" / model / "model.safetensors")
        single = load_file(smoke_run / "models" / model / "model.safetensors")
        assert all((ours[k] == single[k]).all() for k in single), model
