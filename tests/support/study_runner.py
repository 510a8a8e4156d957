"""Running ``run_study.py`` as a user would, in a subprocess, for the end-to-end tests."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
# results that must be byte-identical between two runs of one config and seed on CPU
DETERMINISTIC_RESULTS = (
    "checks.json",
    "sft_loss.csv",
    "nll.csv",
    "nll_summary.csv",
    "preferred_depth.csv",
    "exact_match.csv",
    "generations.jsonl",
    "schedules.csv",
    "adaptive.csv",
    "adaptive_calibrated.csv",
    "oracle_frontier.csv",
    "adaptive_depths.csv",
)


# Python flags that print every deprecation warning, each with the file it is attributed to
SHOW_DEPRECATIONS = ("-W", "always::DeprecationWarning", "-W", "always::FutureWarning")
PROJECT_WARNING = re.compile(
    rf"^(?P<file>{re.escape(str(REPO_ROOT))}/(?:study/\S+|run_study)\.py):\d+: (?:Deprecation|Future)Warning: .*$",
    re.MULTILINE,
)


def study_command(*args: str, python_flags: tuple[str, ...] = ()) -> list[str]:
    return [sys.executable, *python_flags, str(REPO_ROOT / "run_study.py"), *args]


def run_study(*args: str, timeout: float = 900, show_deprecations: bool = False) -> subprocess.CompletedProcess:
    """``run_study.py ARGS`` in a subprocess; with ``show_deprecations`` every deprecation
    warning is printed, so ``project_deprecations`` can find those raised from our files."""
    flags = SHOW_DEPRECATIONS if show_deprecations else ()
    return subprocess.run(
        study_command(*args, python_flags=flags),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def project_deprecations(output: str) -> list[str]:
    """The Deprecation/FutureWarning lines of ``output`` attributed to the project's own files."""
    return [match.group(0) for match in PROJECT_WARNING.finditer(output)]


def run_until(args: list[str], trigger: Callable[[], bool], sig: int = signal.SIGKILL, timeout: float = 900):
    """Start the study and send ``sig`` as soon as ``trigger()`` holds. Returns
    (returncode, stdout+stderr, whether the signal was sent before the process ended)."""
    process = subprocess.Popen(
        study_command(*args), cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + timeout
    sent = False
    while process.poll() is None and time.monotonic() < deadline:
        if trigger():
            process.send_signal(sig)
            sent = True
            break
        time.sleep(0.02)
    output, _ = process.communicate(timeout=timeout)
    return process.returncode, output, sent


def any_file(folder: Path) -> Callable[[], bool]:
    return lambda: folder.is_dir() and any(folder.iterdir())


def copy_run(source: Path, target: Path, drop_stages: tuple[str, ...], drop_paths: tuple[str, ...]) -> Path:
    """A copy of a finished run with some stages undone (their markers and outputs removed)."""
    shutil.copytree(source, target)
    for stage in drop_stages:
        (target / "stages" / f"{stage}.json").unlink(missing_ok=True)
    for relative in drop_paths:
        path = target / relative
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    return target


def snapshot(run_dir: Path) -> dict[str, bytes]:
    """Every file of a run directory except the manifest (it records invocations)."""
    return {
        str(p.relative_to(run_dir)): p.read_bytes()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file() and p.name != "manifest.json"
    }


os.environ.setdefault("PYTHONUNBUFFERED", "1")
