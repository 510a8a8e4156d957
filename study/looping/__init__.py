"""Training-free looping (Chen et al. 2026): re-apply a window of a frozen decoder's layers.

``LoopSpec`` says what to loop and how; ``STRATEGIES`` holds the update rules;
``loop_decoder(model, spec)`` wraps a Llama/Qwen3-family causal LM. The wrapper lives
in ``study.models`` (models depend on looping, never the reverse), so it is imported
only when asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from study.looping.spec import LoopSpec
from study.looping.strategies import STRATEGIES, Halting, Strategy

if TYPE_CHECKING:
    from study.models.looped_decoder import loop_decoder

__all__ = ["STRATEGIES", "Halting", "LoopSpec", "Strategy", "loop_decoder"]


def __getattr__(name: str) -> Any:
    if name == "loop_decoder":
        from study.models.looped_decoder import loop_decoder

        return loop_decoder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
