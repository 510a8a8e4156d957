"""Cell groups of the sweep: the K cells of a looped decoder on one split share the layers
before the window, LoopFormer's schedules their common steps, and both give the same
cell files, byte for byte, as separate cells."""

from __future__ import annotations

from pathlib import Path

import pytest

from study import distributed
from study.config import SchedulesConfig
from study.looping.policies import StepSchedule, UniformLoops
from study.pipeline import RunContext
from study.stages import nll as nll_stage
from study.stages import sweep as sweep_module
from study.stages.sweep import Cell, Sweep
from tests.support.helpers_looped import looped_context
from tests.support.helpers_sweep import make_context, one_thread

LOOPS = (1, 2, 3)
OUTPUTS = ("nll.csv", "nll_summary.csv", "preferred_depth.csv")


def cell_bytes(ctx: RunContext) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(ctx.cells_dir("nll").iterdir())}


def result_bytes(ctx: RunContext) -> dict[str, bytes]:
    return {name: ctx.results_path(name).read_bytes() for name in OUTPUTS}


class Spy:
    """Records which policies each scorer call ran, then runs the real scorer."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.groups: list[list[str]] = []
        self.singles: list[str] = []
        group, single = nll_stage.score_continuations_group, nll_stage.score_continuations

        def spy_group(runners, *args, **kwargs):
            self.groups.append([runner.policy.id for runner in runners])
            return group(runners, *args, **kwargs)

        def spy_single(runner, *args, **kwargs):
            self.singles.append(runner.policy.id)
            return single(runner, *args, **kwargs)

        monkeypatch.setattr(nll_stage, "score_continuations_group", spy_group)
        monkeypatch.setattr(nll_stage, "score_continuations", spy_single)


@pytest.fixture(scope="module")
def separate(tmp_path_factory: pytest.TempPathFactory) -> RunContext:
    """The NLL stage with every cell computed alone (no policy shares a prefix)."""
    ctx = looped_context(tmp_path_factory.mktemp("separate"), nll_loops=LOOPS)
    with pytest.MonkeyPatch.context() as patch, one_thread():
        patch.setattr(sweep_module, "prefix_key", lambda policy: None)
        nll_stage.run(ctx)
    return ctx


def test_groups_write_the_cells_of_separate_cells_byte_for_byte(tmp_path: Path, separate, monkeypatch) -> None:
    ctx = looped_context(tmp_path, nll_loops=LOOPS)
    spy = Spy(monkeypatch)
    with one_thread():
        nll_stage.run(ctx)
    policies = [policy.id for policy in ctx.policies(list(LOOPS))]
    assert spy.groups == [policies] * 6 and spy.singles == []  # (base, train2) x (test, heldout, seen), all K at once
    cells = cell_bytes(ctx)
    assert len(cells) == 18 and cells == cell_bytes(separate)
    assert result_bytes(ctx) == result_bytes(separate)
    assert len({cells[name] for name in cells if name.startswith("base-test-")}) == len(LOOPS)  # K matters


def test_a_cut_group_recomputes_only_its_missing_cells(tmp_path: Path, separate, monkeypatch) -> None:
    ctx = looped_context(tmp_path, nll_loops=LOOPS)
    with one_thread():
        nll_stage.run(ctx)
    k1, k2, k3 = (policy.id for policy in ctx.policies(list(LOOPS)))
    spy = Spy(monkeypatch)
    nll_stage.cell_path(ctx, "base", "test", k1).unlink()
    nll_stage.cell_path(ctx, "base", "test", k3).unlink()
    nll_stage.cell_path(ctx, "train2", "heldout", k2).unlink()
    with one_thread():
        nll_stage.run(ctx)
    assert spy.groups == [[k1, k3]]  # the finished K2 is not recomputed
    assert spy.singles == [k2]  # a group's last missing cell is a cell alone
    assert cell_bytes(ctx) == cell_bytes(separate)
    assert result_bytes(ctx) == result_bytes(separate)


def test_groups_form_per_model_and_split_and_stay_in_one_process(tmp_path: Path, monkeypatch) -> None:
    ctx = looped_context(tmp_path, nll_loops=LOOPS)
    base, train = ctx.model_specs()
    windows = ctx.policies(list(LOOPS))
    loopformer = [UniformLoops(2), StepSchedule((0.5, 0.5))]  # a uniform depth shares nothing, one schedule is alone
    cells = [Cell(spec, p, split) for spec in (base, train) for split in ("test", "heldout") for p in windows]
    cells += [Cell(base, p, "test") for p in loopformer]

    def no_compute(cell, loaded, progress):
        raise AssertionError("not computed here")

    def compute_group(cells, loaded, progress):
        raise AssertionError("not computed here")

    sweep: Sweep[list[dict]] = Sweep(ctx, "nll", nll_stage.NLLStore({}), no_compute, compute_group=compute_group)
    units = sweep.groups(cells)
    assert [len(unit) for unit in units] == [3, 3, 3, 3, 1, 1]
    for unit in units:
        assert len({(cell.model, cell.split) for cell in unit}) == 1
    assert [unit[0].policy for unit in units[-2:]] == loopformer
    # without a group compute every cell is alone, as before
    alone: Sweep[list[dict]] = Sweep(ctx, "nll", nll_stage.NLLStore({}), no_compute)
    assert [len(unit) for unit in alone.groups(cells)] == [1] * 14

    # the processes of a run split the groups, never a group's cells
    shares: list[list] = []

    def split(items: list) -> list:
        shares.append(items)
        return []  # this process computes nothing

    monkeypatch.setattr(distributed, "split", split)
    monkeypatch.setattr(nll_stage.NLLStore, "read", lambda self, path, cell: None if not shares else [])
    sweep.run(cells)
    assert shares == [units]


def test_loopformer_schedules_form_one_group_with_the_cells_of_separate_cells(tmp_path: Path, monkeypatch) -> None:
    def schedules_run(folder: Path) -> RunContext:
        ctx = make_context(folder, nll_loops=(1, 2), sft_loops=(2,))
        ctx.config = ctx.config.model_copy(update={"schedules": SchedulesConfig(loops=3, granularity=5)})
        return ctx

    separate = schedules_run(tmp_path / "separate")
    with pytest.MonkeyPatch.context() as patch, one_thread():
        patch.setattr(sweep_module, "prefix_key", lambda policy: None)
        nll_stage.run(separate)
    grouped = schedules_run(tmp_path / "grouped")
    spy = Spy(monkeypatch)
    with one_thread():
        nll_stage.run(grouped)
    schedules = [policy.id for policy in nll_stage.schedule_policies(grouped)]
    assert len(schedules) == 7 and spy.groups == [schedules] * 2  # 6 in fifths + the uniform; one group per model
    assert cell_bytes(grouped) == cell_bytes(separate)
    assert grouped.results_path("schedules.csv").read_bytes() == separate.results_path("schedules.csv").read_bytes()
