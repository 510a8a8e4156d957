"""The resumable NLL stage (its scorer and statistics: tests/library/)."""

from __future__ import annotations

import pandas as pd
import pytest

from study.io import read_csv
from study.stages import nll as nll_stage
from study.stages.nll import NLL_CSV_COLUMNS, PREFERRED_COLUMNS, SUMMARY_COLUMNS
from tests.support.helpers_sweep import make_context


def recompute_summary_from_rows(ctx) -> None:
    """Every summary cell from nll.csv by hand: the headline is token-weighted (sum of NLL
    over sum of tokens), example_mean_nll the plain mean of per-example ratios, and
    p_best_is_train_loops the p_best of the model's training depth ("not in grid" off it)."""
    rows = pd.read_csv(ctx.results_path("nll.csv"))
    summary = pd.read_csv(ctx.results_path("nll_summary.csv"))
    preferred = pd.read_csv(ctx.results_path("preferred_depth.csv"))
    assert len(summary) == rows.groupby(["model", "split", "inference_loops"]).ngroups
    for _, cell in summary.iterrows():
        mine = rows[
            (rows["model"] == cell["model"])
            & (rows["split"] == cell["split"])
            & (rows["inference_loops"] == cell["inference_loops"])
        ]
        assert cell["examples"] == len(mine) and cell["tokens"] == mine["answer_tokens"].sum()
        assert cell["nll_per_token"] == pytest.approx(mine["nll_sum"].sum() / mine["answer_tokens"].sum(), rel=1e-12)
        assert cell["example_mean_nll"] == pytest.approx((mine["nll_sum"] / mine["answer_tokens"]).mean(), rel=1e-12)
        assert cell["final_tokens"] == mine["final_tokens"].sum()
        final = mine["final_nll_sum"].sum() / mine["final_tokens"].sum()
        assert cell["final_nll_per_token"] == pytest.approx(final, rel=1e-12)
        assert cell["ci_low"] <= cell["nll_per_token"] <= cell["ci_high"]
    train_loops = {"base": 8, "train1": 1}  # tiny_model's default depth (off the grid); the SFT entry
    for (model, split), group in preferred.groupby(["model", "split"]):
        assert set(group["train_loops"]) == {train_loops[model]}
        at_train = group[group["inference_loops"] == train_loops[model]]["p_best"]
        # off the grid the share is said in words, never written as 0.0
        expected = str(float(at_train.iloc[0])) if len(at_train) else "not in grid"
        assert set(group["p_best_is_train_loops"].astype(str)) == {expected}, (model, split)
        cells = summary[(summary["model"] == model) & (summary["split"] == split)]
        best = cells.loc[cells["nll_per_token"].idxmin()]
        assert set(group["best_loops"]) == {best["inference_loops"]}
        assert group["best_nll"].to_list() == pytest.approx([best["nll_per_token"]] * len(group), rel=1e-12)


def test_run_writes_results_and_resumes(tmp_path, monkeypatch):
    ctx = make_context(tmp_path, sft_loops=(1,))  # train1: its training depth is on the grid, base's is not
    nll_stage.run(ctx)
    recompute_summary_from_rows(ctx)
    outputs = ("nll.csv", "nll_summary.csv", "preferred_depth.csv")
    first = {name: ctx.results_path(name).read_bytes() for name in outputs}

    rows = read_csv(ctx.results_path("nll.csv"))
    assert tuple(rows[0]) == NLL_CSV_COLUMNS
    assert tuple(read_csv(ctx.results_path("nll_summary.csv"))[0]) == SUMMARY_COLUMNS
    preferred = read_csv(ctx.results_path("preferred_depth.csv"))
    assert tuple(preferred[0]) == PREFERRED_COLUMNS
    test_ids = [e.id for e in ctx.examples("nll_test")]
    assert [int(r["example_id"]) for r in rows[: len(test_ids)]] == test_ids
    assert [(r["model"], r["split"], r["inference_loops"]) for r in rows[:: len(test_ids)]][:2] == [
        ("base", "test", "1"),
        ("base", "test", "2"),
    ]
    assert {r["model"] for r in preferred} == {"base", "train1"}
    assert all(int(r["answer_tokens"]) > int(r["final_tokens"]) > 0 for r in rows)
    assert {(r["model"], r["seed"], r["train_loops"]) for r in rows} == {("base", "", "8"), ("train1", "7", "1")}
    assert {r["split"] for r in rows} == {r["split"] for r in preferred} == {"test", "heldout", "seen"}
    heldout_ids = [e.id for e in ctx.examples("nll_heldout")]
    assert [int(r["example_id"]) for r in rows if r["split"] == "heldout"][: len(heldout_ids)] == heldout_ids
    for model in ("base", "train1"):
        matches = {r["train_test_match"] for r in preferred if r["model"] == model}
        best = {r["split"]: r["best_loops"] for r in preferred if r["model"] == model}
        assert matches == {str(best["test"] == best["heldout"])}  # test vs heldout (train questions)
    assert sum(float(r["p_best"]) for r in preferred if (r["model"], r["split"]) == ("base", "test")) == 1.0

    # resume: one cell deleted is recomputed, the others are read back; outputs are byte-identical
    calls = []
    real = nll_stage.score_continuations
    monkeypatch.setattr(nll_stage, "score_continuations", lambda *a, **k: calls.append(a[0].policy.id) or real(*a, **k))
    nll_stage.cell_path(ctx, "train1", "heldout", "M2").unlink()
    nll_stage.run(ctx)
    assert calls == ["M2"]
    assert {name: ctx.results_path(name).read_bytes() for name in outputs} == first

    # everything finished: no model is even loaded
    monkeypatch.setattr(ctx, "load_model", lambda spec: pytest.fail(f"{spec.name} reloaded"))
    nll_stage.run(ctx)
    assert {name: ctx.results_path(name).read_bytes() for name in outputs} == first


def test_every_replicate_is_scored_under_its_own_name_with_its_seed(tmp_path):
    ctx = make_context(tmp_path, nll_loops=(1,), sft_loops=(1,), replicates=(7, 8))
    assert [(s.name, s.label, s.seed) for s in ctx.model_specs()] == [
        ("base", "Base", None), ("train1-s7", "Train1 (seed 7)", 7), ("train1-s8", "Train1 (seed 8)", 8),
    ]  # fmt: skip
    nll_stage.run(ctx)
    for name in ("nll.csv", "nll_summary.csv", "preferred_depth.csv"):
        rows = read_csv(ctx.results_path(name))
        seeds = {(r["model"], r["split"]): r["seed"] for r in rows}
        assert seeds == {(m, s): seed for m, seed in (("base", ""), ("train1-s7", "7"), ("train1-s8", "8"))
                         for s in ("test", "heldout", "seen")}, name  # fmt: skip
    assert ctx.cells_dir("nll").joinpath("train1-s8-heldout-M1.csv").is_file()
    nll = pd.read_csv(ctx.results_path("nll.csv"))
    sums = nll[nll["split"] == "test"].groupby("model")["nll_sum"].sum()
    assert sums["train1-s7"] != sums["train1-s8"]  # two models, not one scored twice


def test_train_test_match_compares_test_with_heldout_not_with_seen(tmp_path):
    """Made-up cells: every model is best at 1 loop on test and seen (SFT data) but at 2 on
    heldout, so test and the unseen train questions disagree."""
    ctx = make_context(tmp_path, nll_loops=(1, 2), sft_loops=(1,))
    grid = ctx.policies([1, 2])
    best = {"test": 1, "heldout": 2, "seen": 1}
    cells = {}
    for spec in ctx.model_specs():
        for split in nll_stage.SPLITS:
            for policy in grid:
                nll = 1.0 if policy.inference_loops == best[split] else 1.5
                cells[spec.name, split, policy.id] = [
                    {"model": spec.name, "split": split, "policy": policy.id, "inference_loops": policy.inference_loops,
                     "executed_loops": float(policy.inference_loops), "example_id": i, "answer_tokens": 10,
                     "nll_sum": 10 * nll + 0.01 * i, "final_tokens": 2, "final_nll_sum": 2.0}
                    for i in range(4)
                ]  # fmt: skip
    nll_stage.write_results(ctx, cells, grid)
    preferred = read_csv(ctx.results_path("preferred_depth.csv"))
    assert {(r["split"], r["best_loops"]) for r in preferred} == {("test", "1"), ("heldout", "2"), ("seen", "1")}
    assert {r["train_test_match"] for r in preferred} == {"False"}


def test_check_stop_between_cells(tmp_path, monkeypatch):
    from study.pipeline import Interrupted

    ctx = make_context(tmp_path)
    ctx._stop[0] = True
    with pytest.raises(Interrupted):
        nll_stage.run(ctx)
    assert not ctx.cells_dir("nll").exists()


def test_replication_and_depth_shift_are_written_from_the_cells_of_every_seed(tmp_path):
    """The stage groups each training depth's replicate seeds into one family and writes
    replication.csv and depth_shift.csv from the same per-question sums as nll.csv: the
    pooled D(K) is the mean over seed pairs of the per-seed NLL-per-token differences."""
    ctx = make_context(tmp_path, nll_loops=(1, 2), sft_loops=(1, 2), replicates=(7, 8))
    nll_stage.run(ctx)
    nll = pd.read_csv(ctx.results_path("nll.csv"))
    per_token = nll.groupby(["model", "split", "inference_loops"]).apply(
        lambda g: g["nll_sum"].sum() / g["answer_tokens"].sum(), include_groups=False
    )
    shift = pd.read_csv(ctx.results_path("depth_shift.csv"), keep_default_na=False)
    pooled = shift[(shift["seed"] == "all") & (shift["split"] == "test")]
    assert set(pooled["model_a"]) == {"train2"} and set(pooled["model_b"]) == {"train1"}  # the base is in no pair
    d = {}
    for k in (1, 2):
        d[k] = sum(per_token[f"train2-s{s}", "test", k] - per_token[f"train1-s{s}", "test", k] for s in (7, 8)) / 2
        row = pooled[(pooled["statistic"] == "D") & (pooled["inference_loops"] == str(k))]
        assert float(row["value"].iloc[0]) == pytest.approx(d[k], rel=1e-9)
    s_row = pooled[pooled["statistic"] == "S"]
    assert float(s_row["value"].iloc[0]) == pytest.approx(d[2] - d[1], rel=1e-9)
    assert float(s_row["ci_low"].iloc[0]) <= float(s_row["value"].iloc[0]) <= float(s_row["ci_high"].iloc[0])
    replication = pd.read_csv(ctx.results_path("replication.csv"), keep_default_na=False)
    assert set(replication["model"]) == {"base", "train1", "train2"}
    assert set(replication[replication["model"] == "train2"]["seed"]) == {"7", "8", "all"}
    assert set(replication["split"]) == {"test", "heldout", "seen"}


def test_one_example_cell_has_empty_ci_cells_and_the_report_says_n_below_two(tmp_path):
    """NaN never reaches a results file: a cell of one example writes empty CI cells."""
    from study.io import atomic_write_csv
    from study.report.formats import format_ci, gaps_text

    row = {"executed_loops": 2.0, "nll_sum": 3.0, "answer_tokens": 2, "final_nll_sum": 1.0, "final_tokens": 1}
    summary = nll_stage.cell_summary([row], 50, 0.95, 0)
    assert summary["nll_per_token"] == 1.5
    assert (summary["ci_low"], summary["ci_high"], summary["final_ci_low"], summary["final_ci_high"]) == ("",) * 4
    path = tmp_path / "nll_summary.csv"
    columns = [c for c in SUMMARY_COLUMNS if c in summary]
    atomic_write_csv(path, [summary], columns)
    assert "nan" not in path.read_text().lower()
    read = pd.read_csv(path).iloc[0]
    assert format_ci(read["ci_low"], read["ci_high"]) == "no CI (n < 2)"
    gap = {"loops": 4, "gap": 0.01, "ci_low": float("nan"), "ci_high": float("nan")}
    assert gaps_text([gap]) == "4 loops: +0.010 (no CI (n < 2))"  # neither "tied" nor "worse"
