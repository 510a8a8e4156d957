"""study.pilot: the window pilot on a tiny looped decoder, the looping tool's arguments, both --help texts."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from study import pilot
from study.io import read_csv
from tests.support.helpers_looped import looped_context

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_window_pilot_scores_each_setting_once_on_a_tiny_looped_decoder(tmp_path, monkeypatch, capsys):
    ctx = looped_context(tmp_path)
    monkeypatch.setattr(pilot, "load_config", lambda version: ctx.config)
    out = tmp_path / "pilot.csv"
    argv = ["--run-dir", str(ctx.run_dir), "--examples", "3", "--windows", "1-2", "2-3", "--strategies", "euler",
            "--loops", "1", "2", "--out", str(out)]  # fmt: skip
    assert pilot.main(argv) == 0
    rows = read_csv(out)
    assert tuple(rows[0]) == pilot.COLUMNS
    # K = 1 is the plain model whatever the window: scored once, then K = 2 per window
    assert [(r["window"], r["loops"]) for r in rows] == [("1-2", "1"), ("1-2", "2"), ("2-3", "2")]
    for row in rows:
        assert row["examples"] == "3" and float(row["executed_loops"]) == float(row["loops"])
        low, point, high = (float(row[k]) for k in ("ci_low", "nll_per_token", "ci_high"))
        assert math.isfinite(point) and low <= point <= high
    assert f"table: {out}" in capsys.readouterr().out


def test_window_pilot_refuses_a_config_without_looping(capsys):
    assert pilot.main(["--version", "smoke"]) == 2  # smoke is a LoopFormer config
    assert "not a looped_decoder config" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--window", "12"], "expected 2 arguments"),
        (["--window", "15", "12"], "0 <= a <= b"),
        (["--window", "12", "15", "--resamples", "0"], "--resamples must be >= 1"),
    ],
)
def test_looping_tool_bad_arguments_exit_2_with_one_line(capsys, argv: list[str], message: str):
    with pytest.raises(SystemExit) as exited:
        pilot.main(["looping", *argv])  # the first word picks the tool
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m study.pilot looping: error:") and err.count("\n") == 1 and message in err, err


def test_help_of_both_tools(capsys):
    for argv, wanted in ((["--help"], "study.pilot looping --help"), (["looping", "--help"], "--halt-tau")):
        with pytest.raises(SystemExit) as exited:
            pilot.main(argv)
        assert exited.value.code == 0 and wanted in capsys.readouterr().out
