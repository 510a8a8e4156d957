"""What the halting policies (``study.looping.policies.HaltingWindow``, ``RungLadder``)
share: the depth is chosen per input, per row, never per batch, from the prompt alone.

In teacher-forced scoring the scorer passes each row's prompt length; the rule then
reads only prompt positions, so the depth a row gets never depends on the gold answer
it is scored on, nor (attention being causal and the signal per row) on the other rows
or the padding of the batch. The runners live with their backbones
(``study.models.entries``): ``HaltingWindowRunner`` (looped decoder) halts its window
by a ``PromptHalting`` rule, ``LadderRunner`` (LoopFormer) climbs rungs of M while the
``kl_rows`` of successive rungs is at least tau.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from study.looping.strategies import Halting


def kl_rows(logits_new: Tensor, logits_old: Tensor) -> Tensor:
    """KL(p_new || p_old) per row of [B, V] logits, in fp32, never below 0 (so tau = 0
    never stops a row, even where rounding would make the KL a hair negative)."""
    new, old = F.log_softmax(logits_new.float(), dim=-1), F.log_softmax(logits_old.float(), dim=-1)
    return (new.exp() * (new - old)).sum(-1).clamp_min(0.0)


def prompt_mask(prompt_lengths: Tensor, length: int) -> Tensor:
    """[B, T] 1 on each row's prompt positions."""
    return (torch.arange(length)[None, :] < prompt_lengths[:, None]).long()


class PromptHalting(Halting):
    """Row-scope halting whose signal is the policy's rule, measured where the row decides.

    ``decide_mask`` [B, T] marks the positions the signal reads (``residual``: the relative
    residual over them, other positions zeroed; None: all); ``decide_at`` [B] the position
    whose next-token distribution ``kl`` compares (None: the last), and ``readout`` maps
    states [B, H] to logits. The base class's convergence test calls ``relative_residual``:
    here that is the rule's signal, whichever it is."""

    def __init__(
        self,
        rule: str,
        tau: float,
        decide_mask: Tensor | None,
        decide_at: Tensor | None,
        readout: Callable[[Tensor], Tensor],
    ) -> None:
        super().__init__(tau, "row", decide_mask)
        self.rule = rule
        self.decide_at = decide_at
        self.readout = readout

    def relative_residual(self, x: Tensor, x_new: Tensor) -> Tensor:
        if self.rule == "residual":
            return super().relative_residual(x, x_new)
        if self.decide_at is None:
            return kl_rows(self.readout(x_new[:, -1]), self.readout(x[:, -1]))
        rows = torch.arange(x.shape[0], device=x.device)
        at = self.decide_at.to(x.device)
        return kl_rows(self.readout(x_new[rows, at]), self.readout(x[rows, at]))
