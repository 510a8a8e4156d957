"""loopdepth: which test-time loop depth does a looped transformer prefer after SFT?

Importing the package registers LoopFormer with transformers' Auto classes.
"""

from study.models.loopformer import LoopFormerConfig, LoopFormerForCausalLM, LoopFormerModel

__all__ = ["LoopFormerConfig", "LoopFormerForCausalLM", "LoopFormerModel"]
