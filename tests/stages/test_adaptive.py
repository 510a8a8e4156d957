"""Per-input depth: halting policies, their cost accounting, the adaptive stage and its figure."""

from __future__ import annotations

import math
from itertools import pairwise

import numpy as np
import pytest
import torch

from study.config import AdaptiveConfig, ConfigError, load_config
from study.io import read_csv
from study.looping.calibration import quantile_taus, tau_grid
from study.looping.policies import HaltingWindow, LoopedWindow, RungLadder, UniformLoops
from study.looping.spec import LoopSpec
from study.models.adaptive import kl_rows
from study.models.backbones import bind
from study.pipeline import StudyError
from study.stages import adaptive, nll
from study.stages.adaptive import ADAPTIVE_COLUMNS, CALIBRATED_COLUMNS
from tests.support.helpers_looped import tiny_llama
from tests.support.helpers_sweep import make_context, one_thread, tiny_model

SPEC = LoopSpec(window=(2, 3), loops=6, strategy="euler")


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 1000, (3, 20), generator=generator), torch.tensor([10, 14, 7])


@pytest.fixture(scope="module")
def loopformer():
    return tiny_model(seed=3)


@pytest.fixture(scope="module")
def llama():
    return tiny_llama(0)


@torch.inference_mode()
def test_tau_zero_reproduces_the_fixed_cap_on_both_backbones(loopformer, llama):
    ids, prompts = batch()
    with one_thread():
        hidden, cost = bind(loopformer, RungLadder((2, 4, 8), 0.0)).hidden(ids, prompts)
        fixed, _ = bind(loopformer, UniformLoops(8)).hidden(ids)
        assert torch.equal(hidden, fixed)
        assert cost.tolist() == [14.0] * 3  # every rung was run and paid for
        window, _ = bind(llama, LoopedWindow(SPEC)).hidden(ids)
        for rule in ("residual", "kl"):
            hidden, executed = bind(llama, HaltingWindow(SPEC, rule, 0.0)).hidden(ids, prompts)
            assert torch.equal(hidden, window), rule
            assert executed.tolist() == [6.0] * 3


@torch.inference_mode()
def test_ladder_stops_where_successive_rungs_agree_and_pays_every_rung(loopformer):
    """The rule and the cost, recomputed by hand from the fixed-M logits of each row alone."""
    ids, prompts = batch(1)
    ladder = (1, 2, 4, 8)
    with one_thread():
        logits = {
            m: loopformer(ids, num_loops=m).logits[torch.arange(3), prompts - 1] for m in ladder
        }  # [B, V] at the last prompt position
        kls = {b: kl_rows(logits[b], logits[a]) for a, b in pairwise(ladder)}
        tau = float(torch.stack(list(kls.values())).median())  # some rows stop early, some climb on
        expected_cost, expected_rung = [], []
        for r in range(3):
            stop = next((b for b in ladder[1:] if kls[b][r] < tau), ladder[-1])
            expected_rung.append(stop)
            expected_cost.append(float(sum(m for m in ladder if m <= stop)))
        runner = bind(loopformer, RungLadder(ladder, tau))
        hidden, cost = runner.hidden(ids, prompts)
    assert cost.tolist() == expected_cost
    assert len(set(expected_rung)) > 1  # the test separates rows that stop from rows that go on
    for r, rung in enumerate(expected_rung):  # each row is scored at its own rung
        torch.testing.assert_close(hidden[r], loopformer.gpt(ids[r : r + 1], num_loops=rung).last_hidden_state[0])


@torch.inference_mode()
def test_window_halting_is_per_row_and_stops_early(llama):
    ids, prompts = batch(2)
    with one_thread():
        for rule, tau in (("residual", 0.16), ("kl", 3e-4)):
            runner = bind(llama, HaltingWindow(SPEC, rule, tau))
            hidden, executed = runner.hidden(ids, prompts)
            assert executed.min() < SPEC.loops and len(set(executed.tolist())) > 1, rule  # rows stop apart
            # alone, without padding: the same depth and the same states on its real tokens
            for r in range(3):
                width = int(prompts[r]) + 3
                alone, count = runner.hidden(ids[r : r + 1, :width], prompts[r : r + 1])
                assert count.item() == executed[r].item(), (rule, r)
                torch.testing.assert_close(alone[0], hidden[r, :width], rtol=1e-4, atol=1e-5)


@torch.inference_mode()
def test_window_halting_decides_from_the_prompt_only(llama):
    """Replacing the tokens after the prompt (by a longer run of one repeated token)
    changes nothing about a row's depth."""
    ids, prompts = batch(3)
    other = torch.zeros((3, 40), dtype=torch.long)
    for r in range(3):
        other[r, : prompts[r]] = ids[r, : prompts[r]]
    with one_thread():
        for rule, taus in (("residual", (0.14, 0.16, 0.18)), ("kl", (1e-4, 3e-4))):
            for tau in taus:
                runner = bind(llama, HaltingWindow(SPEC, rule, tau))
                assert torch.equal(runner.hidden(ids, prompts)[1], runner.hidden(other, prompts)[1]), (rule, tau)


def test_halting_policies_refuse_bad_thresholds():
    for tau in (float("nan"), float("inf"), -0.1):
        with pytest.raises(ValueError, match="tau"):
            RungLadder((2, 4), tau)
        with pytest.raises(ValueError, match="tau"):
            HaltingWindow(SPEC, "kl", tau)
    with pytest.raises(ValueError, match="increase"):
        RungLadder((4, 2), 0.1)
    with pytest.raises(ConfigError, match="adaptive"):
        load_config("smoke", ["adaptive.taus=[.nan]"])
    with pytest.raises(ConfigError, match="give taus, tau_quantiles or both"):
        load_config("smoke", ["adaptive.taus=[]", "adaptive.tau_quantiles=null"])
    for bad in ("adaptive.tau_quantiles=[1.0]", "adaptive.tau_quantiles=[0.5,0.5]", "adaptive.epsilon=-0.1"):
        with pytest.raises(ConfigError, match="adaptive"):
            load_config("smoke", [bad])
    section = load_config("smoke", ["adaptive.taus=[]"]).adaptive
    assert section is not None and section.tau_quantiles  # quantiles alone are enough
    with pytest.raises(ConfigError, match="give ladder"):
        load_config("smoke", ["adaptive.k_max=4"])
    with pytest.raises(ConfigError, match="needs k_max"):
        load_config("smol-smoke", ["adaptive.ladder=null", "adaptive.k_max=null"])
    even = [f"{grid}=[2,4]" for grid in ("sft.train_loops", "nll.inference_loops", "exact_match.inference_loops",
                                         "latency.inference_loops", "benchmarks.inference_loops")]  # fmt: skip
    aitken = ["looping.strategy=aitken", "looping.cache_strategy=last", *even]  # every grid even: aitken's K
    assert load_config("smol-smoke", [*aitken, "adaptive.ladder=[2,4]"]).adaptive is not None
    with pytest.raises(ConfigError, match="loops must be even"):  # so must every rung be
        load_config("smol-smoke", [*aitken, "adaptive.ladder=[2,3]"])
    only_ladder = load_config("smol-smoke", ["adaptive.k_max=null", "adaptive.ladder=[1,2]"])  # a family alone
    assert only_ladder.adaptive is not None and only_ladder.adaptive.k_max is None
    assert RungLadder((2, 4, 8), 0.01).id == "ladder-2-4-8-kl0.01"


QUANTILES = [0.25, 0.5, 0.75]


@pytest.fixture(scope="module")
def stage_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("adaptive")
    ctx = make_context(tmp_path, nll_loops=(1, 2, 4), sft_loops=(2,))
    section = AdaptiveConfig(ladder=[1, 2, 4], taus=[0.0, 0.05], tau_quantiles=QUANTILES, epsilon=0.01)
    ctx.config = ctx.config.model_copy(update={"adaptive": section})
    with one_thread():
        nll.run(ctx)
        adaptive.run(ctx)
    return ctx


def heldout_signal(ctx, model: str) -> np.ndarray:
    """The KL signal of a model's heldout ladder trace (NaN at the first rung)."""
    cell = read_csv(ctx.cells_dir("adaptive") / f"{model}-heldout-ladder-1-2-4-trace.csv")
    return np.array([np.nan if r["kl"] == "" else float(r["kl"]) for r in cell])


def test_stage_writes_oracle_best_fixed_and_halting_rows(stage_run):
    rows = read_csv(stage_run.results_path("adaptive.csv"))
    assert tuple(rows[0]) == ADAPTIVE_COLUMNS
    for model in ("base", "train2"):
        for split in ("test", "heldout", "seen"):
            kinds = {r["kind"] for r in rows if r["model"] == model and r["split"] == split}
            assert {"fixed", "best_fixed", "oracle"} <= kinds
            assert ("halting" in kinds) == (split != "seen")  # taus are tried on heldout and test
        # the grid: the config's taus and the quantiles of this model's own heldout signal
        grid = tau_grid([0.0, 0.05], quantile_taus(heldout_signal(stage_run, model), QUANTILES))
        assert len(grid) > 3
        for split in ("heldout", "test"):
            halting = [r for r in rows if (r["model"], r["split"], r["kind"]) == (model, split, "halting")]
            assert [r["policy"] for r in halting] == [RungLadder((1, 2, 4), tau).id for tau in grid]
            assert [float(r["tau"]) for r in halting] == grid
            assert {r["family"] for r in halting} == {"ladder-1-2-4-trace"}
            assert all(
                r["chosen_on"].startswith("grid (") and f"{split} (hindsight)" in r["chosen_on"] for r in halting
            )
        halting = [r for r in rows if (r["model"], r["split"], r["kind"]) == (model, "test", "halting")]
        fixed4 = next(r for r in rows if (r["model"], r["split"], r["policy"]) == (model, "test", "M4"))
        assert float(halting[0]["nll_per_token"]) == float(fixed4["nll_per_token"])  # tau 0 = the top rung
        assert float(halting[0]["mean_loops"]) == 7.0  # paid 1 + 2 + 4
        best = next(r for r in rows if (r["model"], r["split"], r["kind"]) == (model, "test", "best_fixed"))
        assert best["chosen_on"] == "test (hindsight)" and best["family"] == "fixed"
    for r in rows:
        for key in ("mean_loops", "nll_per_token", "gap_to_best_fixed", "oracle_nll_at_budget"):
            assert math.isfinite(float(r[key]))


def test_stage_oracle_is_never_above_the_best_fixed_depth(stage_run):
    rows = read_csv(stage_run.results_path("adaptive.csv"))
    for model, split in {(r["model"], r["split"]) for r in rows}:
        here = [r for r in rows if r["model"] == model and r["split"] == split]
        of = {r["kind"]: r for r in here if r["kind"] != "fixed" and r["family"] == "fixed"}
        assert float(of["oracle"]["nll_per_token"]) <= float(of["best_fixed"]["nll_per_token"]) + 1e-12
        assert float(of["oracle"]["gap_to_best_fixed"]) <= 1e-12
        assert of["oracle"]["chosen_on"] == "per-example oracle (hindsight)"
        fixed = [r for r in here if r["kind"] == "fixed"]
        assert float(of["best_fixed"]["nll_per_token"]) == min(float(r["nll_per_token"]) for r in fixed)
    frontier = read_csv(stage_run.results_path("oracle_frontier.csv"))
    assert frontier and all(np.diff([float(r["nll_per_token"]) for r in frontier if r["model"] == "base"
                                     and r["split"] == "test"]) < 0)  # fmt: skip


def test_each_halting_family_has_its_own_oracle_below_every_tau(stage_run):
    rows = read_csv(stage_run.results_path("adaptive.csv"))
    for model in ("base", "train2"):
        for split in ("heldout", "test"):
            family = [r for r in rows if (r["model"], r["split"], r["family"]) == (model, split, "ladder-1-2-4-trace")]
            oracle = [r for r in family if r["kind"] == "oracle"]
            assert len(oracle) == 1 and "bounds the ladder-1-2-4-trace halting family" in oracle[0]["detail"]
            bound = float(oracle[0]["nll_per_token"])
            assert all(bound <= float(r["nll_per_token"]) + 1e-12 for r in family if r["kind"] == "halting")
        assert not [r for r in rows if r["split"] == "seen" and r["family"] != "fixed"]


def test_report_draws_the_stage_figures_with_fixed_oracle_and_halting_lines(stage_run):
    from study.report import load_results, plot_adaptive_depths, plot_adaptive_frontier

    assert not list(stage_run.figures_dir.glob("adaptive_*"))  # the stage writes results; the report draws
    results = load_results(stage_run.run_dir, models=stage_run.model_specs(), config=stage_run.config)
    figure = plot_adaptive_frontier(results)
    assert len(figure.axes) == 2
    for ax in figure.axes:
        labels = [text.get_text() for text in ax.get_legend().get_texts()]
        assert labels == ["fixed depth", "oracle", "halting: kl, ladder-1-2-4 (tau sweep)"]
        assert len(ax.get_lines()[2].get_xdata()) > 3  # one point per tau of the grid
    figure = plot_adaptive_depths(results)
    labels = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    assert labels[0] == "oracle" and labels[1].startswith("ladder-")


def test_stage_refuses_non_finite_sweep(stage_run, tmp_path):
    path = stage_run.results_path("nll.csv")
    original = path.read_bytes()
    before = stage_run.results_path("adaptive.csv").read_bytes()
    try:
        text = original.decode().splitlines()
        header = text[0].split(",")
        cells = text[1].split(",")
        cells[header.index("nll_sum")] = "nan"
        path.write_text("\n".join([text[0], ",".join(cells), *text[2:]]) + "\n")
        with pytest.raises(StudyError, match="non-finite"):
            adaptive.run(stage_run)
        assert stage_run.results_path("adaptive.csv").read_bytes() == before  # nothing changed
    finally:
        path.write_bytes(original)


def test_a_looped_decoder_ladder_must_lie_on_the_nll_grid():
    for name in ("smol", "smol-smoke", "smol-bench"):  # the shipped ladders are on their grids
        load_config(name, [])
    with pytest.raises(ConfigError, match=r"adaptive.ladder \[1, 2, 8\]: rungs \[8\] are not on nll.inference_loops"):
        load_config("smol-smoke", ["adaptive.ladder=[1,2,8]"])
    assert load_config("smoke", ["adaptive.ladder=[2,4,32]"]).adaptive is not None  # LoopFormer's may lie off it


def test_a_run_without_an_adaptive_section_has_fixed_rows_and_nothing_to_calibrate(tmp_path):
    """No halting policy (v17 has no ``adaptive`` section): fixed depths and the oracle,
    and an adaptive_calibrated.csv of its header alone."""
    ctx = make_context(tmp_path, nll_loops=(1, 2), sft_loops=(2,))
    assert ctx.config.adaptive is None
    with one_thread():
        nll.run(ctx)
        adaptive.run(ctx)
    rows = read_csv(ctx.results_path("adaptive.csv"))
    assert rows and {r["kind"] for r in rows} == {"fixed", "best_fixed", "oracle"}
    assert ctx.results_path("adaptive_calibrated.csv").read_text().strip() == ",".join(CALIBRATED_COLUMNS)
