"""Adaptive stage: fixed or per-input depth? Halting policies against the best fixed
depth and the per-example oracle, on the fixed-depth sweep's examples, with their
thresholds calibrated on one slice and reported on another.

Inputs: ``results/nll.csv`` (the NLL stage: every example's summed NLL at every fixed
depth of ``nll.inference_loops``, every split) and the ``adaptive`` config section.
The halting policies of one family share a *trace* (``study.looping.policies.HaltingTrace``):
every step they may stop at (each rung of a ladder; each step of a window's K_max-step
trajectory) with its NLL, its cost and every rule's halting signal. A model may have
several families; each (model, trace, rule) is handled alike. The trace is one cell per
(model, trace, split) on the ``heldout`` slice (train questions outside every SFT subset:
the calibration set) and the ``test`` slice (``results/cells/adaptive/``, e.g.
``base-test-ladder-2-4-8-16-trace.csv``: one row per example and step), computed by the
NLL stage's batching through the one sweep-cell loop (resumes, fingerprinted by its
examples and trace id; neutral to taus, rules and targets). A looped decoder's ladder
trace computes only each rung's cost and signal (prompt-only forwards) and copies each
rung's NLL from ``nll.csv`` (``HaltingTrace.sweep_steps``: a rung off
``nll.inference_loops`` is refused). Each (rule, tau) is then a
lookup (``study.looping.halting``) equal, bit for bit, to running that policy's own
runner (``tests/stages/test_adaptive_trace.py``). The taus tried per (model, trace, rule)
are ``adaptive.taus`` and the ``adaptive.tau_quantiles`` of that rule's signal on heldout
(``study.looping.calibration``). Outputs:

- ``adaptive.csv``: per (model, split) every fixed depth (kind ``fixed``), ``best_fixed``,
  an ``oracle`` per family (the fixed depths: each example at its best depth; a halting
  family: each example at its best step of the trace) and, on heldout and test, every
  tau tried: mean executed loops, NLL per token with its bootstrap CI, the paired gap to
  the best fixed depth and to the best fixed depth that fits the same mean loops (equal
  compute), each with a paired-bootstrap CI, and the oracle's NLL at that budget. Every
  row says how it was chosen (``chosen_on``): best fixed and equal compute in hindsight
  on the split shown, so these rows are many tries, not one claim;
- ``adaptive_calibrated.csv``: per (model, trace, rule) and target (``within_eps``: the
  cheapest tau within ``adaptive.epsilon`` of the best fixed depth; ``equal_compute:<M>``:
  the mean loops of each fixed depth in the family's cost range), the tau chosen on
  heldout and its one evaluation on test against the fixed depth chosen on heldout;
- ``oracle_frontier.csv``: the exact budgeted oracle (``study.looping.oracle``) per
  (model, split): the lowest NLL any per-example depth choice reaches at each mean-loops
  budget;
- ``adaptive_depths.csv``: per example, the depth each selector chose (oracle: its best
  fixed depth; a halting policy: the depth it stopped at) and the loops it cost.

The report stage draws its figures (``study.report.figures.adaptive_*``) and sections.
"""

from __future__ import annotations

import math
from itertools import accumulate
from pathlib import Path
from typing import Any, cast

import numpy as np

from study.io import atomic_write_csv, read_csv
from study.looping.calibration import (
    Choice,
    Point,
    candidate_taus,
    choose_equal_compute,
    choose_within_epsilon,
    depths_in_range,
    fixed_at_equal_compute,
    oracle_gap_closed,
    quantile_taus,
    tau_grid,
)
from study.looping.halting import Outcome, Trace, halting_outcome
from study.looping.oracle import best_per_example, oracle_at_budget, oracle_frontier
from study.looping.policies import HALTING_RULES, DepthPolicy, HaltingTrace, RungLadder
from study.pipeline import RunContext, StudyError
from study.scoring import score_trace
from study.stages.nll import SPLITS
from study.stages.stage import Stage
from study.stages.sweep import Cell, Loaded, Sweep
from study.stats import ci_cells, paired_gap_ci, ratio_ci
from study.tasks.gsm8k import encode_example

ADAPTIVE_COLUMNS = (
    "model", "split", "policy", "kind", "family", "detail", "chosen_on", "tau", "mean_loops", "nll_per_token",
    "ci_low", "ci_high",
    "gap_to_best_fixed", "gap_ci_low", "gap_ci_high", "equal_compute_fixed", "gap_to_equal_compute",
    "equal_ci_low", "equal_ci_high", "oracle_nll_at_budget",
)  # fmt: skip
FRONTIER_COLUMNS = ("model", "split", "mean_loops", "nll_per_token")
DEPTH_COLUMNS = ("model", "split", "policy", "example_id", "chosen_depth", "executed_loops")
CALIBRATED_COLUMNS = (
    "model", "family", "rule", "target", "target_met", "tau", "policy", "calibration_split", "split",
    "heldout_mean_loops", "heldout_nll_per_token", "mean_loops", "nll_per_token", "ci_low", "ci_high",
    "equal_compute_fixed", "gap_to_fixed_at_equal_compute", "gap_ci_low", "gap_ci_high", "oracle_nll_at_budget",
    "oracle_gap_closed",
)  # fmt: skip
# the halting traces are scored on the calibration slice (taus are chosen there) and the test slice
CALIBRATION_SPLIT, REPORT_SPLIT = HALTING_SPLITS = ("heldout", "test")
FIXED_FAMILY = "fixed"  # the family column of the fixed depths (a halting family is its trace id)
ORACLE = "per-example oracle (hindsight)"  # how an oracle row was chosen
# a trace cell: one row per (example, step); a rule's column is empty where the trace has no
# signal (a ladder's first rung) or does not record that rule
TRACE_COLUMNS = (
    "model", "split", "policy", "example_id", "step", "depth", "executed_loops", "answer_tokens", "nll_sum",
    "final_tokens", "final_nll_sum", *HALTING_RULES,
)  # fmt: skip


def halting_policies(ctx: RunContext) -> list[DepthPolicy]:
    """The config's halting policies at its fixed ``taus``, one per (rule, tau)."""
    section = ctx.config.adaptive
    if section is None:
        return []
    return ctx.backbone.halting_policies(ctx.loop_family, section)


def rule_of(policy: DepthPolicy) -> str:
    return cast("tuple[str, float]", policy.halting)[0]  # a halting policy's (rule, tau)


def policy_at(ctx: RunContext, trace: HaltingTrace, rule: str, tau: float) -> DepthPolicy:
    """The backbone's halting policy of ``trace`` and ``rule`` at ``tau`` (any family: the
    backbone builds it, the stage never assumes its class)."""
    section = ctx.config.adaptive
    assert section is not None  # only called for the section's families
    made = ctx.backbone.halting_policies(ctx.loop_family, section.model_copy(update={"taus": [tau]}))
    found = [p for p in made if trace_of(p) == trace and rule_of(p) == rule]
    assert len(found) == 1, (trace.id, rule, tau)
    return found[0]


def halting_families(ctx: RunContext) -> list[tuple[HaltingTrace, str]]:
    """Each (trace, rule) the section's halting policies come in, in the backbone's order:
    one trace may serve several rules; a model may have several traces."""
    section = ctx.config.adaptive
    if section is None:
        return []
    probes = ctx.backbone.halting_policies(ctx.loop_family, section.model_copy(update={"taus": [0.0]}))
    return list(dict.fromkeys((trace_of(p), rule_of(p)) for p in probes))


def tau_grid_of(ctx: RunContext, heldout: Trace, rule: str) -> list[tuple[float, str]]:
    """The taus tried for one (model, trace, rule), each with where it came from: the
    config's ``taus`` and the ``tau_quantiles`` of the rule's signal on the heldout trace."""
    section = ctx.config.adaptive
    assert section is not None
    levels = section.tau_quantiles
    from_quantiles = quantile_taus(heldout.signals[rule], levels) if levels else []
    configured = set(section.taus)

    def source(tau: float) -> str:
        if tau in configured:
            return "config taus"
        return "heldout quantile" if tau in from_quantiles else "never stop"

    return [(tau, source(tau)) for tau in tau_grid(section.taus, from_quantiles)]


def trace_of(policy: DepthPolicy) -> HaltingTrace:
    """The trace a halting policy is read off (a trace is its own)."""
    trace = policy if isinstance(policy, HaltingTrace) else getattr(policy, "trace", None)
    if not isinstance(trace, HaltingTrace):
        raise StudyError(f"adaptive: policy {policy.id} is not a halting policy")
    return trace


def chosen_depth(policy: DepthPolicy, executed: float) -> float:
    """The depth a halting policy stopped at, from the loops it cost: for a ladder the rung
    whose prefix sum is the cost, for a looped window the loops themselves."""
    if isinstance(policy, RungLadder):
        sums = list(accumulate(policy.ladder))
        return float(policy.ladder[sums.index(round(executed))])
    return float(executed)


def fixed_depth_table(ctx: RunContext, name: str, split: str, example_ids: list[int]):
    """(policy ids, loops [D], summed NLL [N, D], tokens [N]) of one model and split from nll.csv."""
    path = ctx.results_path("nll.csv")
    if not path.is_file():
        raise StudyError(f"adaptive: {path} is missing; run the nll stage first")
    rows = [r for r in read_csv(path) if r["model"] == name and r["split"] == split]
    policies = sorted({r["policy"] for r in rows}, key=lambda p: int(next(r for r in rows if r["policy"] == p)[
        "inference_loops"]))  # fmt: skip
    by = {(r["policy"], int(r["example_id"])): r for r in rows}
    try:
        nll = np.array([[float(by[p, i]["nll_sum"]) for p in policies] for i in example_ids])
        tokens = np.array([int(by[policies[0], i]["answer_tokens"]) for i in example_ids])
        loops = np.array([int(by[p, example_ids[0]]["inference_loops"]) for p in policies])
    except (KeyError, IndexError):
        problem = f"lacks {name}/{split} examples of this config; rerun the nll stage"
        raise StudyError(f"adaptive: {path} {problem}") from None
    if not np.all(np.isfinite(nll)):
        raise StudyError(f"adaptive: {path} holds non-finite NLL for {name}/{split}; refusing to pick depths")
    return policies, loops, nll, tokens


class TraceStore:
    """One CSV per trace cell (``TRACE_COLUMNS``)."""

    suffix = ".csv"

    def __init__(self, example_ids: dict[str, list[int]]) -> None:
        self.example_ids = example_ids  # per split

    def read(self, path: Path, cell: Cell) -> list[dict] | None:
        return read_trace_cell(path, self.example_ids[str(cell.split)], trace_of(cell.policy))

    def write(self, path: Path, cell: Cell, rows: list[dict]) -> None:
        atomic_write_csv(path, rows, TRACE_COLUMNS)


def read_trace_cell(path: Path, example_ids: list[int], policy: HaltingTrace) -> list[dict] | None:
    """A finished trace cell's rows (typed; a missing signal is None), or None when missing,
    unreadable, for another trace or for other examples, when not every example has the
    same steps 0..S-1 in order, or a signal the trace records is missing at a step."""
    if not path.is_file():
        return None
    try:
        rows: list[dict[str, Any]] = [
            {
                **{key: r[key] for key in ("model", "split", "policy")},
                **{key: int(r[key]) for key in ("example_id", "step", "depth", "answer_tokens", "final_tokens")},
                **{key: float(r[key]) for key in ("executed_loops", "nll_sum", "final_nll_sum")},
                **{rule: None if r[rule] == "" else float(r[rule]) for rule in HALTING_RULES},
            }
            for r in read_csv(path)
        ]
    except (KeyError, ValueError, TypeError):
        return None  # unreadable: recompute
    if not rows or any(r["policy"] != policy.id for r in rows):
        return None
    if any(r[rule] is None for r in rows if r["step"] >= policy.first_signal for rule in policy.signals):
        return None
    steps = 1 + max(r["step"] for r in rows)
    expected = [(i, step) for i in example_ids for step in range(steps)]
    return rows if [(r["example_id"], r["step"]) for r in rows] == expected else None


def check_sweep_steps(ctx: RunContext, trace: HaltingTrace) -> None:
    """Refuse a trace that leaves its NLL to the fixed-depth sweep at a depth the sweep
    does not score (a looped decoder's ladder rung off ``nll.inference_loops``)."""
    steps = trace.sweep_steps
    grid = ctx.config.nll.inference_loops
    off = [] if steps is None else [p.inference_loops for p in steps if p.inference_loops not in grid]
    if off:
        raise StudyError(
            f"adaptive: {trace.id}: rungs {off} are not on nll.inference_loops {grid}; "
            "a rung's NLL is the fixed-depth sweep's (add them there)"
        )


SWEEP_SCORES = ("answer_tokens", "nll_sum", "final_tokens", "final_nll_sum")  # what a rung reads from nll.csv


def sweep_scores(ctx: RunContext, name: str, split: str, trace: HaltingTrace, example_ids: list[int]) -> dict:
    """(depth, example id) -> its ``SWEEP_SCORES`` in nll.csv, for a trace whose steps are
    fixed depths of the sweep (``HaltingTrace.sweep_steps``); empty for one that scores
    its steps itself."""
    steps = trace.sweep_steps
    if steps is None:
        return {}
    check_sweep_steps(ctx, trace)
    path = ctx.results_path("nll.csv")
    if not path.is_file():
        raise StudyError(f"adaptive: {path} is missing; run the nll stage first")
    by = {(r["policy"], int(r["example_id"])): r for r in read_csv(path) if r["model"] == name and r["split"] == split}
    found = {}
    for policy in steps:
        for i in example_ids:
            row = by.get((policy.id, i))
            if row is None:
                raise StudyError(
                    f"adaptive: {path} lacks {name}/{split} example {i} at {policy.id}; rerun the nll stage"
                )
            found[policy.inference_loops, i] = {
                "answer_tokens": int(row["answer_tokens"]), "nll_sum": float(row["nll_sum"]),
                "final_tokens": int(row["final_tokens"]), "final_nll_sum": float(row["final_nll_sum"]),
            }  # fmt: skip
    return found


def trace_rows(
    cell: Cell, loaded: Loaded, examples: list, batch_size: int, progress=None, sweep: dict | None = None
) -> list[dict]:
    """A trace cell's rows, refusing (before anything is written) a non-finite NLL or signal.
    ``sweep``: (depth, example id) -> scores of the steps the trace leaves to the sweep."""
    split = cell.split
    assert split is not None  # a trace cell is scored on its slice
    encoded = loaded.cache.get(split)
    if encoded is None:  # each slice is encoded once per model
        encoded = loaded.cache[split] = [encode_example(loaded.tokenizer, e) for e in examples]
    rows = []
    for steps in score_trace(loaded.runner(cell.policy), encoded, batch_size, progress=progress):
        for found in steps:
            s = found.score
            scores = (sweep or {})[found.depth, found.example_id] if s is None else {
                "answer_tokens": s.answer_tokens, "nll_sum": s.nll_sum,
                "final_tokens": s.final_tokens, "final_nll_sum": s.final_nll_sum,
            }  # fmt: skip
            values = [scores["nll_sum"], scores["final_nll_sum"], *(v for v in found.signals.values() if v is not None)]
            if not all(math.isfinite(v) for v in values):
                where = f"{cell.model.name}/{cell.policy.id} example {found.example_id} step {found.step}"
                raise StudyError(f"adaptive: {where}: non-finite NLL or halting signal; refusing to write it")
            rows.append(
                {
                    "model": cell.model.name, "split": cell.split, "policy": cell.policy.id,
                    "example_id": found.example_id, "step": found.step, "depth": found.depth,
                    "executed_loops": found.executed_loops, **scores,
                    **{rule: "" if found.signals.get(rule) is None else found.signals[rule] for rule in HALTING_RULES},
                }
            )  # fmt: skip
    return rows


def as_trace(rows: list[dict], example_ids: list[int], policy: HaltingTrace) -> Trace:
    """A trace cell's rows as arrays (``study.looping.halting.Trace``)."""
    steps = len(rows) // len(example_ids)

    def grid(key: str) -> np.ndarray:
        return np.array([math.nan if r[key] is None else r[key] for r in rows], dtype=float).reshape(-1, steps)

    signals = {rule: grid(rule).astype(np.float32) for rule in policy.signals}
    return Trace(example_ids, grid("executed_loops"), grid("nll_sum"), signals)


def run(ctx: RunContext) -> None:
    config = ctx.config.nll
    examples = {split: ctx.examples(subset) for split, subset in SPLITS.items()}
    example_ids = {split: [e.id for e in subset] for split, subset in examples.items()}
    specs = ctx.model_specs()
    for spec in specs:  # fail before any cell is computed when the sweep is missing or stale
        for split in SPLITS:
            fixed_depth_table(ctx, spec.name, split, example_ids[split])
    families = halting_families(ctx)
    traces = list(dict.fromkeys(trace for trace, _ in families))
    for trace in traces:
        check_sweep_steps(ctx, trace)
    cells = [Cell(spec, trace, split) for spec in specs for trace in traces for split in HALTING_SPLITS]

    def compute(cell: Cell, loaded: Loaded, progress) -> list[dict]:
        assert cell.split is not None  # a trace cell is scored on its slice
        trace = trace_of(cell.policy)
        sweep = sweep_scores(ctx, cell.model.name, cell.split, trace, example_ids[cell.split])
        return trace_rows(cell, loaded, examples[cell.split], config.batch_size, progress, sweep)

    def describe(cell: Cell, rows: list[dict]) -> str:
        last = [r for r in rows if r["step"] == max(row["step"] for row in rows)]
        nll = sum(r["nll_sum"] for r in last) / sum(r["answer_tokens"] for r in last)
        return f"{len(rows) // len(last)} steps, {nll:.4f} nats/token at the last ({last[0]['executed_loops']:g} loops)"

    store = TraceStore({split: example_ids[split] for split in HALTING_SPLITS})
    values = Sweep(ctx, "adaptive", store, compute, describe).run(cells)
    if values is None:  # another process aggregates
        return
    traced = {
        (c.model.name, c.policy.id, str(c.split)): as_trace(rows, example_ids[str(c.split)], trace_of(c.policy))
        for c, rows in values.items()
    }
    rows, frontier_rows, depth_rows, calibrated_rows = [], [], [], []
    for spec in specs:
        halting: dict[str, list[tuple[DepthPolicy, Outcome, str]]] = {split: [] for split in HALTING_SPLITS}
        for trace, rule in families:
            for tau, source in tau_grid_of(ctx, traced[spec.name, trace.id, CALIBRATION_SPLIT], rule):
                policy = policy_at(ctx, trace, rule, tau)
                for split in HALTING_SPLITS:
                    halting[split].append(
                        (policy, halting_outcome(traced[spec.name, trace.id, split], rule, tau), source)
                    )
        for split in SPLITS:
            oracles = (
                [(trace, traced[spec.name, trace.id, split]) for trace in traces] if split in HALTING_SPLITS else []
            )
            summary = summarize(ctx, spec.name, split, example_ids[split], halting.get(split, []), oracles)
            rows += summary.rows
            frontier_rows += summary.frontier
            depth_rows += summary.depths
        calibrated_rows += calibrated(ctx, spec.name, families, traced, example_ids)
    atomic_write_csv(ctx.results_path("adaptive.csv"), rows, ADAPTIVE_COLUMNS)
    atomic_write_csv(ctx.results_path("oracle_frontier.csv"), frontier_rows, FRONTIER_COLUMNS)
    atomic_write_csv(ctx.results_path("adaptive_depths.csv"), depth_rows, DEPTH_COLUMNS)
    atomic_write_csv(ctx.results_path("adaptive_calibrated.csv"), calibrated_rows, CALIBRATED_COLUMNS)


def calibrated(
    ctx: RunContext,
    name: str,
    families: list[tuple[HaltingTrace, str]],
    traced: dict[tuple[str, str, str], Trace],
    example_ids: dict[str, list[int]],
) -> list[dict]:
    """One model's rows of adaptive_calibrated.csv: per (trace, rule) and target, the tau
    chosen on the heldout slice (every distinct outcome of the rule there, exactly) and its
    one evaluation on the test slice. The fixed depth it is compared with is chosen on
    heldout too: nothing here is picked by a test number."""
    section = ctx.config.adaptive
    if section is None or not families:  # no halting policy (e.g. no adaptive section): nothing to calibrate
        return []
    resamples, confidence, seed = ctx.config.nll.bootstrap_resamples, ctx.config.nll.confidence, ctx.config.seed
    policies, held_loops, held_nll, held_tokens = fixed_depth_table(ctx, name, CALIBRATION_SPLIT,
                                                                    example_ids[CALIBRATION_SPLIT])  # fmt: skip
    test_policies, test_loops, test_nll, test_tokens = fixed_depth_table(ctx, name, REPORT_SPLIT,
                                                                         example_ids[REPORT_SPLIT])  # fmt: skip
    loops = [float(v) for v in held_loops]
    held_fixed = [float(v) for v in held_nll.sum(0) / held_tokens.sum()]
    frontier = oracle_frontier(test_nll, test_tokens, test_loops)
    rows = []
    for trace, rule in families:
        heldout, test = traced[name, trace.id, CALIBRATION_SPLIT], traced[name, trace.id, REPORT_SPLIT]
        points = []
        for tau in candidate_taus(heldout.signals[rule]):
            outcome = halting_outcome(heldout, rule, tau)
            points.append(
                Point(tau, float(outcome.executed_loops.mean()), float(outcome.nll_sum.sum() / held_tokens.sum()))
            )
        targets: list[tuple[str, Choice, int | None]] = [
            ("within_eps", choose_within_epsilon(points, min(held_fixed), section.epsilon), None)
        ]
        targets += [(f"equal_compute:{policies[d]}", choose_equal_compute(points, loops[d]), d)
                    for d in depths_in_range(points, loops)]  # fmt: skip
        for target, choice, fixed in targets:
            if fixed is None:  # within_eps: the best fixed depth on heldout that its heldout mean loops afford
                fixed = fixed_at_equal_compute(loops, held_fixed, choice.point.mean_loops)
            outcome = halting_outcome(test, rule, choice.point.tau)
            per_example, mean_loops = outcome.nll_sum, float(outcome.executed_loops.mean())
            nll_per_token = float(per_example.sum() / test_tokens.sum())
            ci = ci_cells(*ratio_ci(per_example, test_tokens, resamples, confidence, seed))
            oracle = oracle_at_budget(frontier, mean_loops).nll_per_token
            gap: tuple[float | str, ...] = ("", "", "")
            closed: float | None = None
            if fixed is not None:
                against = test_nll[:, test_policies.index(policies[fixed])]
                point, *gap_ci = paired_gap_ci(per_example, against, test_tokens, resamples, confidence, seed)
                gap = (point, *ci_cells(*gap_ci))
                closed = oracle_gap_closed(float(against.sum() / test_tokens.sum()), nll_per_token, oracle)
            rows.append(
                {
                    "model": name, "family": trace.id, "rule": rule, "target": target, "target_met": choice.met,
                    "tau": choice.point.tau, "policy": policy_at(ctx, trace, rule, choice.point.tau).id,
                    "calibration_split": CALIBRATION_SPLIT, "split": REPORT_SPLIT,
                    "heldout_mean_loops": choice.point.mean_loops, "heldout_nll_per_token": choice.point.nll_per_token,
                    "mean_loops": mean_loops, "nll_per_token": nll_per_token, "ci_low": ci[0], "ci_high": ci[1],
                    "equal_compute_fixed": "" if fixed is None else policies[fixed],
                    "gap_to_fixed_at_equal_compute": gap[0], "gap_ci_low": gap[1], "gap_ci_high": gap[2],
                    "oracle_nll_at_budget": oracle, "oracle_gap_closed": "" if closed is None else closed,
                }
            )  # fmt: skip
    return rows


class Summary:
    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.frontier: list[dict] = []
        self.depths: list[dict] = []


def summarize(
    ctx: RunContext,
    name: str,
    split: str,
    ids: list[int],
    halting: list[tuple[DepthPolicy, Outcome, str]],
    oracles: list[tuple[HaltingTrace, Trace]],
) -> Summary:
    """One (model, split)'s rows of the three results files: ``halting`` holds each policy's
    outcome on this split and how its tau was chosen, ``oracles`` each halting family's trace."""
    resamples, confidence, seed = ctx.config.nll.bootstrap_resamples, ctx.config.nll.confidence, ctx.config.seed
    policies, loops, nll, tokens = fixed_depth_table(ctx, name, split, ids)
    fixed_nll = nll.sum(0) / tokens.sum()
    best = int(np.argmin(fixed_nll))
    frontier = oracle_frontier(nll, tokens, loops)
    out = Summary()
    out.frontier = [{"model": name, "split": split, "mean_loops": p.mean_loops, "nll_per_token": p.nll_per_token}
                    for p in frontier]  # fmt: skip
    hindsight = f"{split} (hindsight)"

    def row(policy: str, kind: str, family: str, detail: str, chosen_on: str, tau: float | None,
            mean_loops: float, per_example: np.ndarray) -> None:  # fmt: skip
        # one example has no interval: empty CI cells (study.stats.ci_cells), never NaN
        ci = ci_cells(*ratio_ci(per_example, tokens, resamples, confidence, seed))
        point, *gap_ci = paired_gap_ci(per_example, nll[:, best], tokens, resamples, confidence, seed)
        gap = (point, *ci_cells(*gap_ci))
        equal = fixed_at_equal_compute([float(v) for v in loops], [float(v) for v in fixed_nll], mean_loops)
        equal_gap: tuple[float | str, ...] = ("", "", "")
        if equal is not None:
            point, *equal_ci = paired_gap_ci(per_example, nll[:, equal], tokens, resamples, confidence, seed)
            equal_gap = (point, *ci_cells(*equal_ci))
        out.rows.append(
            {
                "model": name, "split": split, "policy": policy, "kind": kind, "family": family, "detail": detail,
                "chosen_on": chosen_on, "tau": "" if tau is None else tau, "mean_loops": mean_loops,
                "nll_per_token": float(per_example.sum() / tokens.sum()), "ci_low": ci[0], "ci_high": ci[1],
                "gap_to_best_fixed": gap[0], "gap_ci_low": gap[1], "gap_ci_high": gap[2],
                "equal_compute_fixed": "" if equal is None else policies[equal],
                "gap_to_equal_compute": equal_gap[0], "equal_ci_low": equal_gap[1], "equal_ci_high": equal_gap[2],
                "oracle_nll_at_budget": oracle_at_budget(frontier, mean_loops).nll_per_token,
            }
        )  # fmt: skip

    for d, policy in enumerate(policies):
        row(policy, "fixed", FIXED_FAMILY, policy, "grid", None, float(loops[d]), nll[:, d])
    row("best_fixed", "best_fixed", FIXED_FAMILY, policies[best], hindsight, None, float(loops[best]), nll[:, best])
    oracle = best_per_example(nll, tokens, loops)
    rows_index = np.arange(len(ids))
    row("oracle", "oracle", FIXED_FAMILY, "each example at its best fixed depth (bounds the fixed-depth family)",
        ORACLE, None, oracle.mean_loops, nll[rows_index, oracle.depth_index])  # fmt: skip
    for i, example_id in enumerate(ids):
        depth = int(loops[oracle.depth_index[i]])
        out.depths.append({"model": name, "split": split, "policy": "oracle", "example_id": example_id,
                           "chosen_depth": depth, "executed_loops": depth})  # fmt: skip
    for trace, arrays in oracles:
        # the cheapest best step: steps cost more the later they are, argmin takes the first
        step = np.argmin(arrays.nll_sum, axis=1)
        detail = f"each example at its best step of {trace.id} (bounds the {trace.id} halting family)"
        row(f"oracle:{trace.id}", "oracle", trace.id, detail, ORACLE, None,
            float(arrays.cost[rows_index, step].mean()), arrays.nll_sum[rows_index, step])  # fmt: skip
    for policy, outcome, source in halting:
        per_example, executed = outcome.nll_sum, outcome.executed_loops
        if not (np.all(np.isfinite(per_example)) and np.all(np.isfinite(executed))):
            raise StudyError(f"adaptive: cell {name}/{policy.id} holds non-finite values; refusing to summarize")
        rule, tau = cast("tuple[str, float]", policy.halting)  # a halting policy's (rule, tau)
        chosen_on = f"grid ({source}); equal_compute_fixed: {hindsight}"
        row(policy.id, "halting", trace_of(policy).id, rule, chosen_on, float(tau), float(executed.mean()),
            per_example)  # fmt: skip
        for example_id, cost in zip(ids, executed, strict=True):
            out.depths.append(
                {
                    "model": name,
                    "split": split,
                    "policy": policy.id,
                    "example_id": example_id,
                    "chosen_depth": chosen_depth(policy, float(cost)),
                    "executed_loops": float(cost),
                }
            )
    for r in out.rows:  # NaN is an error, never a number in the results
        for key in ("mean_loops", "nll_per_token", "gap_to_best_fixed"):
            if not math.isfinite(r[key]):
                raise StudyError(f"adaptive: {name}/{split}/{r['policy']}: {key} is not finite")
    return out


STAGE = Stage(
    name="adaptive",
    run=run,
    sections=("seed", "replicates", "model", "data", "sft", "nll", "looping", "adaptive", "sweep_dtype"),
    # GSM8K's files (Stage.splits are dataset files): nll.csv of every slice; its trace cells score
    # the heldout slice (train questions outside every SFT subset) and the test slice
    splits=("train", "test"),
    needs_sft=True,
    outputs=(
        "results/adaptive.csv",
        "results/oracle_frontier.csv",
        "results/adaptive_depths.csv",
        "results/adaptive_calibrated.csv",
    ),
    # one trace cell serves every tau, rule and target (study.looping.halting, study.looping.calibration)
    cell_neutral=("taus", "tau_quantiles", "epsilon", "rules"),
)
