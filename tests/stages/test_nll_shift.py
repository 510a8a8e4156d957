"""study.stages.nll_shift: replication.csv and depth_shift.csv from synthetic depth curves
whose answer is known (the two-level bootstrap itself: tests/library/test_stats.py)."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from study.errors import StudyError
from study.io import atomic_write_csv, read_csv
from study.stages.nll_shift import (
    ACROSS_SEEDS,
    BASE_MODEL,
    DEPTH_SHIFT_COLUMNS,
    NOT_IN_GRID,
    ONE_SEED,
    REPLICATION_COLUMNS,
    DepthCurves,
    depth_shift_rows,
    replication_rows,
    shift_pairs,
)
from study.stats import paired_bootstrap, paired_depth_bootstrap, ratio_of_sums

GRID = [1, 2, 3, 4, 6]
SEEDS = [2026, 2027, 2028]
PULL = 0.05  # nats/token at one unit of log(depth / preferred)^2


def make_curves(
    model: str,
    train_loops: int,
    rng: np.random.Generator,
    *,
    preferred: float | None = None,
    questions: int = 60,
    grid: list[int] = GRID,
    seeds: Sequence[int | None] = SEEDS,
    split: str = "test",
    noise: float = 0.05,
    seed_sd: float = 0.0,
    difficulty: np.ndarray | None = None,
    tokens: np.ndarray | None = None,
) -> DepthCurves:
    """Per-token NLL = a question's difficulty + PULL * log(K / preferred)^2 (no depth
    preference when ``preferred`` is None) + a per-seed-and-depth offset (``seed_sd``) +
    per-question noise; summed over each question's answer tokens."""
    tokens = rng.integers(10, 60, questions).astype(float) if tokens is None else tokens
    difficulty = rng.uniform(1.0, 2.0, questions) if difficulty is None else difficulty
    shape = np.array([PULL * math.log(k / preferred) ** 2 if preferred else 0.0 for k in grid])
    per_token = (
        difficulty[None, None, :]
        + shape[None, :, None]
        + rng.normal(0, seed_sd, (len(seeds), len(grid), 1))
        + rng.normal(0, noise, (len(seeds), len(grid), questions))
    )
    return DepthCurves(model, train_loops, split, list(grid), list(seeds), list(range(questions)), per_token * tokens,
                       tokens)  # fmt: skip


def pair(rng: np.random.Generator, shift: bool = True, **kwargs) -> list[DepthCurves]:
    """train2 and train4 on the same questions; with ``shift`` each prefers its training depth."""
    questions = kwargs.pop("questions", 60)
    tokens = rng.integers(10, 60, questions).astype(float)
    difficulty = rng.uniform(1.0, 2.0, questions)
    common: dict[str, Any] = dict(questions=questions, tokens=tokens, difficulty=difficulty, **kwargs)
    return [
        make_curves("train2", 2, rng, preferred=2 if shift else 3, **common),
        make_curves("train4", 4, rng, preferred=4 if shift else 3, **common),
    ]


def s_rows(rows: list[dict], seed: str = ACROSS_SEEDS) -> list[dict]:
    return [r for r in rows if r["statistic"] == "S" and r["seed"] == seed]


def test_base_model_is_the_pipelines_base() -> None:
    from study.pipeline import BASE

    assert BASE_MODEL == BASE


def test_a_built_in_shift_gives_negative_s_with_a_ci_below_zero() -> None:
    rng = np.random.default_rng(0)
    curves = pair(rng)
    rows = depth_shift_rows(curves, 1000, 0.95, seed=7)
    (pooled,) = s_rows(rows)
    assert (pooled["model_a"], pooled["model_b"], pooled["train_loops_a"], pooled["train_loops_b"]) == (
        "train4", "train2", 4, 2,
    )  # fmt: skip
    expected = -2 * PULL * math.log(2) ** 2  # D(4) - D(2) of the two shapes
    assert pooled["value"] == pytest.approx(expected, abs=0.01)
    assert pooled["ci_high"] < 0 and pooled["p_value"] == 0.0 and pooled["note"] == ""
    assert pooled["seeds"] == 3 and pooled["questions"] == 60 and pooled["pairing"] == "seed"
    assert [r["value"] < 0 for r in rows if r["statistic"] == "S" and r["seed"] != ACROSS_SEEDS] == [True] * 3
    # D is the paired difference of the pooled token-weighted curves, and S its difference at the training depths
    a, b = (np.mean(ratio_of_sums(c.nll, c.tokens), axis=0) for c in (curves[1], curves[0]))
    d_rows = [r for r in rows if r["statistic"] == "D"]
    assert [r["inference_loops"] for r in d_rows] == GRID
    assert [r["value"] for r in d_rows] == pytest.approx(list(a - b), rel=1e-12)
    assert all(r["ci_low"] <= r["value"] <= r["ci_high"] for r in d_rows)
    d = {r["inference_loops"]: r["value"] for r in d_rows}
    assert pooled["value"] == pytest.approx(d[4] - d[2], rel=1e-12)


def test_without_noise_s_is_exactly_the_built_in_shift() -> None:
    rows = depth_shift_rows(pair(np.random.default_rng(1), noise=0.0), 200, 0.95, seed=1)
    (pooled,) = s_rows(rows)
    expected = -2 * PULL * math.log(2) ** 2
    assert pooled["value"] == pytest.approx(expected, rel=1e-9)
    assert pooled["ci_low"] == pytest.approx(expected, rel=1e-9) and pooled["ci_high"] == pytest.approx(expected)


def test_without_a_shift_the_ci_covers_zero_at_about_the_nominal_rate() -> None:
    """100 data sets with no shift (both models prefer depth 3) and a small seed-level
    offset: the pooled 95% CI covers 0 in most of them, and so does each seed's own
    (question) CI when nothing varies by seed."""
    pooled, single = [], []
    for index in range(100):
        rng = np.random.default_rng(100 + index)
        rows = depth_shift_rows(pair(rng, shift=False, questions=40, seed_sd=0.005), 300, 0.95, seed=index)
        pooled += [r["ci_low"] <= 0 <= r["ci_high"] for r in s_rows(rows)]
        flat = depth_shift_rows(pair(rng, shift=False, questions=40), 300, 0.95, seed=index)
        single += [r["ci_low"] <= 0 <= r["ci_high"] for r in flat if r["statistic"] == "S" and r["seed"] != "all"]
    assert 0.88 <= np.mean(pooled) <= 1.0
    assert 0.9 <= np.mean(single) <= 0.99


def test_same_inputs_give_the_same_bytes_and_the_seed_matters(tmp_path: Path) -> None:
    curves = pair(np.random.default_rng(2))
    paths = []
    for index, seed in enumerate((5, 5, 6)):
        for name, rows, columns in (
            ("replication", replication_rows(curves, 300, 0.9, seed), REPLICATION_COLUMNS),
            ("depth_shift", depth_shift_rows(curves, 300, 0.9, seed), DEPTH_SHIFT_COLUMNS),
        ):
            path = tmp_path / f"{name}-{index}.csv"
            atomic_write_csv(path, rows, columns)
            paths.append(path)
    first, again, other = paths[:2], paths[2:4], paths[4:]
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in again]
    assert [p.read_bytes() for p in first] != [p.read_bytes() for p in other]
    assert "nan" not in "".join(p.read_text().lower() for p in paths)


def test_one_seed_pair_is_the_question_bootstrap() -> None:
    """With one seed the pooled rows have no across-seed CI (a note says so); the seed's own
    S row is scipy's paired bootstrap of S over questions, bit for bit, and the seed's
    replication rows are paired_depth_bootstrap's."""
    rng = np.random.default_rng(3)
    curves = pair(rng, seeds=[2026])
    rows = depth_shift_rows(curves, 400, 0.95, seed=11)
    (pooled,) = s_rows(rows)
    assert (pooled["ci_low"], pooled["ci_high"], pooled["p_value"], pooled["note"]) == (None, None, None, ONE_SEED)
    (own,) = s_rows(rows, "2026")
    b, a = curves
    at = [GRID.index(4), GRID.index(2)]

    def s_statistic(a4, a2, b4, b2, tokens, axis=-1):
        d4 = ratio_of_sums(a4, tokens, axis=axis) - ratio_of_sums(b4, tokens, axis=axis)
        d2 = ratio_of_sums(a2, tokens, axis=axis) - ratio_of_sums(b2, tokens, axis=axis)
        return d4 - d2

    samples = (a.nll[0, at[0]], a.nll[0, at[1]], b.nll[0, at[0]], b.nll[0, at[1]], a.tokens)
    direct = paired_bootstrap(samples, s_statistic, 400, 0.95, 11)
    assert own["value"] == pytest.approx(float(s_statistic(*samples)), rel=1e-12)
    assert (own["ci_low"], own["ci_high"]) == pytest.approx(
        (direct.confidence_interval.low, direct.confidence_interval.high), rel=1e-12
    )
    replication = replication_rows([a], 400, 0.95, seed=11)
    seed_rows = [r for r in replication if r["seed"] == "2026"]
    reference = paired_depth_bootstrap(a.nll[0], a.tokens, 400, 0.95, 11)
    assert [(r["gap_ci_low"], r["gap_ci_high"]) for r in seed_rows] == reference.gap_ci
    across = [r for r in replication if r["seed"] == ACROSS_SEEDS]
    assert [r["gap_to_best"] for r in across] == reference.gap
    assert {(r["gap_ci_low"], r["gap_ci_high"], r["p_best"], r["note"]) for r in across} == {
        (None, None, None, ONE_SEED)
    }


def test_replication_counts_the_seeds_whose_argmin_is_the_training_depth() -> None:
    """Seeds 2026 and 2027 prefer depth 4 (the training depth), 2028 prefers 3: two of three;
    the pooled argmin is 4 (the mean of the three shapes), far depths' gap CIs above 0."""
    rng = np.random.default_rng(4)
    curve = make_curves("train4", 4, rng, preferred=4, noise=0.002)
    nll = curve.nll.copy()
    nll[2] = make_curves("train4", 4, rng, preferred=3, noise=0.002, tokens=curve.tokens).nll[0]
    curve = replace(curve, nll=nll)
    rows = replication_rows([curve], 500, 0.95, seed=3)
    assert set(rows[0]) == set(REPLICATION_COLUMNS)
    by_seed = {s: [r for r in rows if r["seed"] == s] for s in ("2026", "2027", "2028", ACROSS_SEEDS)}
    assert [by_seed[s][0]["best_loops"] for s in ("2026", "2027", "2028")] == [4, 4, 3]
    assert [by_seed[s][0]["best_is_train_loops"] for s in ("2026", "2027", "2028")] == ["true", "true", "false"]
    across = by_seed[ACROSS_SEEDS]
    assert {(r["seeds_best_at_train"], r["seeds"], r["best_loops"], r["best_is_train_loops"]) for r in across} == {
        (2, 3, 4, "true")
    }
    pooled = np.mean(ratio_of_sums(nll, curve.tokens), axis=0)
    assert [r["nll_per_token"] for r in across] == pytest.approx(list(pooled), rel=1e-12)
    assert [r["is_best"] for r in across] == [k == 4 for k in GRID]
    assert all(r["gap_ci_low"] > 0 for r in across if r["inference_loops"] in (1, 6))
    at_best = next(r for r in across if r["is_best"])
    assert (at_best["gap_to_best"], at_best["gap_ci_low"], at_best["gap_ci_high"]) == (0.0, 0.0, 0.0)
    assert sum(r["p_best"] for r in across) == pytest.approx(1.0)
    assert all(r["seeds_best_at_train"] is None and r["seeds"] == 1 for r in rows if r["seed"] != ACROSS_SEEDS)


def test_a_training_depth_off_the_grid_is_not_in_grid(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    curves = pair(rng, grid=[1, 2, 3])  # train4's depth is not scored
    shift = depth_shift_rows(curves, 200, 0.95, seed=1)
    (pooled,) = [r for r in shift if r["statistic"] == "S"]  # and no per-seed S rows
    assert (pooled["value"], pooled["ci_low"], pooled["p_value"], pooled["note"]) == (None, None, None, NOT_IN_GRID)
    assert len([r for r in shift if r["statistic"] == "D"]) == 3
    replication = replication_rows(curves, 200, 0.95, seed=1)
    train4 = [r for r in replication if r["model"] == "train4"]
    assert {r["best_is_train_loops"] for r in train4} == {NOT_IN_GRID}
    assert {r["seeds_best_at_train"] for r in train4} == {None}
    atomic_write_csv(tmp_path / "shift.csv", shift, DEPTH_SHIFT_COLUMNS)
    (written,) = [r for r in read_csv(tmp_path / "shift.csv") if r["statistic"] == "S"]
    assert (written["value"], written["ci_low"], written["note"]) == ("", "", NOT_IN_GRID)


def test_one_question_has_no_ci_and_no_nan(tmp_path: Path) -> None:
    curves = pair(np.random.default_rng(6), questions=1)
    rows = replication_rows(curves, 100, 0.95, seed=1) + depth_shift_rows(curves, 100, 0.95, seed=1)
    for row in rows:
        ci = (row.get("gap_ci_low"), row.get("gap_ci_high"), row.get("ci_low"), row.get("ci_high"))
        assert ci == (None,) * 4 and row["note"] == "n < 2 questions: no CI", row
    atomic_write_csv(tmp_path / "r.csv", rows[:3], REPLICATION_COLUMNS)
    assert "nan" not in (tmp_path / "r.csv").read_text().lower()


def test_pairs_leave_out_the_base_and_equal_depths_and_put_the_deeper_model_first() -> None:
    rng = np.random.default_rng(7)
    common: dict[str, Any] = dict(questions=20, tokens=np.full(20, 10.0), difficulty=np.ones(20))
    base = make_curves(BASE_MODEL, 1, rng, seeds=[None], **common)
    train4 = make_curves("train4", 4, rng, **common)
    train2 = make_curves("train2", 2, rng, **common)
    again4 = make_curves("other4", 4, rng, **common)
    held = [replace(c, split="heldout") for c in (train4, train2)]
    pairs = shift_pairs([base, train4, train2, again4, *held])
    assert [(a.model, b.model, a.split) for a, b in pairs] == [
        ("train4", "train2", "test"), ("other4", "train2", "test"), ("train4", "train2", "heldout"),
    ]  # fmt: skip
    rows = depth_shift_rows([base, train2, train4], 100, 0.95, seed=1)
    assert {(r["model_a"], r["model_b"]) for r in rows} == {("train4", "train2")}
    assert {r["seed"] for r in replication_rows([base], 100, 0.95, seed=1)} == {"", ACROSS_SEEDS}


def test_different_seed_lists_of_one_length_are_paired_by_index() -> None:
    rng = np.random.default_rng(8)
    train2, train4 = pair(rng)
    train4 = replace(train4, seeds=[7, 8, 9])
    rows = depth_shift_rows([train2, train4], 100, 0.95, seed=1)
    assert {r["pairing"] for r in rows} == {"index"}
    assert [r["seed"] for r in rows if r["statistic"] == "S"] == ["all", "7/2026", "8/2027", "9/2028"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a, b: [a, replace(b, seeds=SEEDS[:2], nll=b.nll[:2])], "2 seeds against 3"),
        (lambda a, b: [a, replace(b, example_ids=list(range(1, 61)))], "not scored on the same questions"),
        (lambda a, b: [a, replace(b, tokens=b.tokens + 1)], "not scored on the same questions"),
        (lambda a, b: [a, replace(b, inference_loops=[1, 2, 3, 4, 8])], "different depth grids"),
        (lambda a, b: [a, replace(b, nll=b.nll[:, :4])], "expected [seeds, depths, questions] = [3, 5, 60]"),
        (lambda a, b: [a, replace(b, tokens=b.tokens[:59])], "expected [seeds, depths, questions]"),
        (lambda a, b: [a, replace(b, nll=np.where(b.nll > 60, np.nan, b.nll))], "NaN or infinite"),
        (lambda a, b: [a, replace(b, inference_loops=[1, 3, 2, 4, 6])], "are not increasing"),
        (lambda a, b: [a, replace(b, seeds=[1, 1, 2])], "repeated seeds"),
        (lambda a, b: [a, b, b], "given twice"),
        (lambda a, b: [a, replace(b, tokens=b.tokens * 0)], "at least one answer token"),
    ],
)
def test_inputs_that_cannot_be_compared_are_refused(change, message) -> None:
    curves = change(*pair(np.random.default_rng(9)))
    with pytest.raises(StudyError, match=re.escape(message)):
        depth_shift_rows(curves, 50, 0.95, seed=1)


def test_replication_rows_refuse_what_depth_shift_rows_refuse() -> None:
    a, b = pair(np.random.default_rng(10))
    with pytest.raises(StudyError, match="train4/test: given twice"):
        replication_rows([a, b, b], 50, 0.95, seed=1)
