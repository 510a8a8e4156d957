"""accelerate helpers in a single process (the two-process behaviour is the e2e tests'):
every process's share is everything, errors surface as they are, children shed the
launcher's variables."""

from __future__ import annotations

import pytest

from study import distributed
from study.errors import StudyError


@pytest.fixture
def single(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in distributed.LAUNCHER_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_a_single_process_is_the_main_one_and_takes_every_item(single: None) -> None:
    assert not distributed.launched()
    assert distributed.num_processes() == 1 and distributed.process_index() == 0 and distributed.is_main()
    assert distributed.split(["a", "b", "c"]) == ["a", "b", "c"]


def test_work_runs_and_its_errors_surface_unchanged(single: None) -> None:
    assert distributed.run_everywhere(lambda: 41 + 1) == 42
    assert distributed.run_on_main(lambda: "main") == "main"

    def fail() -> None:
        raise StudyError("data.source: bad")

    with pytest.raises(StudyError, match="bad"):
        distributed.run_everywhere(fail)
    with pytest.raises(StudyError, match="bad"):
        distributed.settle(StudyError("data.source: bad"))
    distributed.settle(None)  # nothing failed: nothing raised


def test_launched_means_more_than_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert distributed.launched()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not distributed.launched()


def test_children_run_on_their_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """An SFT subprocess must not believe it is a rank of the launch that started it."""
    for name, value in (("WORLD_SIZE", "2"), ("RANK", "1"), ("MASTER_PORT", "29500"), ("ACCELERATE_MIXED", "no")):
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    env = distributed.child_environment({"CUDA_VISIBLE_DEVICES": "1"})
    assert not {"WORLD_SIZE", "RANK", "MASTER_PORT", "ACCELERATE_MIXED"} & set(env)
    assert env["HF_HUB_OFFLINE"] == "1" and env["CUDA_VISIBLE_DEVICES"] == "1"


def test_the_process_group_waits_hours_not_torchs_thirty_minutes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A process that finished its SFT models or cells waits at the next collective while the
    others run for longer than torch's 30-minute default on a CPU."""
    from datetime import timedelta

    import accelerate

    seen: dict = {}

    class Recorder:
        def __init__(self, cpu: bool, **kwargs) -> None:
            seen.update(kwargs, cpu=cpu)

    monkeypatch.setattr(accelerate, "PartialState", Recorder)
    distributed.state.cache_clear()
    try:
        distributed.state()
    finally:
        distributed.state.cache_clear()  # the next caller builds the real one
    assert seen["timeout"] >= timedelta(hours=6)
