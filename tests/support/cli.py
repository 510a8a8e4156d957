"""What the command-line tests share: a finished-looking run directory to protect, and
the check that a command failed in one line without touching anything."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import run_study
from study.config import load_config


def make_existing_run(tmp_path: Path) -> Path:
    """A run directory of the smoke config holding results a failed command must not touch."""
    run_dir = tmp_path / "run"
    (run_dir / "results").mkdir(parents=True)
    config = load_config("smoke")
    manifest = {"config": config.model_dump(mode="json"), "config_hash": config.identity_hash(), "stages": {}}
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    (run_dir / "results" / "nll.csv").write_text("model,split\nbase,test\n")
    return run_dir


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def fails(capsys: pytest.CaptureFixture[str], argv: list[str], *expected: str) -> str:
    """``run_study.main(argv)`` exits 2 with one line under 300 characters naming ``expected``."""
    code = run_study.main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    assert len(err) < 300, (len(err), err)
    for text in expected:
        assert text in err, err
    return err
