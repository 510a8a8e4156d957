"""An exclusive lock on a run directory, so two runs never write one directory at once.

The lock is ``flock`` on ``.<run-dir-name>.lock`` beside the run directory (beside,
not inside: ``--force`` moves the directory aside while the lock is held). The kernel
drops an flock when its process dies, however it dies, so a lock left by a killed
run is free: the next run takes it over and says whose it was. The file records the
holder's pid, host and start time, which a refused second run prints.

Only ``run_study.py`` takes the lock. The processes it spawns (one SFT or sweep worker
per GPU) work inside the run that holds it and take none (``subprocess`` does not pass
the locked descriptor on). Under ``accelerate launch`` rank 0 takes it as a single process
does, recording the launch's identity (``distributed.launch_identity``: what all ranks of
one launch share); every other rank then checks that the lock is held by its own launch
(``check_held``), so no rank of a second launch writes a directory another launch is using.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from study.errors import RunLockError as RunLockError  # re-exported: raised here


def lock_path(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    return run_dir.parent / f".{run_dir.name}.lock"


def _pid_alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def _who(holder: dict[str, Any]) -> str:
    return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started {holder.get('started', '?')}"


def check_held(run_dir: Path, launch: str) -> None:
    """For a rank other than 0 of an ``accelerate launch``: the run directory's lock must be
    held, and by this launch's rank 0 (its record names this launch). ``RunLockError`` otherwise."""
    path = lock_path(Path(run_dir))
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        raise RunLockError(f"--output-dir: {run_dir} is not locked by this launch's rank 0 (no lock file)") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)  # held: by whom?
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)  # free: rank 0 of this launch does not hold it
            raise RunLockError(f"--output-dir: {run_dir} is not locked by this launch's rank 0 (nobody holds it)")
    finally:
        os.close(fd)
    if holder.get("launch") != launch:
        raise RunLockError(
            f"--output-dir: {run_dir} is in use by another run ({_who(holder)}), not by this launch's rank 0; "
            "wait for it to end, or use another --output-dir"
        )


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = json.loads(os.read(fd, 4096).decode("utf-8", errors="replace") or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class RunLock:
    """``with RunLock(run_dir):`` holds the directory's lock; ``acquire`` raises
    ``RunLockError`` naming the holder when another live process has it."""

    def __init__(self, run_dir: Path, launch: str | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.launch = launch  # the accelerate launch this process belongs to (None: a single process)
        self.path = lock_path(self.run_dir)
        self._fd: int | None = None
        self.taken_over: dict[str, Any] | None = None  # the dead holder whose lock we took

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunLockError(
                f"--output-dir: {self.run_dir} is in use by another run ({_who(holder)}); wait for it to end, "
                "or use another --output-dir"
            ) from None
        previous = _read_holder(fd)
        if previous.get("pid") not in (None, os.getpid()):
            # its holder is gone: a live one would still hold the flock (a live pid here is a reused one)
            self.taken_over = previous | {"alive": _pid_alive(previous.get("pid"))}
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        if self.launch is not None:
            record["launch"] = self.launch
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, (json.dumps(record, sort_keys=True) + "\n").encode())
        self._fd = fd
        return self

    def takeover_note(self) -> str | None:
        """One line about the dead run whose lock this one took, if any."""
        if self.taken_over is None:
            return None
        held = self.taken_over
        return (
            f"took over the lock of an earlier run of {self.run_dir} (pid {held.get('pid', '?')}, "
            f"started {held.get('started', '?')}), which is no longer running"
        )

    def release(self) -> None:
        if self._fd is not None:
            # the file stays (unlinking a locked path lets a third process lock a new inode), emptied:
            # only a run that died holding the lock leaves its record for the next one to report
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
