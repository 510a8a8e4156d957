"""What the halting policies (``study.looping.policies.HaltingWindow``, ``RungLadder``)
share: the depth is chosen per input, per row, never per batch, from the prompt alone.

In teacher-forced scoring the scorer passes each row's prompt length; the rule then
reads only prompt positions, so the depth a row gets never depends on the gold answer
it is scored on, nor (attention being causal and the signal per row) on the other rows
or the padding of the batch. The runners live with their backbones
(``study.models.entries``): ``HaltingWindowRunner`` (looped decoder) halts its window
by a ``PromptHalting`` rule; the ladders (``LadderRunner``: LoopFormer's M,
``WindowLadderRunner``: the looped decoder's K) climb rungs while the ``kl_rows`` of
successive rungs is at least tau. LoopFormer's reads the whole teacher-forced row
(``climb_ladder``; its trace: ``ladder_steps``); the looped decoder's reads a forward
of each prompt alone (``prompt_ladder``), the same in scoring, tracing and generation.

The adaptive stage computes the steps a family of halting policies may stop at once
(``study.looping.policies.HaltingTrace``): the trace runners yield one ``TraceStep``
per step, with every rule's signal (``SignalRecorder`` collects a window's), and
every (rule, tau) is then a lookup (``study.looping.halting``) that equals the runner
of that policy bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from study.looping.strategies import Halting


def kl_rows(logits_new: Tensor, logits_old: Tensor) -> Tensor:
    """KL(p_new || p_old) per row of [B, V] logits, in fp32, never below 0 (so tau = 0
    never stops a row, even where rounding would make the KL a hair negative)."""
    new, old = F.log_softmax(logits_new.float(), dim=-1), F.log_softmax(logits_old.float(), dim=-1)
    return (new.exp() * (new - old)).sum(-1).clamp_min(0.0)


def readout_rows(head: Callable[[Tensor], Tensor], states: Tensor) -> Tensor:
    """``head`` of states [B, H] -> [B, V], one row at a time. On CPU a matrix product's
    last bits depend on how many rows it holds (1 to 3 rows take other kernels than 4 or
    more), so a batched readout would let a row's signal, and the depth it chooses, hang
    on which of its batch mates are still running."""
    return torch.cat([head(states[r : r + 1].clone()) for r in range(states.shape[0])])


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


@dataclass
class TraceStep:
    """One step a halting policy may stop at, for a batch (``HaltingTrace``)."""

    depth: int  # the step's depth: the rung M of a ladder, the step k of a window's K_max steps
    # [B, T, H] final hidden states of a row that stops here; None where the step's NLL is the
    # fixed-depth sweep's at ``depth`` (a looped decoder's rung), which the trace leaves to it
    hidden: Tensor | None
    executed: Tensor  # [B] loops a row stopping here has paid (a ladder: every rung so far)
    signals: dict[str, Tensor | None]  # rule -> [B] its signal here (None: no signal, e.g. a first rung)


class SignalRecorder(Halting):
    """Row-scope halting that never stops: after each step of a window's loop it keeps
    the new state and every rule's signal (each a ``PromptHalting``, as a policy of that
    rule would measure it). Its rows mask (``token_mask``) is the rules' decision mask,
    so a strategy that groups by it (anderson) runs as under the policies it serves."""

    def __init__(self, rules: dict[str, PromptHalting], decide_mask: Tensor | None) -> None:
        super().__init__(None, "row", decide_mask)
        self.rules = rules
        self.states: list[Tensor] = []  # [B, T, H] after each step
        self.signals: dict[str, list[Tensor]] = {rule: [] for rule in rules}
        self.costs: list[Tensor] = []  # [B] loops run after each step

    def check(self, x: Tensor, x_new: Tensor) -> Tensor:
        out = super().check(x, x_new)  # no tau: x_new, with the loops counted
        assert self.executed is not None
        for rule, halting in self.rules.items():
            self.signals[rule].append(halting.relative_residual(x, x_new))
        self.states.append(out)
        self.costs.append(self.executed.clone())
        return out


# A rung of a ladder: (loops it costs, the forward of a right-padded batch [b, T] -> final
# hidden states [b, T, H] at that fixed depth)
Rung = tuple[int, Callable[[Tensor], Tensor]]


def climb_ladder(
    rungs: Sequence[Rung], head: Callable[[Tensor], Tensor], tau: float, input_ids: Tensor, decide_at: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """A rung ladder on a batch: run each rung on the rows still climbing (their results do
    not depend on the others), stop a row once the KL of its distribution at ``decide_at``
    [B] to the rung below is < tau. -> (hidden [B, T, H] at each row's final rung, cost
    [B]: the loops of every rung it ran, final rung's loops [B])."""
    batch = input_ids.shape[0]
    device = input_ids.device
    climbing = torch.ones(batch, dtype=torch.bool)  # rows still moving up the ladder
    cost = torch.zeros(batch)
    rung = torch.zeros(batch, dtype=torch.long)
    previous: Tensor | None = None  # [B, V] logits at the decision position, previous rung
    hidden: Tensor | None = None
    for loops, forward in rungs:
        rows = climbing.nonzero().squeeze(1)
        out = forward(input_ids[rows.to(device)])  # [b, T, H]
        if hidden is None:
            hidden = out.new_zeros(batch, *out.shape[1:])
        hidden[rows.to(device)] = out
        cost[rows] += loops
        rung[rows] = loops
        at = decide_at[rows].to(device)
        logits = readout_rows(head, out[torch.arange(len(rows), device=device), at])  # [b, V]
        if previous is not None:
            agreed = (kl_rows(logits, previous[rows.to(device)]) < tau).cpu()
            climbing[rows[agreed]] = False
        if not bool(climbing.any()):
            break
        previous = logits.new_zeros(batch, logits.shape[-1]) if previous is None else previous
        previous[rows.to(device)] = logits
    assert hidden is not None  # a ladder has at least two rungs
    return hidden, cost, rung


def ladder_steps(
    rungs: Iterable[tuple[int, Tensor]], head: Callable[[Tensor], Tensor], decide_at: Tensor
) -> Iterator[TraceStep]:
    """A ladder's trace on a batch: one ``TraceStep`` per rung, from each rung's (loops,
    hidden states [B, T, H] of every row), with the loops paid to stop there (every rung
    so far) and the KL to the rung below as ``climb_ladder`` computes it (row by row;
    none at the first rung)."""
    previous: Tensor | None = None  # [B, V] logits at the decision position, previous rung
    paid = 0
    for loops, hidden in rungs:
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        logits = readout_rows(head, hidden[rows, decide_at.to(hidden.device)])
        paid += loops
        signal = None if previous is None else kl_rows(logits, previous).cpu()
        yield TraceStep(loops, hidden, torch.full((len(rows),), float(paid)), {"kl": signal})
        previous = logits


def prompt_ladder(
    rung_logits: Iterable[tuple[int, Tensor]], tau: float | None
) -> Iterator[tuple[int, float, Tensor | None]]:
    """One prompt's climb of a ladder, from each rung's (loops, logits [1, V] of the prompt's
    last position, i.e. the first answer token's distribution): per rung run, (its loops,
    the loops paid so far, the KL [1] to the rung below; None at the first). Stops after
    the first rung whose KL is < tau (compared in float32, as ``climb_ladder``); tau None
    never stops (a trace). ``rung_logits`` is consumed lazily: a rung above the stop is
    never run."""
    previous: Tensor | None = None  # [1, V] logits of the rung below
    paid = 0
    for loops, logits in rung_logits:
        paid += loops
        signal = None if previous is None else kl_rows(logits, previous).cpu()
        yield loops, float(paid), signal
        if tau is not None and signal is not None and bool(signal[0] < tau):
            return
        previous = logits
