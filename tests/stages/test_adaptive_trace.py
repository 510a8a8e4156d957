"""The adaptive stage's traces: every rung / window step and its halting signals computed
once, each (rule, tau) a lookup that equals running that policy's own runner bit for bit."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from study.config import AdaptiveConfig
from study.io import read_csv
from study.looping.halting import Trace, halting_outcome, stop_steps
from study.looping.policies import (
    HaltingWindow,
    LadderTrace,
    LoopedWindow,
    RungLadder,
    WindowLadder,
    WindowLadderTrace,
    WindowTrace,
)
from study.looping.spec import LoopSpec
from study.models.adaptive import kl_rows
from study.models.backbones import bind
from study.models.looped_decoder import LoopedDecoder
from study.pipeline import StudyError
from study.scoring import score_continuations, score_policies, score_trace
from study.stages import adaptive, nll
from study.tasks.gsm8k import EncodedExample, encode_example
from tests.support.helpers_looped import looped_context, tiny_llama
from tests.support.helpers_sweep import make_context, one_thread, tiny_model

LADDER = (1, 2, 4, 8)
SPEC = LoopSpec(window=(2, 3), loops=6, strategy="euler")


def random_examples(count: int, vocab: int, seed: int = 0) -> list[EncodedExample]:
    """Examples of varied prompt and answer lengths (so batches are padded and rows differ)."""
    generator = torch.Generator().manual_seed(seed)
    examples = []
    for i in range(count):
        prompt, answer = 6 + (5 * i) % 11, 4 + (7 * i) % 9
        ids = torch.randint(0, vocab, (prompt + answer,), generator=generator).tolist()
        examples.append(EncodedExample(example_id=100 + i, input_ids=ids, answer_start=prompt, final_start=prompt + 2))
    return examples


def as_arrays(traced, sweep: dict[int, list] | None = None) -> Trace:
    """score_trace's output as the stage's lookup reads it; ``sweep`` (depth -> the fixed-depth
    sweep's scores there) fills the NLL of steps the trace leaves to the sweep, as the stage does."""
    cost = np.array([[t.executed_loops for t in steps] for steps in traced])
    nll_sum = np.array(
        [[(sweep[t.depth][i] if t.score is None else t.score).nll_sum for t in steps]  # type: ignore[index]
         for i, steps in enumerate(traced)]
    )  # fmt: skip
    rules = traced[0][0].signals
    signals = {
        rule: np.array([[np.nan if t.signals[rule] is None else t.signals[rule] for t in steps] for steps in traced])
        for rule in rules
    }
    return Trace([steps[0].example_id for steps in traced], cost, nll_sum, signals)


def spread_taus(signal: np.ndarray) -> list[float]:
    """0, taus inside the signal's range (so some rows stop early, some go on), one above.
    The inner taus are signal values themselves: a row whose signal the lookup and the
    runner computed a bit apart would stop at different steps."""
    finite = np.sort(signal[np.isfinite(signal)])
    inner = [float(finite[int(q * (len(finite) - 1))]) for q in (0.2, 0.5, 0.8)]
    return [0.0, *inner, float(finite.max()) * 2]


def window_ladder_trace(model, trace_policy: WindowLadderTrace, examples, batch_size) -> tuple[list, Trace]:
    """A looped decoder's ladder trace with each rung's NLL from the fixed-depth sweep, scored
    as the NLL stage scores it (``score_policies``: the K of one window share a prefix)."""
    with one_thread():
        traced = score_trace(bind(model, trace_policy), examples, batch_size)
        swept = score_policies(model, trace_policy.rungs, examples, batch_size)
    sweep = {rung.inference_loops: swept[rung.id] for rung in trace_policy.rungs}
    return traced, as_arrays(traced, sweep)


def assert_lookup_equals_runner(model, trace_policy, policies, examples, batch_size, trace=None) -> set[float]:
    with one_thread():
        if trace is None:
            trace = as_arrays(score_trace(bind(model, trace_policy), examples, batch_size))
        depths = set()
        for policy in policies:
            rule, tau = policy.halting
            outcome = halting_outcome(trace, rule, tau)
            old = score_continuations(bind(model, policy), examples, batch_size)  # the per-policy path
            assert outcome.nll_sum.tolist() == [s.nll_sum for s in old], policy.id  # exact, not close
            assert outcome.executed_loops.tolist() == [s.executed_loops for s in old], policy.id
            depths |= set(outcome.executed_loops.tolist())
    return depths


def test_ladder_lookup_equals_the_ladder_runner_at_every_tau():
    model = tiny_model(seed=3)
    examples = random_examples(11, model.config.vocab_size)  # batches of 4: 4, 4, 3 rows
    with one_thread():
        trace = as_arrays(score_trace(bind(model, LadderTrace(LADDER)), examples, 4))
    assert np.isnan(trace.signals["kl"][:, 0]).all()  # no signal at the first rung
    policies = [RungLadder(LADDER, tau) for tau in spread_taus(trace.signals["kl"])]
    costs = assert_lookup_equals_runner(model, LadderTrace(LADDER), policies, examples, 4)
    assert len(costs) >= 3  # the taus separate rows that stop early from rows that climb on


def test_window_lookup_equals_the_halting_runner_for_every_rule_and_tau():
    model = tiny_llama(0)
    examples = random_examples(7, model.config.vocab_size, seed=1)
    with one_thread():
        trace = as_arrays(score_trace(bind(model, WindowTrace(SPEC)), examples, 3))
    assert set(trace.signals) == {"residual", "kl"} and np.isfinite(trace.signals["kl"]).all()
    policies = [HaltingWindow(SPEC, rule, tau) for rule in trace.signals for tau in spread_taus(trace.signals[rule])]
    executed = assert_lookup_equals_runner(model, WindowTrace(SPEC), policies, examples, 3)
    assert min(executed) < SPEC.loops and len(executed) >= 3


WINDOW_LADDER = (1, 2, 4)


def test_window_ladder_lookup_equals_the_ladder_runner_at_every_tau():
    model = tiny_llama(2)
    examples = random_examples(9, model.config.vocab_size, seed=2)  # batches of 4: 4, 4, 1 rows
    top = LoopSpec(window=(2, 3), loops=WINDOW_LADDER[-1], strategy="euler")
    trace_policy = WindowLadderTrace(WINDOW_LADDER, top)
    traced, trace = window_ladder_trace(model, trace_policy, examples, 4)
    assert all(t.score is None for steps in traced for t in steps)  # the trace leaves every NLL to the sweep
    assert np.isnan(trace.signals["kl"][:, 0]).all() and np.isfinite(trace.signals["kl"][:, 1:]).all()
    assert [t.depth for t in traced[0]] == list(WINDOW_LADDER)
    policies = [WindowLadder(WINDOW_LADDER, tau, top) for tau in spread_taus(trace.signals["kl"])]
    costs = assert_lookup_equals_runner(model, trace_policy, policies, examples, 4, trace)
    assert {1 + 2, 1 + 2 + 4} <= costs  # some rows stop early, some climb to the top
    # tau 0 climbs to the top rung: its NLL is LoopedWindow(K = 4)'s at the cost of the whole ladder
    with one_thread():
        top_scores = score_continuations(bind(model, LoopedWindow(top)), examples, 4)
    outcome = halting_outcome(trace, "kl", 0.0)
    assert outcome.nll_sum.tolist() == [s.nll_sum for s in top_scores]
    assert outcome.executed_loops.tolist() == [float(sum(WINDOW_LADDER))] * len(examples)


class IdsTokenizer:
    """A prompt is its token ids written out ("17 4 301"): generation's encoding of it is
    exactly the ids the scorer's example holds."""

    eos_token_id = pad_token_id = 0

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [int(t) for t in text.split()]


def test_window_ladder_generation_and_scoring_pick_the_same_rung():
    """The decision reads the prompt alone: a row's rung in teacher-forced scoring (padded,
    batched, answer after it) is the rung ``generate`` picks for its prompt, at every tau."""
    model = tiny_llama(5)
    examples = random_examples(10, model.config.vocab_size, seed=4)
    top = LoopSpec(window=(1, 3), loops=4, strategy="euler", decode_mode="full")
    _, trace = window_ladder_trace(model, WindowLadderTrace((1, 2, 4), top), examples, 4)
    prompts = [" ".join(map(str, e.input_ids[: e.answer_start])) for e in examples]
    picked = set()
    for tau in spread_taus(trace.signals["kl"]):
        policy = WindowLadder((1, 2, 4), tau, top)
        runner = bind(model, policy)
        with one_thread():
            scored = score_continuations(runner, examples, 4)
            generated = runner.choose(IdsTokenizer(), prompts)
        assert [adaptive.chosen_depth(policy, s.executed_loops) for s in scored] == generated, tau
        picked |= set(generated)
    assert picked == {2, 4}  # the taus separate rows (a first rung never stops)


def test_window_ladder_trace_runs_prompt_tokens_only(monkeypatch):
    """The trace's forwards see each prompt alone: per example, its prompt tokens once below
    the window and once per rung above it (no answer token, no padding), and the signal is
    what a forward of the prompt alone gives."""
    model = tiny_llama(4)
    examples = random_examples(6, model.config.vocab_size, seed=3)
    top = LoopSpec(window=(1, 3), loops=4, strategy="euler", decode_mode="full")
    seen: dict[str, list[int]] = {"prefix": [], "rung": []}
    real_prefix, real_rest = LoopedDecoder.prefix, LoopedDecoder.forward_from_prefix

    def prefix(self, input_ids, *args, **kwargs):
        seen["prefix"].append(input_ids.shape[0] * input_ids.shape[1])  # positions run
        return real_prefix(self, input_ids, *args, **kwargs)

    def rest(self, states, *args, **kwargs):
        seen["rung"].append(states.hidden.shape[0] * states.hidden.shape[1])
        return real_rest(self, states, *args, **kwargs)

    monkeypatch.setattr(LoopedDecoder, "prefix", prefix)
    monkeypatch.setattr(LoopedDecoder, "forward_from_prefix", rest)
    with one_thread():
        traced = score_trace(bind(model, WindowLadderTrace((1, 2, 4), top)), examples, 3)
    prompts = sorted(e.answer_start for e in examples)
    assert sorted(seen["prefix"]) == prompts  # the layers below the window: once per prompt
    assert sorted(seen["rung"]) == sorted(3 * prompts)  # each rung: the prompt's tokens
    whole = sum(len(e.input_ids) - 1 for e in examples)  # what the old trace ran per rung (before padding)
    assert sum(seen["rung"]) < 3 * whole
    monkeypatch.undo()
    example = examples[0]
    with one_thread(), torch.inference_mode():
        rungs = [bind(model, rung) for rung in WindowLadder((1, 2, 4), 0.0, top).rungs]
        prompt = torch.tensor([example.input_ids[: example.answer_start]])
        logits = [runner.head(runner.hidden(prompt)[0][:, -1]) for runner in rungs]  # base_forward, alone
    assert traced[0][1].signals["kl"] == float(kl_rows(logits[1], logits[0])[0])
    assert traced[0][2].signals["kl"] == float(kl_rows(logits[2], logits[1])[0])


def test_stop_steps_compare_in_float32_and_skip_missing_signals():
    signal = np.array([[np.nan, 0.5, 0.01], [np.nan, np.float32(0.01), 0.2], [np.nan, 0.3, 0.4]])
    # float32(0.01) < 0.01 in float64, not in float32 (torch's comparison): row 1 does not stop there
    assert stop_steps(signal, 0.01).tolist() == [2, 2, 2]
    assert stop_steps(signal, 0.35).tolist() == [2, 1, 1]
    assert stop_steps(signal, 0.0).tolist() == [2, 2, 2]  # tau 0 never stops early


def test_policies_name_their_trace():
    assert RungLadder((2, 4, 8), 0.01).trace == RungLadder((2, 4, 8), 0.3).trace == LadderTrace((2, 4, 8))
    assert HaltingWindow(SPEC, "kl", 0.1).trace == HaltingWindow(SPEC, "residual", 0.2).trace == WindowTrace(SPEC)
    assert LadderTrace((2, 4, 8)).id == "ladder-2-4-8-trace" and WindowTrace(SPEC).id == "euler-w2-3-K6-trace"
    assert WindowLadder((1, 2, 6), 0.1, SPEC).trace == WindowLadderTrace((1, 2, 6), SPEC)
    assert WindowLadderTrace((1, 2, 6), SPEC).id == "ladder-1-2-6-euler-w2-3-trace"
    assert WindowLadderTrace((1, 2, 6), SPEC) != LadderTrace((1, 2, 6))  # one file name each
    with pytest.raises(ValueError, match="halt"):
        WindowTrace(LoopSpec(window=(2, 3), loops=4, strategy="naive"))  # a strategy that cannot halt


@pytest.fixture(scope="module")
def looped_run(tmp_path_factory):
    ctx = looped_context(tmp_path_factory.mktemp("adaptive-looped"), nll_loops=(1, 2), sft_loops=(2,))
    section = AdaptiveConfig(k_max=3, ladder=[1, 2], rules=["residual", "kl"], taus=[0.0, 0.05, 0.2])
    ctx.config = ctx.config.model_copy(update={"adaptive": section})
    with one_thread():
        nll.run(ctx)
        adaptive.run(ctx)
    return ctx


def test_stage_computes_one_trace_per_model_for_every_rule_and_tau(looped_run):
    head, ladder = "euler-w2-3-K3-decode-full", "ladder-1-2-euler-w2-3-decode-full"
    cells = sorted(p.name for p in looped_run.cells_dir("adaptive").glob("*.csv"))
    # one cell per (model, split, trace): the calibration slice (heldout) and the test slice, both families
    assert cells == sorted(
        f"{m}-{split}-{t}-trace.csv"
        for m in ("base", "train2")
        for split in ("heldout", "test")
        for t in (head, ladder)
    )
    rows = read_csv(looped_run.results_path("adaptive.csv"))
    taus = ("0", "0.05", "0.2")
    for split in ("heldout", "test"):
        halting = [r["policy"] for r in rows if (r["model"], r["split"], r["kind"]) == ("base", split, "halting")]
        assert halting == [f"{head}-{rule}{tau}" for rule in ("residual", "kl") for tau in taus] + [
            f"{ladder}-kl{tau}" for tau in taus
        ]
    # the ladder's tau 0 is the fixed-depth sweep's top rung (K = 2), paying 1 + 2 loops
    test_rows = [r for r in rows if (r["model"], r["split"]) == ("base", "test")]
    top = next(r for r in test_rows if r["policy"] == f"{ladder}-kl0")
    fixed = next(r for r in test_rows if r["policy"] == "euler-w2-3-K2-decode-full")
    assert float(top["mean_loops"]) == 3.0 and top["nll_per_token"] == fixed["nll_per_token"]
    calibrated = read_csv(looped_run.results_path("adaptive_calibrated.csv"))
    # per (model, trace, rule): each family's rules are calibrated on their own signal
    assert {(r["model"], r["family"], r["rule"]) for r in calibrated} == {
        (m, f"{t}-trace", rule)
        for m in ("base", "train2")
        for t, rules in ((head, ("residual", "kl")), (ladder, ("kl",)))
        for rule in rules
    }


def test_stage_lookup_equals_the_runner_of_each_policy(looped_run):
    """The stage's rows are the old per-policy cells' results (scored here by each policy's runner)."""
    ctx = looped_run
    depths = read_csv(ctx.results_path("adaptive_depths.csv"))
    spec = ctx.model_specs()[0]
    model, tokenizer = ctx.load_model(spec), ctx.load_tokenizer(spec)
    encoded = [encode_example(tokenizer, e) for e in ctx.examples("nll_test")]
    for policy in adaptive.halting_policies(ctx):
        with one_thread():
            old = score_continuations(bind(model, policy), encoded, ctx.config.nll.batch_size)
        found = [float(r["executed_loops"]) for r in depths
                 if (r["model"], r["split"], r["policy"]) == (spec.name, "test", policy.id)]  # fmt: skip
        assert found == [s.executed_loops for s in old], policy.id


def test_stage_reuses_its_trace_when_only_taus_or_rules_change(looped_run):
    ctx = looped_run
    cell = ctx.cells_dir("adaptive") / "base-test-euler-w2-3-K3-decode-full-trace.csv"
    stamp = cell.stat().st_mtime_ns
    section = AdaptiveConfig(k_max=3, ladder=[1, 2], rules=["kl"], taus=[0.01])
    ctx.config = ctx.config.model_copy(update={"adaptive": section})
    with one_thread():
        adaptive.run(ctx)
    assert cell.stat().st_mtime_ns == stamp  # read back, not recomputed
    rows = read_csv(ctx.results_path("adaptive.csv"))
    halting = [r["policy"] for r in rows if (r["model"], r["split"], r["kind"]) == ("base", "test", "halting")]
    assert halting == ["euler-w2-3-K3-decode-full-kl0.01", "ladder-1-2-euler-w2-3-decode-full-kl0.01"]


def test_a_trace_cell_for_other_examples_is_recomputed(tmp_path):
    ctx = make_context(tmp_path, nll_loops=(1, 2), sft_loops=(2,))
    ctx.config = ctx.config.model_copy(update={"adaptive": AdaptiveConfig(ladder=[1, 2], taus=[0.0])})
    ids = [e.id for e in ctx.examples("nll_test")]
    with one_thread():
        nll.run(ctx)
        adaptive.run(ctx)
    cell = ctx.cells_dir("adaptive") / "base-test-ladder-1-2-trace.csv"
    trace = LadderTrace((1, 2))
    rows = adaptive.read_trace_cell(cell, ids, trace)
    assert rows is not None and len(rows) == 2 * len(ids)
    assert adaptive.read_trace_cell(cell, ids[1:], trace) is None
    assert adaptive.read_trace_cell(cell, ids, LadderTrace((1, 2, 4))) is None
    lines = cell.read_text().splitlines()
    cell.write_text("\n".join(lines[:-1]) + "\n")  # an example lost its last step
    assert adaptive.read_trace_cell(cell, ids, trace) is None
    cell.write_text("\n".join([*lines[:-1], lines[-1].rpartition(",")[0] + ","]) + "\n")  # its last KL blanked
    assert adaptive.read_trace_cell(cell, ids, trace) is None
    cell.write_text("\n".join(lines) + "\n")
    assert adaptive.read_trace_cell(cell, ids, trace) == rows


def test_a_non_finite_signal_is_refused_before_the_cell_is_written(tmp_path, monkeypatch):
    ctx = make_context(tmp_path, nll_loops=(1, 2), sft_loops=(2,))
    ctx.config = ctx.config.model_copy(update={"adaptive": AdaptiveConfig(ladder=[1, 2], taus=[0.0])})
    with one_thread():
        nll.run(ctx)
    real = adaptive.score_trace

    def poisoned(*args, **kwargs):
        traced = real(*args, **kwargs)
        traced[0][1].signals["kl"] = float("nan")
        return traced

    monkeypatch.setattr(adaptive, "score_trace", poisoned)
    with one_thread(), pytest.raises(StudyError, match="non-finite NLL or halting signal"):
        adaptive.run(ctx)
    assert not list(ctx.cells_dir("adaptive").glob("*-trace.csv"))


def test_a_window_ladder_rung_off_the_nll_grid_is_refused(looped_run):
    ctx = copy.copy(looped_run)  # nll.csv holds K = 1, 2 only
    ctx.config = ctx.config.model_copy(update={"adaptive": AdaptiveConfig(ladder=[1, 2, 4], taus=[0.0])})
    with one_thread(), pytest.raises(StudyError, match=r"rungs \[4\] are not on nll.inference_loops \[1, 2\]"):
        adaptive.run(ctx)
    assert not (ctx.cells_dir("adaptive") / "base-test-ladder-1-2-4-euler-w2-3-decode-full-trace.csv").exists()
