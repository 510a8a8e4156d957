"""study.report.tables: the Pareto front, the frontier points, Table 1 and the best halting policy."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from study.report import frontier_points, load_results, pareto_front, table1
from study.report.tables import best_halting


def test_pareto_front_on_a_hand_made_case() -> None:
    points = pd.DataFrame(
        {
            "name": ["fastest", "a", "b", "same-y-slower", "between", "best", "same-x-worse"],
            "median_s": [0.5, 1.0, 2.0, 3.0, 2.5, 4.0, 1.0],
            "nll_per_token": [9.0, 5.0, 3.0, 3.0, 4.0, 1.0, 6.0],
        }
    )
    front = pareto_front(points)
    assert list(points.loc[front, "name"]) == ["fastest", "a", "b", "best"]
    ties = pd.DataFrame({"median_s": [1.0, 1.0], "nll_per_token": [2.0, 2.0]})
    assert pareto_front(ties).all()  # identical points do not dominate each other


def test_frontier_points_mark_best_and_tied_depths(fake_run: Path) -> None:
    points = frontier_points(load_results(fake_run)).set_index(["model", "inference_loops"])
    assert points.loc[("train4", 6), "best"] and points.loc[("base", 8), "best"]
    assert points.loc[("base", 6), "tied"] and not points.loc[("base", 4), "tied"]
    assert not points.loc[("train8", 16), "pareto"]  # slower and worse than 8 loops
    assert points.loc[("train8", 2), "pareto"]


def test_table1_has_each_models_argmins_and_neighbour_gaps(fake_run: Path) -> None:
    table = table1(load_results(fake_run)).set_index("model")
    assert list(table.index) == ["base", "train8", "train4"]
    # train4 is best at 6 on test but at 4 on heldout: a mismatch, with gaps to 4 and 8 loops
    train4 = table.loc["train4"]
    assert (train4["best_test_loops"], train4["best_heldout_loops"], train4["train_test_match"]) == (6, 4, False)
    assert [gap["loops"] for gap in train4["neighbour_gaps"]] == [4, 8]
    assert all(gap["ci_low"] > 0 for gap in train4["neighbour_gaps"])
    assert all(gap["ci_low"] <= 0 for gap in table.loc["base", "neighbour_gaps"])  # the base's are tied


def test_best_halting_is_the_lowest_nll_halting_row(fake_run: Path) -> None:
    results = load_results(fake_run)
    best = best_halting(results, "train8")
    halting = results.adaptive[(results.adaptive["model"] == "train8") & (results.adaptive["kind"] == "halting")]
    assert best["nll_per_token"] == halting["nll_per_token"].min() and best["policy"] == "ladder-2-4-8-kl0.1"
    assert best_halting(results, "train8", split="heldout") is None  # halting policies run on test only


def test_a_training_depth_off_the_grid_reads_not_in_grid_never_zero(tmp_path: Path) -> None:
    """preferred_depth.csv says "not in grid" for the base (its depth is off the grid):
    Table 1, report.md and compare carry the words, and no share is made up."""
    from study.io import atomic_write_csv
    from study.report import compare
    from study.report.markdown import render_report
    from study.stages.nll import NOT_IN_GRID, PREFERRED_COLUMNS
    from tests.support.fake_run import make_fake_run

    from .helpers import section, table_row

    run = make_fake_run(tmp_path / "off-grid")
    path = run / "results" / "preferred_depth.csv"
    frame = pd.read_csv(path)
    frame["p_best_is_train_loops"] = frame["p_best_is_train_loops"].astype(object)
    frame.loc[frame["model"] == "base", "p_best_is_train_loops"] = NOT_IN_GRID
    atomic_write_csv(path, frame.astype(object).fillna("").to_dict("records"), PREFERRED_COLUMNS)
    results = load_results(run)
    table = table1(results).set_index("model")
    assert table.loc["base", "p_best_is_train_loops"] == NOT_IN_GRID
    assert isinstance(table.loc["train8", "p_best_is_train_loops"], float)
    text = section(render_report(results, {}), "Table 1")
    assert table_row(text, "Base")[7] == NOT_IN_GRID
    assert table_row(text, "Train8")[7] == f"{table.loc['train8', 'p_best_is_train_loops']:.2f}"
    compare([run], tmp_path / "compare")
    compared = pd.read_csv(tmp_path / "compare" / "compare.csv").set_index("model")
    assert compared.loc["base", "p_best_is_train_loops"] == NOT_IN_GRID
