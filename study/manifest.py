"""``manifest.json``: everything needed to say what a run was and to redo it."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import re
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from study import threads
from study.config import StudyConfig
from study.errors import ManifestError as ManifestError  # re-exported: raised here
from study.io import atomic_write_json, read_json

PACKAGES = (
    "torch", "transformers", "trl", "peft", "datasets", "accelerate", "safetensors", "tokenizers",
    "huggingface_hub", "numpy", "scipy", "pandas", "matplotlib", "seaborn", "pydantic",
)  # fmt: skip
REPO_ROOT = Path(__file__).resolve().parent.parent
LOCK_FILE = REPO_ROOT / "requirements.lock"
LOCKED_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", re.MULTILINE)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def git_commit() -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return None
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return result.stdout.strip() + ("-dirty" if dirty else "")


def versions() -> dict[str, str]:
    found = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's marketing name ("model name" in /proc/cpuinfo on Linux), else what the
    platform module knows (often only the architecture)."""
    try:
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def load_average() -> list[float] | None:
    """The 1, 5 and 15-minute load averages (None where the OS has none): how busy the
    machine was, beside any timing taken on it."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def hardware(device: torch.device) -> dict[str, Any]:
    available = torch.cuda.is_available()
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if available else []
    choice = threads.last_choice()
    return {
        "device": str(device),
        "gpus": gpus,
        "cpu": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),  # the threads actually used
        # how they were chosen (config torch_threads; for auto the load average seen): study.threads
        "torch_threads_choice": None if choice is None else choice.as_dict(),
        "load_average": load_average(),  # at the start of this invocation; each stage records its own
        "platform": platform.platform(),
    }


def tokenizer_record(tokenizer: Any) -> dict[str, Any]:
    """What a run's NLL is measured in: the tokenizer's class, vocabulary size and the sha256
    of its vocabulary (token -> id, sorted). Nats per token of runs whose vocabularies differ
    are not comparable (``study.report.compare`` refuses to put them on one axis)."""
    vocabulary = json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False).encode()
    return {
        "class": type(tokenizer).__name__,
        "vocab_size": len(tokenizer),
        "sha256": hashlib.sha256(vocabulary).hexdigest(),
    }


def lock_record(lock: Path = LOCK_FILE) -> dict[str, Any]:
    """The lock file the environment was meant to come from: its sha256, and every locked
    package whose installed version differs from its pin (empty when `make venv` built it)."""
    if not lock.is_file():
        return {"file": str(lock), "sha256": None, "note": "no lock file (installed from pyproject's ranges)"}
    text = lock.read_bytes()
    differs = {}
    for name, pinned in LOCKED_PIN.findall(text.decode()):
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = "not installed"
        if installed != pinned:
            differs[name] = {"locked": pinned, "installed": installed}
    return {"file": lock.name, "sha256": hashlib.sha256(text).hexdigest(), "differs_from_installed": differs}


def read_manifest(path: Path) -> dict[str, Any]:
    """A run's manifest as a dict, or ``ManifestError`` naming the file."""
    try:
        data = read_json(path)
    except UnicodeDecodeError:
        raise ManifestError(f"{path}: not UTF-8 text (not a loopdepth manifest)") from None
    except ValueError as error:
        reason = "empty" if not path.read_bytes().strip() else f"not valid JSON ({getattr(error, 'msg', error)})"
        raise ManifestError(f"{path}: {reason}") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: expected a JSON object, found a {type(data).__name__}")
    for key, kind in (("config", dict), ("stages", dict), ("invocations", list)):
        if key in data and not isinstance(data[key], kind):
            raise ManifestError(f"{path}: '{key}' is a {type(data[key]).__name__}, expected a {kind.__name__}")
    return data


class Manifest:
    """Read-modify-write of the run's manifest; every write is atomic."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = read_manifest(path) if path.is_file() else {}

    @property
    def config_hash(self) -> str | None:
        return self.data.get("config_hash")

    def start(self, config: StudyConfig, device: torch.device, argv: list[str], skip_checks: bool) -> None:
        runs = self.data.setdefault("invocations", [])
        runs.append({"argv": argv, "started": now(), "skip_checks": skip_checks})
        self.data.update(
            {
                "config": config.model_dump(mode="json"),
                "config_hash": config.identity_hash(),
                "seed": config.seed,
                "git_commit": git_commit(),
                "versions": versions(),
                "lock": lock_record(),
                "hardware": hardware(device),
                # once skipped, a run stays marked: its numbers were not all gated
                "checks_skipped": bool(self.data.get("checks_skipped")) or skip_checks,
            }
        )
        self.data.setdefault("stages", {})
        self.save()
        differs = self.data["lock"].get("differs_from_installed")
        if differs:  # not an error (pip users install from ranges), but never silent
            shown = ", ".join(f"{k} {v['installed']} (locked {v['locked']})" for k, v in sorted(differs.items())[:4])
            more = f" and {len(differs) - 4} more" if len(differs) > 4 else ""
            # stdout: a note, not an error (stderr keeps errors to their one line)
            print(f"note: installed packages differ from {LOCK_FILE.name}: {shown}{more}", flush=True)

    def update(self, **fields: Any) -> None:
        self.data.update(fields)
        self.save()

    def begin_stage(self, name: str, **fields: Any) -> None:
        """A stage starts (again): its earlier record described outputs it now replaces."""
        self.data.setdefault("stages", {})[name] = dict(fields)
        self.save()

    def stage(self, name: str, **fields: Any) -> None:
        self.data.setdefault("stages", {}).setdefault(name, {}).update(fields)
        self.save()

    def save(self) -> None:
        atomic_write_json(self.path, self.data)
