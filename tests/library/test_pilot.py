"""study.pilot: the window pilot on a tiny looped decoder, the looping tool's arguments, both --help texts,
and the learning-rate pilot on the embedded mini model."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from study import pilot
from study.io import read_csv, read_json
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


# ---- the learning-rate pilot (python -m study.pilot lr) ---------------------------------


def test_lr_pilot_trains_with_the_sft_stage_and_scores_held_out_train_questions(tmp_path, monkeypatch, capsys):
    """Each (lr, depth) is one short SFT through the SFT stage's trainer at that lr, scored
    on the heldout slice (train questions outside every SFT subset); the CSVs, the chosen
    lr and the ordering check come out, and a rerun reuses every finished pair."""
    from study.config import load_config
    from study.pipeline import RunContext
    from study.stages import sft

    built = []
    real = sft.build_trainer

    def spy(ctx, spec):
        trainer = real(ctx, spec)
        built.append((trainer.args.learning_rate, spec.train_loops))
        return trainer

    monkeypatch.setattr(sft, "build_trainer", spy)
    run_dir = tmp_path / "lr"
    argv = ["lr", "--version", "smoke", "--lrs", "1e-4,1e-3", "--steps", "1", "--examples", "3", "--resamples", "20",
            "--run-dir", str(run_dir)]  # fmt: skip
    assert pilot.main(argv) == 0
    assert built == [(1e-4, 8), (1e-4, 4), (1e-3, 8), (1e-3, 4)]  # smoke's depths, each at each lr
    rows = read_csv(run_dir / "lr_pilot.csv")
    assert tuple(rows[0]) == pilot.LR_COLUMNS
    assert [(r["lr"], r["train_loops"], r["policy"], r["steps"]) for r in rows] == [
        ("0.0001", "8", "M8", "1"), ("0.0001", "4", "M4", "1"), ("0.001", "8", "M8", "1"), ("0.001", "4", "M4", "1")
    ]  # fmt: skip
    for row in rows:
        low, point, high = (float(row[k]) for k in ("ci_low", "nll_per_token", "ci_high"))
        assert row["examples"] == "3" and low <= point <= high and math.isfinite(float(row["final_train_loss"]))
    losses = read_csv(run_dir / "lr_pilot_loss.csv")
    assert len(losses) == 4 and {r["step"] for r in losses} == {"1"}
    config = load_config("smoke")
    ctx = RunContext(config=config, run_dir=run_dir, device=torch.device("cpu"))
    scored = read_json(run_dir / "cells" / "lr0.0001-train8.json")["example_ids"]
    assert scored == [e.id for e in ctx.examples("nll_heldout")][:3]  # the run's heldout slice, never test
    assert not set(scored) & set(ctx.subsets.sft_union)
    out = capsys.readouterr().out
    chosen, same, _ = pilot.summarize([{**r, "lr": float(r["lr"]), "nll_per_token": float(r["nll_per_token"])}
                                          for r in rows])  # fmt: skip
    assert f"chosen lr: {chosen:g}" in out
    assert "same ordering at every lr: " + ("yes" if same else "no") in out

    built.clear()
    assert pilot.main(argv) == 0 and built == []  # every pair read back
    assert read_csv(run_dir / "lr_pilot.csv") == rows


def test_lr_pilot_summary_and_arguments(capsys):
    rows = [
        {"lr": 1e-5, "train_loops": 2, "nll_per_token": 1.50}, {"lr": 1e-5, "train_loops": 4, "nll_per_token": 1.40},
        {"lr": 2e-5, "train_loops": 2, "nll_per_token": 1.45}, {"lr": 2e-5, "train_loops": 4, "nll_per_token": 1.30},
        {"lr": 5e-5, "train_loops": 2, "nll_per_token": 1.20}, {"lr": 5e-5, "train_loops": 4, "nll_per_token": 1.60},
    ]  # fmt: skip
    chosen, same, rankings = pilot.summarize(rows)
    assert chosen == 2e-5  # mean 1.375, against 1.45 and 1.40
    assert not same and rankings == {1e-5: [4, 2], 2e-5: [4, 2], 5e-5: [2, 4]}
    assert pilot.summarize(rows[:4])[1]  # the first two agree
    assert pilot.parse_lrs("1e-5, 2e-5") == [1e-5, 2e-5]
    for bad in ("", "x", "1e-5,1e-5", "0", "-1e-5", "inf"):
        with pytest.raises(ValueError, match="--lrs"):
            pilot.parse_lrs(bad)
    for argv in (["lr", "--lrs", "2e-5,2e-5"], ["lr", "--steps", "0"]):
        with pytest.raises(SystemExit) as exited:
            pilot.main(argv)
        err = capsys.readouterr().err
        assert exited.value.code == 2 and err.count("\n") == 1 and "python -m study.pilot lr: error:" in err
