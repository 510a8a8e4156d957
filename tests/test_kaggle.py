"""The Kaggle kernel: its metadata, and a study command line that run_study.py accepts."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
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


@pytest.mark.skipif(sys.version_info < (3, 11), reason="tomllib is new in Python 3.11 (Kaggle has it)")
def test_runner_is_guarded_and_keeps_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    runner = load_runner(monkeypatch)
    assert 'if __name__ == "__main__":' in (KAGGLE / "run_kaggle.py").read_text()
    requirements = runner.requirements_without_torch(ROOT / "pyproject.toml")
    assert requirements and not any(r.lower().startswith("torch") for r in requirements)
    assert any(r.startswith("transformers") for r in requirements)


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
