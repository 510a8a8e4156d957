"""The adaptive stage's calibrated operating points: taus chosen on the heldout slice,
reported once on test (``results/adaptive_calibrated.csv``)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from study.config import AdaptiveConfig
from study.io import read_csv
from study.looping.halting import stop_steps
from study.stages import adaptive, nll
from study.stages.adaptive import CALIBRATED_COLUMNS
from tests.support.helpers_sweep import make_context, one_thread

EPSILON = 0.01


@pytest.fixture(scope="module")
def calibrated_run(tmp_path_factory):
    ctx = make_context(tmp_path_factory.mktemp("calibrated"), nll_loops=(1, 2, 4), sft_loops=(2,))
    section = AdaptiveConfig(ladder=[1, 2, 4], tau_quantiles=[0.3, 0.6], epsilon=EPSILON)  # no fixed taus
    ctx.config = ctx.config.model_copy(update={"adaptive": section})
    with one_thread():
        nll.run(ctx)
        adaptive.run(ctx)
    return ctx


def trace_arrays(ctx, model: str, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cost, nll_sum, kl) [N, S] of a model's ladder trace cell on ``split``."""
    rows = read_csv(ctx.cells_dir("adaptive") / f"{model}-{split}-ladder-1-2-4-trace.csv")

    def grid(key: str) -> np.ndarray:
        return np.array([np.nan if r[key] == "" else float(r[key]) for r in rows]).reshape(-1, 3)

    return grid("executed_loops"), grid("nll_sum"), grid("kl")


def fixed_nll(ctx, model: str, split: str) -> dict[str, float]:
    rows = [r for r in read_csv(ctx.results_path("nll.csv")) if (r["model"], r["split"]) == (model, split)]
    tokens = sum(int(r["answer_tokens"]) for r in rows if r["policy"] == "M1")
    return {p: sum(float(r["nll_sum"]) for r in rows if r["policy"] == p) / tokens for p in ("M1", "M2", "M4")}


def test_calibrated_rows_are_chosen_on_heldout_and_scored_on_test(calibrated_run):
    ctx = calibrated_run
    rows = read_csv(ctx.results_path("adaptive_calibrated.csv"))
    assert tuple(rows[0]) == CALIBRATED_COLUMNS
    for model in ("base", "train2"):
        mine = [r for r in rows if r["model"] == model]
        # a ladder 1-2-4 costs 3 (stop at the first signal) to 7: only M4 lies inside its range
        assert [r["target"] for r in mine] == ["within_eps", "equal_compute:M4"]
        cost, nll_sum, kl = trace_arrays(ctx, model, "heldout")
        tokens = nll_sum[:, -1].sum() / fixed_nll(ctx, model, "heldout")["M4"]  # tau 0 = the top rung
        held = fixed_nll(ctx, model, "heldout")
        for r in mine:
            assert (r["family"], r["rule"], r["calibration_split"], r["split"]) == (
                "ladder-1-2-4-trace", "kl", "heldout", "test",
            )  # fmt: skip
            step = stop_steps(kl, float(r["tau"]))  # the chosen tau, replayed on the heldout trace
            rows_index = np.arange(len(step))
            assert float(r["heldout_mean_loops"]) == pytest.approx(cost[rows_index, step].mean())
            assert float(r["heldout_nll_per_token"]) == pytest.approx(nll_sum[rows_index, step].sum() / tokens)
            for key in ("mean_loops", "nll_per_token", "oracle_nll_at_budget", "gap_to_fixed_at_equal_compute"):
                assert math.isfinite(float(r[key])), key
            assert r["oracle_gap_closed"] == "" or math.isfinite(float(r["oracle_gap_closed"]))
        within, equal = mine
        met = float(within["heldout_nll_per_token"]) <= min(held.values()) + EPSILON
        assert within["target_met"] == str(met)
        # the equal-compute point: no tau of any outcome on heldout lands closer to 4 loops
        candidates = [0.0, *np.unique(kl[np.isfinite(kl)]).tolist(), float(np.nanmax(kl)) * 2]
        means = [cost[np.arange(len(kl)), stop_steps(kl, tau)].mean() for tau in candidates]
        assert abs(float(equal["heldout_mean_loops"]) - 4) == pytest.approx(min(abs(m - 4) for m in means))
        assert equal["equal_compute_fixed"] == "M4"


def test_tau_is_never_chosen_from_test(calibrated_run):
    """Change only test-slice numbers (the test trace cells and nll.csv's test rows): every
    chosen tau and every heldout number stays; the test numbers move."""
    ctx = calibrated_run
    before = read_csv(ctx.results_path("adaptive_calibrated.csv"))
    paths = [ctx.cells_dir("adaptive") / f"{m}-test-ladder-1-2-4-trace.csv" for m in ("base", "train2")]
    paths.append(ctx.results_path("nll.csv"))
    originals = {path: path.read_bytes() for path in paths}
    try:
        for path in paths:
            rows = read_csv(path)
            header = list(rows[0])
            for i, r in enumerate(rows):
                if r.get("split") != "test":
                    continue
                r["nll_sum"] = repr(float(r["nll_sum"]) * (1.0 + 0.3 * (i % 3)))  # reorders depths and taus
                if r.get("kl"):
                    r["kl"] = repr(float(r["kl"]) * (0.1 + i % 4))
            path.write_text("\n".join([",".join(header), *(",".join(r[k] for k in header) for r in rows)]) + "\n")
        with one_thread():
            adaptive.run(ctx)
        after = read_csv(ctx.results_path("adaptive_calibrated.csv"))
    finally:
        for path, data in originals.items():
            path.write_bytes(data)
    chosen = ("model", "target", "target_met", "tau", "heldout_mean_loops", "heldout_nll_per_token",
              "equal_compute_fixed")  # fmt: skip
    assert [[r[k] for k in chosen] for r in after] == [[r[k] for k in chosen] for r in before]
    assert [r["nll_per_token"] for r in after] != [r["nll_per_token"] for r in before]
