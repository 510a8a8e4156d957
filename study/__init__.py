"""loopdepth: which test-time loop depth does a looped transformer prefer after SFT?

Importing the package is cheap (no torch): LoopFormer registers itself with transformers'
Auto classes when ``study.models.loopformer`` is imported, which every model load does.
``study.LoopFormerForCausalLM`` and its siblings are that module's, imported on first use.
"""

from __future__ import annotations

from typing import Any

__all__ = ["LoopFormerConfig", "LoopFormerForCausalLM", "LoopFormerModel"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from study.models import loopformer

        return getattr(loopformer, name)
    raise AttributeError(f"module 'study' has no attribute {name!r}")
