"""The study's stages, in pipeline order.

Each stage module has ``run(ctx)`` and declares itself as ``STAGE`` (``study.stages.stage``):
the config sections and data splits its results depend on, the models it reads and the
files it writes. ``STAGES`` is the one list of them; the run loop (``study.run``), the
stage keys and the tests read every fact about a stage from there. Stages use the
backbones, the looping policies and the task; nothing below them imports a stage.

A new stage is a module here with ``run`` and ``STAGE``, named in ``PIPELINE_ORDER`` in
its place. ``STAGES`` imports the stage modules on first use, so importing this package
(for the names, or ``python -m study.stages.sft``) stays cheap.
"""

from __future__ import annotations

import importlib
from functools import cache
from typing import Any

from study.stages.stage import Stage

# the stage modules, in the order a run takes them; each module's STAGE.name is its own name
PIPELINE_ORDER: tuple[str, ...] = ("check", "sft", "nll", "adaptive", "exact_match", "latency", "benchmarks", "report")


@cache
def all_stages() -> tuple[Stage, ...]:
    return tuple(importlib.import_module(f"study.stages.{name}").STAGE for name in PIPELINE_ORDER)


def stage_named(name: str) -> Stage:
    """The stage called ``name`` (a ``KeyError`` names the known ones)."""
    if name not in PIPELINE_ORDER:
        raise KeyError(f"no stage {name!r}; the stages are {', '.join(PIPELINE_ORDER)}")
    return all_stages()[PIPELINE_ORDER.index(name)]


def __getattr__(name: str) -> Any:
    if name == "STAGES":  # study.stages.STAGES: the declarations, imported on first use
        return all_stages()
    raise AttributeError(f"module 'study.stages' has no attribute {name!r}")


__all__ = ["PIPELINE_ORDER", "STAGES", "Stage", "all_stages", "stage_named"]
