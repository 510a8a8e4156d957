"""``manifest.json``: everything needed to say what a run was and to redo it."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from study.config import StudyConfig
from study.io import atomic_write_json, read_json

PACKAGES = (
    "torch", "transformers", "trl", "peft", "datasets", "accelerate", "safetensors", "tokenizers",
    "huggingface_hub", "numpy", "scipy", "pandas", "matplotlib", "seaborn", "pydantic",
)  # fmt: skip
REPO_ROOT = Path(__file__).resolve().parent.parent


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
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT, capture_output=True, text=True,
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


def hardware(device: torch.device) -> dict[str, Any]:
    available = torch.cuda.is_available()
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if available else []
    return {
        "device": str(device),
        "gpus": gpus,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }


class Manifest:
    """Read-modify-write of the run's manifest; every write is atomic."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = read_json(path) if path.is_file() else {}

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
                "hardware": hardware(device),
                # once skipped, a run stays marked: its numbers were not all gated
                "checks_skipped": bool(self.data.get("checks_skipped")) or skip_checks,
            }
        )
        self.data.setdefault("stages", {})
        self.save()

    def update(self, **fields: Any) -> None:
        self.data.update(fields)
        self.save()

    def stage(self, name: str, **fields: Any) -> None:
        self.data.setdefault("stages", {}).setdefault(name, {}).update(fields)
        self.save()

    def save(self) -> None:
        atomic_write_json(self.path, self.data)
