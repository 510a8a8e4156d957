"""The looped backbones: LoopFormer (trained to loop) and, beside it, the decoders a
wrapper loops without training. ``study.models.backbones.BACKBONES`` is their registry."""

from study.models.loopformer import (
    CheckpointError,
    LoopFormerConfig,
    LoopFormerForCausalLM,
    LoopFormerModel,
    resolve_schedule,
)

__all__ = ["CheckpointError", "LoopFormerConfig", "LoopFormerForCausalLM", "LoopFormerModel", "resolve_schedule"]
