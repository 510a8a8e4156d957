"""``torch_threads: auto``: 2 threads on an idle machine, 1 on a loaded one, recorded in the manifest."""

from __future__ import annotations

import pytest
import torch

from study import threads
from study.config import ConfigError, load_config
from study.manifest import Manifest
from study.pipeline import configure_torch


@pytest.mark.parametrize(
    ("load", "cpus", "expected"),
    [(0.0, 2, 2), (0.49, 2, 2), (0.5, 2, 2), (0.51, 2, 1), (3.0, 2, 1), (0.0, 1, 1), (2.4, 4, 2), (2.6, 4, 1)],
)
def test_auto_uses_two_threads_only_when_at_least_one_and_a_half_cores_are_free(load, cpus, expected) -> None:
    choice = threads.choose_threads("auto", load_1min=load, cpus=cpus)
    assert choice.threads == expected
    assert choice.load_1min == load and choice.cpu_count == cpus
    assert ("idle" if expected == 2 else "loaded") in choice.rule


def test_a_number_or_null_is_used_as_given() -> None:
    assert threads.choose_threads(3).threads == 3
    assert threads.choose_threads(None).threads is None  # torch's default, left alone
    assert threads.choose_threads(1).load_1min is None  # the load is only read for auto


def test_auto_reads_the_load_average(monkeypatch) -> None:
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (7.5, 5.0, 3.0))
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 2)
    choice = threads.choose_threads("auto")
    assert (choice.threads, choice.load_1min, choice.cpu_count) == (1, 7.5, 2)


def test_configure_torch_sets_and_the_manifest_records_what_auto_chose(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (0.2, 0.2, 0.2))
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 2)
    config = load_config("smoke", ["torch_threads=auto"])
    previous = torch.get_num_threads()
    try:
        configure_torch(config)
        assert torch.get_num_threads() == 2
        manifest = Manifest(tmp_path / "manifest.json")
        manifest.start(config, torch.device("cpu"), ["run_study.py"], skip_checks=False)
    finally:
        torch.set_num_threads(previous)
    hardware = manifest.data["hardware"]
    assert hardware["torch_threads"] == 2
    assert hardware["torch_threads_choice"]["setting"] == "auto"
    assert hardware["torch_threads_choice"]["threads"] == 2 and hardware["torch_threads_choice"]["load_1min"] == 0.2
    # threads never change a run's identity: auto and 1 are the same run
    assert config.identity_hash() == load_config("smoke").identity_hash()


def test_a_bad_thread_setting_is_one_line() -> None:
    with pytest.raises(ConfigError, match=r"torch_threads: expected a positive integer, 'auto' or null \(got 'two'\)"):
        load_config("smoke", ["torch_threads=two"])
    with pytest.raises(ConfigError, match=r"torch_threads: expected .* \(got 0\)"):
        load_config("smoke", ["torch_threads=0"])
