"""Runners of the halting policies (``study.looping.policies.HaltingWindow``, ``RungLadder``):
the depth is chosen per input, per row, never per batch.

Both decide from the prompt alone. In teacher-forced scoring the scorer passes each
row's prompt length; the rule then reads only prompt positions, so the depth a row
gets never depends on the gold answer it is scored on, nor (attention being causal
and the signal per row) on the other rows or the padding of the batch.

- ``HaltingWindowRunner`` (looped decoder): the window's strategy (euler ...) runs with
  a ``PromptHalting`` rule that freezes a row once its signal falls below tau. Keys and
  values: the window's KV is written after the loop by one more pass (``cache_strategy``),
  from each row's own final state, so a row that stopped early still leaves KV for every
  later token and nothing needs filling. In generation each call decides on its own new
  tokens (the prompt at prefill, the new token at each decode step under decode_mode full).
  Under ``cache_strategy="per_loop"`` a halting rule scores (teacher forcing keeps no KV)
  but cannot generate: a row's stop reads all its tokens, which decoding never sees at once.
- ``LadderRunner`` (LoopFormer): runs rung after rung on the rows still climbing and
  scores each row at the rung it stopped on; generation decides M on the prompt, then
  decodes the whole answer at that M.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from study.looping.policies import HaltingWindow, LoopedWindow, RungLadder
from study.looping.strategies import Halting
from study.models.backbones import LoopedDecoderRunner, LoopFormerRunner, PolicyRunner
from study.models.generation import DEFAULT_STOP_STRINGS, GenerationResult, greedy_generate


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


class HaltingWindowRunner(LoopedDecoderRunner):
    policy: HaltingWindow

    def __init__(self, model: nn.Module, policy: HaltingWindow) -> None:
        super().__init__(model, LoopedWindow(policy.spec))
        self.policy = policy
        # (prompt mask [B, T], last prompt position [B]) while a teacher-forced batch is scored;
        # None in generation, where each call decides on its own new tokens
        self.decision: tuple[Tensor, Tensor] | None = None
        inner = self.model.model

        def readout(states: Tensor) -> Tensor:  # the LM head's reading of a window state (a logit lens)
            return self.model.lm_head(inner.norm(states))

        def make_halting(token_mask: Tensor | None) -> Halting:
            if self.decision is None:  # left padding: a call's last position is always a real token
                return PromptHalting(policy.rule, policy.tau, token_mask, None, readout)
            return PromptHalting(policy.rule, policy.tau, *self.decision, readout)

        self.looped.make_halting = make_halting

    def hidden(self, input_ids: Tensor, prompt_lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if prompt_lengths is None:
            raise ValueError(f"policy {self.policy.id} decides its depth from the prompt: give prompt_lengths")
        mask = prompt_mask(prompt_lengths.cpu(), input_ids.shape[1]).to(input_ids.device)
        self.decision = (mask, (prompt_lengths - 1).to(input_ids.device))
        try:
            return super().hidden(input_ids)
        finally:
            self.decision = None


class LadderRunner(LoopFormerRunner):
    # not a fixed depth: hidden and generate are its own (the inherited prefill would fail on a ladder)
    policy: RungLadder  # type: ignore[assignment]

    def hidden(self, input_ids: Tensor, prompt_lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Each row's hidden states [B, T, H] at the rung it stopped on, and its cost [B]
        (the sum of the rungs it ran)."""
        if prompt_lengths is None:
            raise ValueError(f"policy {self.policy.id} decides its depth from the prompt: give prompt_lengths")
        hidden, cost, _ = self.climb(input_ids, prompt_lengths - 1)
        return hidden, cost

    def climb(self, input_ids: Tensor, decide_at: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(hidden [B, T, H] at each row's final rung, cost [B], final rung [B])."""
        batch = input_ids.shape[0]
        device = input_ids.device
        climbing = torch.ones(batch, dtype=torch.bool)  # rows still moving up the ladder
        cost = torch.zeros(batch)
        rung = torch.zeros(batch, dtype=torch.long)
        previous: Tensor | None = None  # [B, V] logits at the decision position, previous rung
        hidden: Tensor | None = None
        for loops in self.policy.ladder:
            rows = climbing.nonzero().squeeze(1)
            # only the rows still climbing run this rung (their results do not depend on the others)
            out = self.model.gpt(input_ids[rows.to(device)], use_cache=False, num_loops=loops).last_hidden_state
            if hidden is None:
                hidden = out.new_zeros(batch, *out.shape[1:])
            hidden[rows.to(device)] = out
            cost[rows] += loops
            rung[rows] = loops
            logits = self.model.lm_head(out[torch.arange(len(rows), device=device), decide_at[rows].to(device)])
            if previous is not None:
                agreed = (kl_rows(logits, previous[rows.to(device)]) < self.policy.tau).cpu()
                climbing[rows[agreed]] = False
            if not bool(climbing.any()):
                break
            previous = logits.new_zeros(batch, logits.shape[-1]) if previous is None else previous
            previous[rows.to(device)] = logits
        assert hidden is not None  # a ladder has at least one rung
        return hidden, cost, rung

    def generate(self, tokenizer, prompts, max_new_tokens, stop_strings=DEFAULT_STOP_STRINGS, early_stop=True):
        """Decide M on each prompt alone, then decode each group of equal M at that M."""
        chosen = self.choose(tokenizer, prompts)
        results: list[GenerationResult | None] = [None] * len(prompts)
        for loops in sorted(set(chosen)):
            group = [i for i, m in enumerate(chosen) if m == loops]
            out = greedy_generate(
                self.model, tokenizer, [prompts[i] for i in group], max_new_tokens, stop_strings=stop_strings,
                early_stop=early_stop, num_loops=loops,
            )  # fmt: skip
            for i, result in zip(group, out, strict=True):
                results[i] = result
        return results

    @torch.inference_mode()
    def choose(self, tokenizer, prompts: Sequence[str]) -> list[int]:
        """The rung each prompt stops on (each prompt alone: no padding, no batch mates)."""
        chosen = []
        for prompt in prompts:
            ids = torch.tensor([tokenizer(prompt)["input_ids"]], device=self.device)
            _, _, rung = self.climb(ids, torch.tensor([ids.shape[1] - 1]))
            chosen.append(int(rung[0]))
        return chosen


def bind_halting(model: nn.Module, policy: HaltingWindow | RungLadder) -> PolicyRunner:
    from study.models.backbones import BackboneError

    if isinstance(policy, RungLadder):
        if not hasattr(model, "gpt"):
            raise BackboneError(f"policy {policy.id} runs on LoopFormer, not on {type(model).__name__}")
        return LadderRunner(model, policy)
    if hasattr(model, "gpt"):
        raise BackboneError(f"policy {policy.id} loops a pretrained decoder, not LoopFormer")
    return HaltingWindowRunner(model, policy)
