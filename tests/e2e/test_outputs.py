"""End to end: a finished smoke run's outputs cannot change in silence. Each damage is
restored to the original bytes by a visible rerun, or refused in one line naming the file
with --no-recompute; an untouched rerun reads no output to hash it; a second accelerate
launch on a directory in use is refused. Slow (minutes): marked, and run in CI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from study import outputs
from study.lock import RunLock
from tests.support.study_runner import REPO_ROOT, run_study

pytestmark = pytest.mark.slow
SMOKE = ("--version", "smoke", "--seed", "2026")
FIGURE = "figures/nll_vs_loops.png"
MODEL = "models/train4/model.safetensors"


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("outputs") / "run"
    result = run_study(*SMOKE, "--output-dir", str(run_dir))
    assert result.returncode == 0, result.stdout + result.stderr
    return run_dir


def outputs_of(run_dir: Path) -> dict[str, bytes]:
    """What the stages wrote (report.md names the invocations: left out). A figure's PDF is
    compared by presence only: the last printed digit of a text coordinate in it can differ
    between two processes drawing the same figure (seen once in CI in exact_match.pdf); its
    PNG, drawn from the same figure, is compared byte for byte."""
    files = [p for folder in ("results", "figures", "models") for p in (run_dir / folder).rglob("*") if p.is_file()]
    return {
        p.relative_to(run_dir).as_posix(): b"(a PDF)" if p.suffix == ".pdf" else p.read_bytes() for p in sorted(files)
    }


def cut_to_header(path: Path) -> None:
    path.write_text(path.read_text().splitlines()[0] + "\n")


def cut_in_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def edit_keeping_size(path: Path) -> None:
    data = bytearray(path.read_bytes())
    last_digit = max(i for i, byte in enumerate(data) if chr(byte).isdigit())
    data[last_digit] = ord("1") if data[last_digit] != ord("1") else ord("2")
    path.write_bytes(bytes(data))


def empty(path: Path) -> None:
    path.write_bytes(b"")


def delete(path: Path) -> None:
    path.unlink()


def replace_model(path: Path) -> None:
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[: size // 2] + bytes(size - size // 2))


# damage, the file it hits, and the stage that wrote it
DAMAGES: dict[str, tuple[Callable[[Path], None], str, str]] = {
    "summary cut to its header": (cut_to_header, "results/nll_summary.csv", "nll"),
    "nll.csv cut in half": (cut_in_half, "results/nll.csv", "nll"),
    "results file emptied": (empty, "results/exact_match.csv", "exact_match"),
    "results file edited": (edit_keeping_size, "results/adaptive.csv", "adaptive"),
    "results file deleted": (delete, "results/checks.json", "check"),
    "figure deleted": (delete, FIGURE, "report"),
    "model file replaced": (replace_model, MODEL, "sft"),
}


def damaged_copy(finished_run: Path, target: Path, *names: str) -> Path:
    run_dir = Path(shutil.copytree(finished_run, target))
    for name in names:
        damage, relative, _ = DAMAGES[name]
        damage(run_dir / relative)
    return run_dir


def test_changed_results_and_figures_come_back_by_a_visible_rerun(finished_run: Path, tmp_path: Path) -> None:
    names = [name for name in DAMAGES if name != "model file replaced"]
    run_dir = damaged_copy(finished_run, tmp_path / "run", *names)
    result = run_study(*SMOKE, "--output-dir", str(run_dir))
    assert result.returncode == 0, result.stdout + result.stderr
    for name in names:
        stage = DAMAGES[name][2]
        assert f"since {stage} wrote it" in result.stdout and f": rerunning {stage}\n" in result.stdout, name
        assert f"[{stage}] running" in result.stdout, name
    assert "results/nll.csv changed since nll wrote it (and 1 more): rerunning nll" in result.stdout
    assert "results/checks.json is missing since check wrote it: rerunning check" in result.stdout
    assert outputs_of(run_dir) == outputs_of(finished_run)


def test_a_replaced_model_file_is_trained_again_even_for_the_report_alone(finished_run: Path, tmp_path: Path) -> None:
    """``--stages report`` reads what nll and sft wrote: those are checked, and rerun."""
    run_dir = damaged_copy(finished_run, tmp_path / "run", "model file replaced", "summary cut to its header")
    result = run_study(*SMOKE, "--output-dir", str(run_dir), "--stages", "report")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{MODEL} changed since sft wrote it: rerunning sft" in result.stdout
    assert "results/nll_summary.csv changed since nll wrote it: rerunning nll" in result.stdout
    assert "[sft] running" in result.stdout and "[nll] running" in result.stdout
    assert outputs_of(run_dir) == outputs_of(finished_run)  # the same weights, to the byte


@pytest.mark.parametrize("name", list(DAMAGES))
def test_no_recompute_refuses_in_one_line_naming_the_file(finished_run: Path, tmp_path: Path, name: str) -> None:
    run_dir = damaged_copy(finished_run, tmp_path / "run", name)
    before = outputs_of(run_dir) | {"manifest.json": (run_dir / "manifest.json").read_bytes()}
    result = run_study(*SMOKE, "--output-dir", str(run_dir), "--no-recompute")
    assert result.returncode == 2, result.stdout + result.stderr
    _, relative, stage = DAMAGES[name]
    (line,) = result.stderr.strip().splitlines()
    assert relative in line and f"since {stage} wrote it" in line and "--no-recompute" in line and len(line) < 300
    assert outputs_of(run_dir) | {"manifest.json": (run_dir / "manifest.json").read_bytes()} == before


def test_compare_refuses_a_run_whose_results_changed(finished_run: Path, tmp_path: Path) -> None:
    run_dir = damaged_copy(finished_run, tmp_path / "run", "summary cut to its header")
    result = run_study("compare", str(finished_run), str(run_dir), "--out", str(tmp_path / "compare"))
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "results/nll_summary.csv changed since nll wrote it" in line and str(run_dir) in line
    assert not (tmp_path / "compare").exists()


def test_an_untouched_rerun_hashes_no_output(
    finished_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In this process, so the hashing can be counted: skipping the finished stages reads no
    output file, and the report, drawn anew, hashes its files as it writes them."""
    monkeypatch.syspath_prepend(str(REPO_ROOT))
    import run_study as entry

    run_dir = Path(shutil.copytree(finished_run, tmp_path / "run"))
    hashed: list[Path] = []
    real = outputs.sha256_file
    monkeypatch.setattr(outputs, "sha256_file", lambda path: hashed.append(Path(path)) or real(path))
    monkeypatch.chdir(REPO_ROOT)
    assert entry.main([*SMOKE, "--output-dir", str(run_dir)]) == 0
    assert hashed == []


def test_a_second_accelerate_launch_on_a_directory_in_use_is_refused(finished_run: Path, tmp_path: Path) -> None:
    run_dir = Path(shutil.copytree(finished_run, tmp_path / "run"))
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
        "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(REPO_ROOT / "run_study.py"), *SMOKE,
        "--output-dir", str(run_dir), "--stages", "check",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCELERATE_")} | {"CUDA_VISIBLE_DEVICES": ""}

    def launch() -> subprocess.CompletedProcess:
        return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)

    alone = launch()  # both ranks of one launch: rank 1 accepts the lock its rank 0 took
    assert alone.returncode == 0, alone.stdout + alone.stderr
    assert "[check] done already" in alone.stdout
    with RunLock(run_dir):  # another run holds the directory
        busy = launch()
    assert busy.returncode != 0, busy.stdout + busy.stderr
    assert f"is in use by another run (pid {os.getpid()} on " in busy.stderr and "started 20" in busy.stderr
    assert "[check]" not in busy.stdout  # refused before any stage
