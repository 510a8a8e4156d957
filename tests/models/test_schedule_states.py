"""LoopFormer schedules share their common prefixes of steps (``ScheduleStates``): the
hidden states equal each schedule's own forward bit for bit, with fewer steps run."""

from __future__ import annotations

import torch

from study.looping.policies import RungLadder, StepSchedule, UniformLoops
from study.looping.schedules import enumerate_schedules
from study.models.backbones import bind
from study.models.entries.loopformer import LadderRunner, LoopFormerRunner
from tests.support.helpers_sweep import one_thread, tiny_model


def test_shared_steps_equal_each_schedules_own_forward():
    model = tiny_model(seed=5)
    schedules = enumerate_schedules(3, 6)  # 10 schedules of 3 steps in sixths
    ids = torch.randint(0, 1000, (3, 17), generator=torch.Generator().manual_seed(0))
    runners = [bind(model, policy) for policy in schedules]
    with one_thread(), torch.inference_mode():
        states = runners[0].prefix(ids)
        for runner in runners:
            shared, executed = runner.hidden_from_prefix(states)
            alone, alone_executed = runner.hidden(ids)
            assert torch.equal(shared, alone), runner.policy.id
            assert torch.equal(executed, alone_executed)
    # first steps 1..4 sixths (4), first two steps (6 + ... ): distinct prefixes of 1, 2 and 3 steps
    assert states.steps_run == 4 + 10 + 10 < 3 * len(schedules)
    assert len(states.path) <= 4  # only the last schedule's path is kept


def test_only_schedules_share_steps():
    assert LoopFormerRunner.prefix_key(StepSchedule((0.5, 0.5))) == LoopFormerRunner.prefix_key(StepSchedule((1.0,)))
    assert LoopFormerRunner.prefix_key(StepSchedule((0.5, 0.5))) is not None
    assert LoopFormerRunner.prefix_key(UniformLoops(4)) is None
    assert LadderRunner.prefix_key(RungLadder((2, 4), 0.1)) is None


def test_a_uniform_depth_from_shared_states_equals_its_forward():
    model = tiny_model(seed=6)
    ids = torch.randint(0, 1000, (2, 9), generator=torch.Generator().manual_seed(1))
    with one_thread(), torch.inference_mode():
        states = bind(model, StepSchedule((0.25,) * 4)).prefix(ids)
        uniform = bind(model, UniformLoops(4))
        assert torch.equal(uniform.hidden_from_prefix(states)[0], uniform.hidden(ids)[0])
