"""The Kaggle kernel: its metadata, and a study command line that run_study.py accepts."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
KAGGLE = ROOT / "kaggle"


def load_runner(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Import kaggle/run_kaggle.py (not a package; ``kaggle`` is also a PyPI name) with
    subprocesses forbidden: importing it must not start anything."""

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"run_kaggle started a process on import: {args}")

    monkeypatch.setattr(subprocess, "run", forbidden)
    spec = importlib.util.spec_from_file_location("run_kaggle", KAGGLE / "run_kaggle.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_kernel_metadata() -> None:
    metadata = json.loads((KAGGLE / "kernel-metadata.json").read_text())
    required = {
        "id", "title", "code_file", "language", "kernel_type", "is_private", "enable_gpu", "enable_internet",
        "machine_shape", "dataset_sources", "competition_sources", "kernel_sources",
    }  # fmt: skip
    assert required <= set(metadata)
    assert metadata["id"].endswith("/loopdepth-v17")
    assert metadata["title"] == "loopdepth v17"
    assert (KAGGLE / metadata["code_file"]).is_file()
    assert metadata["language"] == "python" and metadata["kernel_type"] == "script"
    assert metadata["machine_shape"] == "NvidiaTeslaT4"  # T4 x2
    assert metadata["enable_gpu"] is True and metadata["enable_internet"] is True
    assert metadata["is_private"] is True


def test_study_args_parse_with_run_study(monkeypatch: pytest.MonkeyPatch) -> None:
    runner = load_runner(monkeypatch)
    monkeypatch.syspath_prepend(str(ROOT))
    import run_study

    args = run_study.build_parser().parse_args(runner.STUDY_ARGS)
    assert args.version == "v17"
    assert args.seed == 2026
    assert Path(args.output_dir) == Path("/kaggle/working/runs")
    assert not args.skip_checks and not args.force
    two = runner.study_command(2)  # T4 x2: one process per GPU under accelerate launch
    assert two[1:4] == ["-m", "accelerate.commands.launch", "--multi_gpu"] and "run_study.py" in two
    assert two[two.index("--num_processes") + 1] == "2" and two[-len(runner.STUDY_ARGS) :] == runner.STUDY_ARGS
    assert runner.study_command(1)[1:] == ["run_study.py", *runner.STUDY_ARGS]


def test_runner_installs_the_lock_and_keeps_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    runner = load_runner(monkeypatch)
    assert 'if __name__ == "__main__":' in (KAGGLE / "run_kaggle.py").read_text()
    commands: list[list[str]] = []
    monkeypatch.setattr(runner, "run", lambda command, **_: commands.append(command))
    runner.install(ROOT)
    lock_install, project_install = commands
    # every package at the lock's version and hash, and no resolution that could replace torch
    assert lock_install[-3:] == ["--require-hashes", "-r", str(ROOT / "requirements.lock")]
    assert "--no-deps" in lock_install and "--no-deps" in project_install and project_install[-2:] == ["-e", str(ROOT)]


def test_runner_refuses_a_lock_that_pins_torch(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    runner = load_runner(monkeypatch)
    assert runner.lock_without_torch(ROOT / "requirements.lock") == ROOT / "requirements.lock"
    lock = tmp_path / "requirements.lock"
    lock.write_text("numpy==2.4.6 \\\n    --hash=sha256:00\ntorch==2.13.0 \\\n    --hash=sha256:11\n")
    with pytest.raises(SystemExit, match="pins torch"):
        runner.lock_without_torch(lock)


@pytest.mark.parametrize(
    ("requirement", "name"),
    [
        ("torch==2.13.0", "torch"),
        ("Torch[opt-einsum] >= 2.4 ; python_version >= '3.11'", "torch"),
        ("torch @ https://example.org/torch-2.13.0-cp311-linux_x86_64.whl", "torch"),
        ("torchvision>=0.20", "torchvision"),  # not torch: it is installed
        ("Safe_Tensors.Extra~=0.4", "safe-tensors-extra"),
        ("torch==2.13.0 \\", "torch"),  # a lock line, continued by its hashes
        ("    --hash=sha256:00", ""),
        ("# via datasets", ""),
    ],
)
def test_requirement_names_are_parsed_as_pep_508(monkeypatch: pytest.MonkeyPatch, requirement: str, name: str) -> None:
    assert load_runner(monkeypatch).requirement_name(requirement) == name


def test_attached_repository_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = load_runner(monkeypatch)
    assert runner.find_attached_copy(tmp_path / "absent") is None
    (tmp_path / "input" / "other-dataset").mkdir(parents=True)
    (tmp_path / "input" / "other-dataset" / "data.csv").write_text("x\n")
    copy = tmp_path / "input" / "loopdepth-src" / "loopdepth-main"
    copy.mkdir(parents=True)
    (copy / "run_study.py").write_text("")
    (copy / "pyproject.toml").write_text("")
    assert runner.find_attached_copy(tmp_path / "input") == copy
