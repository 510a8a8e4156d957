"""Running ``python -m study.bench`` in-process for the bench tests: the JSON it wrote,
with the process's torch threads restored (the bench sets its own)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from study import bench


def run_bench(argv: list[str], out: Path) -> dict:
    """``study.bench.main(argv)`` (``argv`` names ``out`` as its ``--out``), which must succeed."""
    previous = torch.get_num_threads()
    try:
        assert bench.main(argv) == 0
    finally:
        torch.set_num_threads(previous)
    return json.loads(out.read_text())


def positive(value) -> bool:
    """A figure the bench reports: a finite positive number."""
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0
