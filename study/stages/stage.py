"""What the orchestrator knows about a stage: one declaration per stage module.

Each stage module ends with ``STAGE = Stage(...)``; ``study.stages.STAGES`` lists them in
pipeline order, and everything the run loop, the stage keys and the tests need to know
about stages (which config sections and data splits a stage depends on, which models it
reads, what it writes) is read off these declarations, never kept in a table of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from study.pipeline import RunContext


def _always(ctx: RunContext) -> bool:
    return True


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[RunContext], object]
    # Config sections its outputs depend on (a change elsewhere reuses them); () = the whole config.
    sections: tuple[str, ...]
    # Data splits it reads, each fingerprinted into its key.
    splits: tuple[str, ...] = ()
    # Which models it reads: the base only, the base and every SFT model, or none.
    reads: Literal["base", "models", "none"] = "models"
    # It reads the SFT models, so the sft stage must have finished first.
    needs_sft: bool = False
    # Under accelerate launch, the main process runs it while the others wait.
    main_process_only: bool = False
    # What it writes, relative to the run directory (files or folders; SFT models too).
    outputs: tuple[str, ...] = ()
    # Its per-model outputs (sweep cells, SFT checkpoints) are keyed by each model's inputs,
    # leaving out these settings of its config section (None: no per-model outputs).
    cell_neutral: tuple[str, ...] | None = None
    # Beyond its marker, are its outputs there? (sft: every model folder.)
    complete: Callable[[RunContext], bool] = field(default=_always)
    # A finished report is redrawn on every run: it is cheap and reads every stage.
    always_reruns: bool = False

    @property
    def uses_base(self) -> bool:
        """Guarded by the check gate: it reads the base, directly or through its SFT models."""
        return self.reads != "none" and self.name != "check"
