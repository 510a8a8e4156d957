"""study.report.cli: ``python -m study.report`` and ``python -m study.report compare``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from study import report
from tests.support.fake_run import make_fake_run

ROOT = Path(__file__).resolve().parents[2]


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    skip = ("latency.csv", "latency_fit.csv", "exact_match.csv", "sft_loss.csv", "schedules.csv", "adaptive.csv",
            "depth_shift.csv", "benchmarks.csv", "adaptive_latency.csv")  # fmt: skip
    run_dir = make_fake_run(tmp_path / "run", skip=skip)  # one figure: fast
    exported = tmp_path / "exported"
    assert report.main(["--run-dir", str(run_dir), "--export-figures", str(exported)]) == 0
    assert (run_dir / "report.md").is_file()
    assert sorted(p.name for p in exported.iterdir()) == ["nll_vs_loops.png"]
    assert report.main(["compare", str(run_dir), str(run_dir), "--out", str(tmp_path / "cmp")]) == 0
    assert (tmp_path / "cmp" / "compare.csv").is_file()
    assert report.main(["--run-dir", str(tmp_path / "nowhere")]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_the_report_command_line_does_not_import_torch() -> None:
    """``python -m study.report --help`` needs no torch. ``import study`` itself still loads it
    (it registers LoopFormer), so this runs the report's command line with that body skipped."""
    code = """
import sys, types
package = types.ModuleType("study"); package.__path__ = ["study"]; sys.modules["study"] = package
import study.report.cli
try:
    study.report.cli.main(["--help"])
except SystemExit:
    pass
print("torch loaded:", "torch" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert "usage: python -m study.report" in done.stdout
    assert done.stdout.rstrip().endswith("torch loaded: False")
