"""Atomic file output: every results file appears whole or not at all.

A stage writes to a temporary file in the target's folder, flushes and fsyncs it,
then renames it over the target (atomic on POSIX), so a crash or a full disk never
leaves a half-written file that a later stage would read.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from study.errors import OutputError as OutputError  # re-exported: raised here

# sha256 of each file written here, keyed by resolved path and valid for the (size, mtime_ns)
# it had just after the write: a stage's output fingerprints (study.outputs) then cost no
# second read of bytes that were in memory anyway
_written: dict[str, tuple[int, int, str]] = {}


def written_digest(path: Path, size: int, mtime_ns: int) -> str | None:
    """The sha256 of ``path`` as this process wrote it, while its size and mtime are unchanged."""
    known = _written.get(str(Path(path).resolve()))
    return known[2] if known is not None and known[:2] == (size, mtime_ns) else None


def current_umask() -> int:
    """The process umask, read without changing it where Linux reports it (``os.umask``
    is set-and-return, racy with other threads creating files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise OutputError(f"{path.parent}: cannot write here ({error.strerror or error})") from None
    try:
        # mkstemp creates 0600; results are shared files, so give them what open() would (0644 under 022)
        os.fchmod(handle, 0o666 & ~current_umask())
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
        status = path.stat()
        _written[str(path.resolve())] = (status.st_size, status.st_mtime_ns, hashlib.sha256(data).hexdigest())
    except OSError as error:
        Path(temporary).unlink(missing_ok=True)
        raise OutputError(f"{path}: write failed ({error.strerror or error})") from None
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def atomic_write_csv(path: Path, rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> None:
    """Rows as CSV. A NaN or infinite float is refused (a ``ValueError`` naming the file and
    column, before anything is written: a bug of the writer, so it keeps its traceback):
    NaN is never written as a number. A value that does not exist (the CI of one example,
    ``study.stats.ci_cells``) is an empty cell its writer chose."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n", extrasaction="raise")
    writer.writeheader()
    for row in rows:
        for column, value in row.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{path}: column {column} would be written as {value!r}; refused (not a number)")
        writer.writerow({k: _format(v) for k, v in row.items()})
    atomic_write_text(path, buffer.getvalue())


def atomic_write_jsonl(path: Path, records: Iterable[Mapping[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


def read_csv(path: Path) -> list[dict[str, str]]:
    with Path(path).open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _format(value: Any) -> Any:
    # repr round-trips floats exactly, so results files are byte-stable across runs
    if isinstance(value, float):
        return repr(value)
    return value
