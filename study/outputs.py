"""Output fingerprints: the bytes each finished stage wrote, and whether they are still there.

When a stage finishes, every file under its declared outputs (``Stage.outputs``: results
files, figures, SFT model folders) is recorded in its marker (``stages/<stage>.json``) as
``{relative path: {sha256, size, mtime_ns}}``. Before a finished stage is reused, and
before anything reads a run's results (the report, ``compare``, the notebook's loaders),
those records are checked, so a results file cut, edited or deleted after the fact is
never read as the stage's own.

Cheap by design: the atomic writers (``study.io``) remember the sha256 of what they wrote,
so recording hashes again only the files written otherwise (``save_pretrained``'s model
files, matplotlib's figures), once; checking compares size and mtime_ns and reads a file
only when those changed. An untouched finished run is verified without reading any file.

This module imports nothing heavy (no torch): the notebook and ``compare`` use it.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from study.errors import StudyError
from study.io import read_json, written_digest

Fingerprints = dict[str, dict[str, Any]]  # relative path -> {"sha256", "size", "mtime_ns"}
_CHUNK = 1 << 22


def sha256_file(path: Path) -> str:
    """The one place a whole output file is read to hash it (the tests count the calls)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while block := handle.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def output_files(run_dir: Path, patterns: Iterable[str]) -> list[Path]:
    """Every file under the declared outputs (files, folders, globs such as ``models/train*``),
    without the temporary files of a write in progress (``.name.*.tmp``, ``.name.partial``)."""
    found: set[Path] = set()
    for pattern in patterns:
        for match in Path(run_dir).glob(pattern):
            candidates = match.rglob("*") if match.is_dir() else [match]
            found.update(p for p in candidates if p.is_file() and not p.name.startswith("."))
    return sorted(found)


def fingerprint_outputs(run_dir: Path, patterns: Iterable[str], previous: Fingerprints | None = None) -> Fingerprints:
    """{relative path: sha256, size, mtime_ns} of a stage's outputs. A file's hash comes from
    its writer (``study.io``) or from ``previous`` (the stage's last record) while its size and
    mtime are the recorded ones; only the other files are read."""
    run_dir = Path(run_dir)
    previous = previous or {}
    records: Fingerprints = {}
    for path in output_files(run_dir, patterns):
        status = path.stat()
        relative = path.relative_to(run_dir).as_posix()
        old = previous.get(relative) or {}
        known = written_digest(path, status.st_size, status.st_mtime_ns)
        if known is None and (old.get("size"), old.get("mtime_ns")) == (status.st_size, status.st_mtime_ns):
            known = old.get("sha256")  # a model sft kept from an earlier run: not re-hashed
        records[relative] = {
            "sha256": known or sha256_file(path),
            "size": status.st_size,
            "mtime_ns": status.st_mtime_ns,
        }
    return records


@dataclass(frozen=True)
class Change:
    """A recorded output file that is no longer what its stage wrote."""

    path: str  # relative to the run directory
    stage: str
    what: str  # "missing" or "changed"

    def line(self) -> str:
        return f"{self.path} {'is missing' if self.what == 'missing' else 'changed'} since {self.stage} wrote it"


def changed_files(run_dir: Path, stage: str, recorded: Fingerprints) -> list[Change]:
    """The recorded files that are missing or hold other bytes. Same size and mtime_ns: taken
    as unchanged without reading; another size: changed without reading; else the hash decides."""
    changes = []
    for relative, record in sorted(recorded.items()):
        path = Path(run_dir) / relative
        try:
            status = path.stat()
        except FileNotFoundError:
            changes.append(Change(relative, stage, "missing"))
            continue
        record = record if isinstance(record, dict) else {}  # a hand-edited marker: nothing matches
        touched = status.st_mtime_ns != record.get("mtime_ns")
        if status.st_size != record.get("size") or (touched and sha256_file(path) != record.get("sha256")):
            changes.append(Change(relative, stage, "changed"))
    return changes


def marker_path(run_dir: Path, stage: str) -> Path:
    return Path(run_dir) / "stages" / f"{stage}.json"


def recorded_outputs(run_dir: Path, stage: str) -> Fingerprints | None:
    """The output fingerprints a stage's marker records (None: no marker, or one from before
    fingerprints were recorded, or one that cannot be read: nothing to check against)."""
    marker = marker_path(run_dir, stage)
    try:
        data = read_json(marker) if marker.is_file() else None
    except (ValueError, OSError):
        return None
    outputs = data.get("outputs") if isinstance(data, dict) else None
    return outputs if isinstance(outputs, dict) else None


def stage_changes(run_dir: Path, stages: Iterable[str]) -> dict[str, list[Change]]:
    """For each named stage with a marker, its missing or changed output files (only stages
    with changes are listed)."""
    found = {}
    for stage in stages:
        recorded = recorded_outputs(run_dir, stage)
        changes = changed_files(run_dir, stage, recorded) if recorded else []
        if changes:
            found[stage] = changes
    return found


def recorded_stages(run_dir: Path) -> list[str]:
    folder = Path(run_dir) / "stages"
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []


def describe(changes: list[Change]) -> str:
    """The first change, and how many more: short enough for one line."""
    more = f" (and {len(changes) - 1} more)" if len(changes) > 1 else ""
    return changes[0].line() + more


def verify_results(run_dir: Path | str, under: str = "results/") -> None:
    """Refuse, in one line, a run directory whose results files (those ``under``) are not
    the bytes their stages wrote. For readers outside a run: the notebook's loaders and
    ``compare`` (a run itself recomputes such files, or refuses with --no-recompute)."""
    run_dir = Path(run_dir)
    changes = [
        change
        for changes in stage_changes(run_dir, recorded_stages(run_dir)).values()
        for change in changes
        if change.path.startswith(under)
    ]
    if changes:
        raise StudyError(
            f"{run_dir}: {describe(changes)}; its stages' markers record other bytes. "
            "Rerun the study on this directory to recompute them"
        )


def remove_changed_folders(run_dir: Path, patterns: Iterable[str], changes: list[Change]) -> list[Path]:
    """Remove each output folder (e.g. ``models/train8``) that holds a changed or missing
    file, so a stage that keeps a finished folder (sft keeps a model whose folder exists)
    writes it anew. Output files are left: their stage overwrites them."""
    run_dir = Path(run_dir)
    folders = {m for pattern in patterns for m in run_dir.glob(pattern) if m.is_dir()}
    removed = []
    for folder in sorted(folders):
        prefix = folder.relative_to(run_dir).as_posix() + "/"
        if any(change.path.startswith(prefix) for change in changes):
            shutil.rmtree(folder)
            removed.append(folder)
    return removed
