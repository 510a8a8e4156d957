"""Output fingerprints (study.outputs) and the accelerate rank check of the run lock: fast."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from study import outputs
from study.errors import RunLockError, StudyError
from study.io import atomic_write_json, atomic_write_text
from study.lock import RunLock, check_held


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every file study.outputs reads to hash it, in order."""
    calls: list[Path] = []
    real = outputs.sha256_file

    def counting(path: Path) -> str:
        calls.append(Path(path))
        return real(path)

    monkeypatch.setattr(outputs, "sha256_file", counting)
    return calls


def a_finished_stage(run_dir: Path) -> outputs.Fingerprints:
    """A stage 'nll' that wrote a results file (atomic writer) and a model file (plain write)."""
    atomic_write_text(run_dir / "results" / "nll.csv", "model,nll\nbase,1.5\n")
    model = run_dir / "models" / "train4" / "model.safetensors"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"weights" * 100)
    recorded = outputs.fingerprint_outputs(run_dir, ("results/nll.csv", "models/train*"))
    atomic_write_json(outputs.marker_path(run_dir, "nll"), {"stage": "nll", "outputs": recorded})
    return recorded


def test_recording_hashes_only_files_not_written_by_the_atomic_writers(tmp_path: Path, hashed: list[Path]) -> None:
    recorded = a_finished_stage(tmp_path)
    assert set(recorded) == {"results/nll.csv", "models/train4/model.safetensors"}
    assert hashed == [tmp_path / "models" / "train4" / "model.safetensors"]  # the csv's hash came from its writer
    for relative, record in recorded.items():
        data = (tmp_path / relative).read_bytes()
        assert record["sha256"] == hashlib.sha256(data).hexdigest() and record["size"] == len(data)


def test_recording_again_reuses_the_previous_record_of_an_unchanged_model(tmp_path: Path, hashed: list[Path]) -> None:
    recorded = a_finished_stage(tmp_path)
    hashed.clear()
    again = outputs.fingerprint_outputs(tmp_path, ("results/nll.csv", "models/train*"), previous=recorded)
    assert again == recorded and hashed == []  # a 0.28B model is not re-hashed on every run


def test_an_untouched_run_verifies_without_reading_a_file(tmp_path: Path, hashed: list[Path]) -> None:
    a_finished_stage(tmp_path)
    hashed.clear()
    assert outputs.stage_changes(tmp_path, ["check", "nll", "report"]) == {}
    outputs.verify_results(tmp_path)
    assert hashed == []


@pytest.mark.parametrize(
    ("damage", "what"),
    [
        (lambda p: p.write_text("model,nll\n"), "changed"),  # cut to its header
        (lambda p: p.write_text(""), "changed"),  # emptied
        (lambda p: p.write_text("model,nll\nbase,1.6\n"), "changed"),  # edited, same size
        (lambda p: p.unlink(), "missing"),
    ],
    ids=["cut", "emptied", "edited", "deleted"],
)
def test_a_changed_results_file_is_found(tmp_path: Path, damage, what: str) -> None:
    a_finished_stage(tmp_path)
    damage(tmp_path / "results" / "nll.csv")
    assert outputs.stage_changes(tmp_path, ["nll"]) == {"nll": [outputs.Change("results/nll.csv", "nll", what)]}
    with pytest.raises(StudyError, match=r"results/nll.csv (changed|is missing) since nll wrote it") as refused:
        outputs.verify_results(tmp_path)
    assert "\n" not in str(refused.value) and len(str(refused.value)) < 300


def test_a_touched_but_identical_file_is_hashed_and_accepted(tmp_path: Path, hashed: list[Path]) -> None:
    a_finished_stage(tmp_path)
    path = tmp_path / "results" / "nll.csv"
    status = path.stat()
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns + 10**9))
    hashed.clear()
    assert outputs.stage_changes(tmp_path, ["nll"]) == {}
    assert hashed == [path]  # the mtime changed: the hash decides


def test_another_size_is_a_change_without_reading_the_file(tmp_path: Path, hashed: list[Path]) -> None:
    a_finished_stage(tmp_path)
    (tmp_path / "models" / "train4" / "model.safetensors").write_bytes(b"other")
    hashed.clear()
    changes = outputs.stage_changes(tmp_path, ["nll"])
    assert [c.path for c in changes["nll"]] == ["models/train4/model.safetensors"] and hashed == []


def test_the_folder_of_a_replaced_model_file_is_removed_and_results_files_kept(tmp_path: Path) -> None:
    a_finished_stage(tmp_path)
    (tmp_path / "models" / "train4" / "model.safetensors").write_bytes(b"x" * 700)
    (tmp_path / "models" / "train8").mkdir()  # another, untouched model
    changes = outputs.stage_changes(tmp_path, ["nll"])["nll"]
    removed = outputs.remove_changed_folders(tmp_path, ("results/nll.csv", "models/train*"), changes)
    assert removed == [tmp_path / "models" / "train4"] and not removed[0].exists()
    assert (tmp_path / "models" / "train8").is_dir() and (tmp_path / "results" / "nll.csv").is_file()


def test_model_changes_do_not_stop_the_results_readers(tmp_path: Path) -> None:
    """The notebook and compare read results/ only: a damaged model is the run's business."""
    a_finished_stage(tmp_path)
    (tmp_path / "models" / "train4" / "model.safetensors").unlink()
    outputs.verify_results(tmp_path)


def test_markers_without_fingerprints_are_not_checked(tmp_path: Path) -> None:
    """A run finished before fingerprints were recorded: nothing to check against."""
    atomic_write_json(outputs.marker_path(tmp_path, "nll"), {"stage": "nll", "config_hash": "x"})
    (outputs.marker_path(tmp_path, "sft")).write_text("{torn")
    assert outputs.stage_changes(tmp_path, ["nll", "sft"]) == {}


def test_temporary_files_are_not_outputs(tmp_path: Path) -> None:
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "a.png").write_bytes(b"png")
    (tmp_path / "figures" / ".a.png.123.tmp").write_bytes(b"half")
    assert outputs.output_files(tmp_path, ("figures", "report.md")) == [tmp_path / "figures" / "a.png"]


def test_load_results_refuses_a_changed_run_in_one_line(tmp_path: Path) -> None:
    from study.report import load_results

    a_finished_stage(tmp_path)
    (tmp_path / "results" / "nll.csv").write_text("model,nll\n")
    with pytest.raises(StudyError, match=r"results/nll\.csv changed since nll wrote it"):
        load_results(tmp_path)


# ---- accelerate ranks under the run lock -----------------------------------------------------


def test_a_rank_accepts_the_lock_of_its_own_launch(tmp_path: Path) -> None:
    with RunLock(tmp_path / "run", launch="127.0.0.1/29500/a"):
        check_held(tmp_path / "run", "127.0.0.1/29500/a")
        record = json.loads((tmp_path / ".run.lock").read_text())
        assert record["launch"] == "127.0.0.1/29500/a" and record["pid"] == os.getpid()


def test_a_rank_refuses_the_lock_of_another_launch(tmp_path: Path) -> None:
    other = rf"in use by another run \(pid {os.getpid()} on .*started"
    with RunLock(tmp_path / "run", launch="127.0.0.1/29500/a"), pytest.raises(RunLockError, match=other):
        check_held(tmp_path / "run", "127.0.0.1/29501/b")
    # a single process's lock (no launch) is another run's too
    with RunLock(tmp_path / "run"), pytest.raises(RunLockError, match="not by this launch's rank 0"):
        check_held(tmp_path / "run", "127.0.0.1/29500/a")


def test_a_rank_refuses_a_lock_nobody_holds(tmp_path: Path) -> None:
    with pytest.raises(RunLockError, match="no lock file"):
        check_held(tmp_path / "run", "x")
    RunLock(tmp_path / "run", launch="x").acquire().release()  # the record stays, the flock is gone
    with pytest.raises(RunLockError, match="nobody holds it"):
        check_held(tmp_path / "run", "x")


def test_launch_identity_is_shared_by_the_ranks_of_one_launch(monkeypatch: pytest.MonkeyPatch) -> None:
    from study import distributed

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")
    first = distributed.launch_identity()
    monkeypatch.setenv("RANK", "1")  # another rank of the same launch
    assert distributed.launch_identity() == first
    monkeypatch.setenv("MASTER_PORT", "29501")  # another launch
    assert distributed.launch_identity() != first
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.launch_identity() is None
