"""One synthetic run (tests/fake_run.py) and its report.md, shared by the report tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from study.pipeline import RunContext
from study.report import load_results
from study.stages import report as report_stage
from tests.support.fake_run import make_fake_run


@pytest.fixture(scope="package")
def fake_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fake_run(tmp_path_factory.mktemp("runs") / "fake-seed2026")


@pytest.fixture(scope="package")
def report_text(fake_run: Path) -> str:
    """report.md written by the pipeline's report stage, ``run(ctx)``."""
    results = load_results(fake_run)
    ctx = RunContext(config=results.config, run_dir=fake_run, device=torch.device("cpu"))
    path = report_stage.run(ctx)
    assert path == fake_run / "report.md"
    return path.read_text()
