"""The depth-shift figure, the depth-shift and replication sections of report.md and the
loaders of their two results files (the rows themselves: tests/stages/test_nll_shift.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgb

from study import report
from study.io import atomic_write_csv, read_csv
from study.report.style import colors
from study.stages.nll_shift import DEPTH_SHIFT_COLUMNS
from tests.support.fake_run import make_fake_run

from .helpers import curves, legend_texts, section, table_row


def test_the_two_files_load_with_text_seeds_and_notes(fake_run: Path) -> None:
    results = report.load_results(fake_run)
    replication, shift = results.replication, results.depth_shift
    assert replication is not None and shift is not None
    assert set(replication["seed"]) == {"", "2026", "2027", "2028", "all"}  # "" is the base, run once
    assert set(shift["seed"]) == {"all", "2026", "2027", "2028"} and set(shift["note"]) == {""}
    assert set(replication["best_is_train_loops"]) <= {"true", "false", "not in grid"}
    assert replication["is_best"].dtype == bool
    # an older run has neither file, and nothing else changes
    old = report.load_results(make_fake_run(fake_run.parent / "old", skip=("replication.csv", "depth_shift.csv")))
    assert old.replication is None and old.depth_shift is None and old.problems == []
    assert old.absent("depth_shift.csv", "replication.csv") == ["depth_shift.csv", "replication.csv"]


def test_figure_draws_d_per_pair_and_each_models_gaps_per_split(fake_run: Path) -> None:
    results = report.load_results(fake_run)
    figure = report.plot_depth_shift(results)
    assert len(figure.axes) == 4  # (D, gaps) x (test, heldout)
    top_test, top_held, bottom_test, _ = figure.axes
    assert top_test.get_title() == "Depth shift, test" and top_held.get_title().startswith("Depth shift, held-out")
    shift = results.depth_shift
    assert shift is not None
    for ax, split in ((top_test, "test"), (top_held, "heldout")):
        d = shift[(shift["split"] == split) & (shift["statistic"] == "D")].sort_values("inference_loops")
        (line,) = [c for c in curves(ax) if not c.get_label().startswith("_")]  # not the zero line
        assert list(line.get_xdata()) == list(d["inference_loops"])
        assert list(line.get_ydata()) == pytest.approx(list(d["value"]))
        assert to_rgb(line.get_color()) == colors(results)["train8"]
        # the zero line and the two training depths (8 and 4, dotted)
        assert any(set(line.get_ydata()) == {0.0} for line in ax.get_lines())
        dotted = {round(float(line.get_xdata()[0])) for line in ax.get_lines() if line.get_linestyle() == ":"}
        assert dotted == {4, 8}
        (s_row,) = shift[
            (shift["split"] == split) & (shift["statistic"] == "S") & (shift["seed"] == "all")
        ].itertuples()
        label = legend_texts(ax)[0]
        assert label.startswith("Train8 − Train4: S = ") and f"[{s_row.ci_low:+.4f}, {s_row.ci_high:+.4f}]" in label
        assert len(ax.collections) == 1  # the CI band
    pooled = [line for line in curves(bottom_test) if line.get_linewidth() == 2.0]
    assert len(pooled) == 3  # base, train8, train4; thin lines for single seeds besides
    assert len(curves(bottom_test)) == 3 + 1 + 3 + 3


def test_figure_without_its_files_or_without_pairs(tmp_path: Path) -> None:
    old = report.load_results(make_fake_run(tmp_path / "old", skip=("depth_shift.csv",)))
    notes = [t.get_text() for ax in report.plot_depth_shift(old).axes for t in ax.texts]
    assert notes and set(notes) == {"Not run: results/depth_shift.csv missing"}
    run_dir = make_fake_run(tmp_path / "nopairs")
    atomic_write_csv(run_dir / "results" / "depth_shift.csv", [], DEPTH_SHIFT_COLUMNS)  # one SFT model: no pair
    results = report.load_results(run_dir)
    notes = [t.get_text() for ax in report.plot_depth_shift(results).axes for t in ax.texts]
    assert set(notes) == {"No pair of fine-tuned models with different training depths"}
    assert "No pair of fine-tuned models with different training depths in this run." in report.render_report(
        results, {}
    )


def test_sections_give_s_with_ci_p_and_k_of_n(fake_run: Path, report_text: str) -> None:
    shift = pd.read_csv(fake_run / "results" / "depth_shift.csv", dtype={"seed": str})
    text = section(report_text, "The depth-shift test")
    pooled = shift[(shift["statistic"] == "S") & (shift["seed"] == "all") & (shift["split"] == "test")].iloc[0]
    row = table_row(text, "Train8 − Train4 (8 vs 4)")
    assert row[1] == "test"
    assert row[2] == f"{pooled['value']:+.4f} [{pooled['ci_low']:+.4f}, {pooled['ci_high']:+.4f}]"
    assert row[3] == "< 0.001"  # no resample crossed 0: 2 / 2000 resamples of the fake config
    assert row[4:6] == ["3", "3 of 3"] and row[6].startswith("shift towards 8")
    assert "What these numbers cannot support" in text and "With 3 seed pairs" in text
    assert f"Figure {report.figure_number('depth_shift')} draws D(K)" in text
    replication = section(report_text, "Replication across seeds")
    train4 = table_row(replication, "Train4")
    assert train4[1:6] == ["4", "test", "0 of 3", "2026: 6, 2027: 6, 2028: 6", "6"]
    assert train4[6].startswith("2: +") and "worse" in train4[6]
    assert table_row(replication, "Train8")[3] == "3 of 3"
    assert table_row(replication, "Base")[6].endswith(" †")  # one seed: its question CIs, marked


def test_sections_say_not_in_grid_no_ci_and_not_in_this_run(tmp_path: Path) -> None:
    run_dir = make_fake_run(tmp_path / "run")
    path = run_dir / "results" / "depth_shift.csv"
    rows = [row for row in read_csv(path) if row["seed"] == "all"]
    seen = [{**row, "split": "seen"} for row in rows if row["split"] == "heldout"]
    for row in rows + seen:
        if row["statistic"] != "S":
            continue
        if row["split"] == "test":  # a training depth off the grid
            row.update(value="", ci_low="", ci_high="", p_value="", note="not in grid")
        elif row["split"] == "heldout":  # a CI across 0
            row.update(value="0.004", ci_low="-0.01", ci_high="0.02", p_value="0.6")
        else:  # one seed pair
            row.update(ci_low="", ci_high="", p_value="", note="1 seed")
    atomic_write_csv(path, rows + seen, DEPTH_SHIFT_COLUMNS)
    text = report.render_report(report.load_results(run_dir), {})
    test_row, held_row, seen_row = (line for line in text.splitlines() if line.startswith("| Train8 − Train4"))
    assert " | — | — | 3 | — | not testable: a training depth is not in the grid |" in test_row
    assert (
        "| +0.0040 [-0.0100, +0.0200] | 0.600 | 3 | — | no shift detected; S beyond ±0.0200 is excluded |" in held_row
    )
    assert "| seen (SFT data) | " in seen_row and "(no CI) | — | 3 | — | no CI (1 seed) |" in seen_row
    assert "nan" not in text.lower()

    old = make_fake_run(tmp_path / "old", skip=("replication.csv", "depth_shift.csv"))
    text = report.render_report(report.load_results(old), {})
    assert "## The depth-shift test\n\nNot in this run: `results/depth_shift.csv` is missing" in text
    assert "## Replication across seeds\n\nNot in this run:" in text
    number = report.figure_number("depth_shift")
    assert f"**Figure {number}: {report.figure_spec('depth_shift').title}.** Not drawn (missing" in text


def test_fake_run_shift_rows_come_from_the_stage_functions(fake_run: Path) -> None:
    """The fake run's files are the stage's own output (not hand-made rows), so a change of
    the columns or statistics reaches the report tests."""
    shift = pd.read_csv(fake_run / "results" / "depth_shift.csv", dtype={"seed": str})
    assert tuple(shift.columns) == DEPTH_SHIFT_COLUMNS
    d = shift[(shift["statistic"] == "D") & (shift["split"] == "test")].set_index("inference_loops")["value"]
    s = shift[(shift["statistic"] == "S") & (shift["seed"] == "all") & (shift["split"] == "test")]["value"].iloc[0]
    assert s == pytest.approx(d[8] - d[4], rel=1e-12) and np.isfinite(s)


def test_families_come_from_the_config_not_from_the_names(tmp_path: Path) -> None:
    """A family is its replicates' training depth (``ModelInfo.of``), never parsed out of a
    name: a base whose name holds ``-s`` stays its own family, and a replicated family
    resolves to its label, depth and first member's colour."""
    from study.report.figures.depth_shift import family_colors, family_label
    from study.report.results import ModelInfo, Results

    results = Results(run_dir=tmp_path)
    results.models = [
        ModelInfo.of("base-small", "Base-small", 8, None),
        ModelInfo.of("train4-s2027", "Train4 (seed 2027)", 4, 2027),
        ModelInfo.of("train4-s2028", "Train4 (seed 2028)", 4, 2028),
    ]
    assert [m.family for m in results.models] == ["base-small", "train4", "train4"]
    family = results.model("train4")
    assert (family.label, family.train_loops, family.seed) == ("Train4", 4, None)
    assert family_label(results, "train4") == "Train4" and family_label(results, "base-small") == "Base-small"
    palette = family_colors(results)
    assert palette["train4"] == palette["train4-s2027"] != palette["train4-s2028"]
