"""Loop strategies: update rules that iterate a pass function ``g`` over a hidden state.

A rule receives ``g`` (one pass of the loop window, or of one layer in layer mode:
a callable state -> state of the same shape), the start state ``x0`` and the loop
count ``K``, plus the strategy's own hyperparameters, and returns the final state.
Rules know nothing about transformers, so each one can be tested on a toy map
such as ``g(x) = 0.5 x + c``. Two rules need more than ``g``:

- ``uniform`` runs the window layer by layer, so it receives the list of layer passes;
- ``layer_anchored_frozen`` needs the model's *natural* pass (the one that writes the
  layer's KV cache) besides the loop-body pass ``g``.

Strategies that can stop early take a ``Halting`` object and call ``halt.check``
after every step; the convergence test lives only there. All formulas follow the
reference wrapper (Chen et al. 2026, ``loop_qwen3.py``), written out in the
fixture's ``settings.json`` under ``strategies``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Literal

import torch
from torch import Tensor

Pass = Callable[[Tensor], Tensor]
HaltScope = Literal["row", "batch"]

EPS = 1e-6  # floor of every norm in a denominator (the reference's)


class Halting:
    """Early exit when a step stops moving the state: after a step x -> x_new, a row
    has converged when ||x_new - x|| / max(||x||, 1e-6) < tau (fp32 norms).

    ``scope="row"`` (ours): the norms are taken per row (over its real tokens when
    ``token_mask`` [B, T] is given, so right padding does not count). A converged row
    keeps x_new from then on while the other rows go on; the rule stops once every
    row has converged. Each row therefore gets exactly the result it would get alone.

    ``scope="batch"`` (the reference): the norms are over the whole [B, T, H] tensor,
    so every row stops at the same step and a row's depth depends on its batch mates.
    The scope also decides whether anderson's mixing coefficients are per row or one
    set for the batch, the other place where the reference couples rows.

    ``executed`` [B] counts the loops each row ran (an aitken step is two loops).
    With ``tau=None`` nothing halts and only ``executed`` is kept.

    Not causal: a row's stopping step depends on all its tokens, so a token's state
    depends on later tokens, and cached decoding (which sees one new token per call)
    cannot reproduce it; ``LoopSpec`` refuses ``halt_tau`` with ``cache_strategy="per_loop"``.
    """

    def __init__(self, tau: float | None = None, scope: HaltScope = "row", token_mask: Tensor | None = None) -> None:
        self.tau = tau
        self.scope = scope
        self.token_mask = token_mask  # [B, T] 1 for real tokens, only read in row scope
        self.frozen: Tensor | None = None  # [B] bool: rows that have converged
        self.executed: Tensor | None = None  # [B] long
        self._loops_per_step = 1

    def steps(self, n: int, loops_per_step: int = 1) -> Iterator[int]:
        """``range(n)`` that ends early once every row has converged."""
        self._loops_per_step = loops_per_step
        for k in range(n):
            if self.frozen is not None and bool(self.frozen.all()):
                return
            yield k

    def check(self, x: Tensor, x_new: Tensor) -> Tensor:
        """The state after the step x -> x_new: x_new, except in rows converged earlier."""
        batch = x.shape[0]
        if self.frozen is None:
            self.frozen = torch.zeros(batch, dtype=torch.bool, device=x.device)
            self.executed = torch.zeros(batch, dtype=torch.long, device=x.device)
        assert self.executed is not None  # set with frozen
        self.executed += self._loops_per_step * (~self.frozen)
        if self.tau is None:
            return x_new
        converged = self.relative_residual(x, x_new) < self.tau  # [B], or [] in batch scope
        merged = torch.where(self.frozen.view(batch, *[1] * (x.ndim - 1)), x, x_new)
        self.frozen = self.frozen | converged
        return merged

    def relative_residual(self, x: Tensor, x_new: Tensor) -> Tensor:
        """||x_new - x|| / max(||x||, eps): [B] in row scope, a scalar in batch scope."""
        step, x = (x_new - x).float(), x.float()
        if self.scope == "batch":
            return step.norm() / x.norm().clamp_min(EPS)
        if self.token_mask is not None:  # x is [B, T, H]: zero the padding tokens
            weight = self.token_mask.to(step.dtype).unsqueeze(-1)
            step, x = step * weight, x * weight
        return step.flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1).clamp_min(EPS)

    def groups(self, t: Tensor) -> Tensor:
        """``t`` [B, ..., m] as [groups, N, m] for a least-squares fit: one group per
        row (padding zeroed) in row scope, the whole batch as one group in batch scope."""
        m = t.shape[-1]
        if self.scope == "batch":
            return t.reshape(1, -1, m)
        if self.token_mask is not None:  # t is [B, T, H, m]
            t = t * self.token_mask.to(t.dtype)[:, :, None, None]
        return t.reshape(t.shape[0], -1, m)


def _halting(halt: Halting | None) -> Halting:
    return Halting() if halt is None else halt


# ---- plain iteration ----------------------------------------------------------------------


def naive(g: Pass, x0: Tensor, K: int) -> Tensor:
    """x <- g(x), K times."""
    x = x0
    for _ in range(K):
        x = g(x)
    return x


def residual_scaled(g: Pass, x0: Tensor, K: int) -> Tensor:
    """x0 + (g^K(x0) - x0) / K: the K-fold residual shrunk back to one step's size."""
    y = naive(g, x0, K)
    return x0 + (y - x0) / K


def poly_blend(g: Pass, x0: Tensor, K: int, per_step_alphas: Sequence[float]) -> Tensor:
    """sum_k w_k g^k(x0), k = 0..K: a blend of the pure powers of g."""
    y = x0
    out = per_step_alphas[0] * y
    for w in per_step_alphas[1:]:
        y = g(y)
        out = out + w * y
    return out


# ---- damped iteration (can halt) ----------------------------------------------------------


def euler(g: Pass, x0: Tensor, K: int, halt: Halting | None = None) -> Tensor:
    """Explicit Euler on dx/dt = g(x) - x over t in [0, 1]: x <- x + (g(x) - x) / K."""
    halt, h = _halting(halt), 1.0 / K
    x = x0
    for _ in halt.steps(K):
        x = halt.check(x, x + h * (g(x) - x))
    return x


def ema(g: Pass, x0: Tensor, K: int, ema_alpha: float, halt: Halting | None = None) -> Tensor:
    """Damped Picard: x <- a g(x) + (1 - a) x."""
    halt = _halting(halt)
    x = x0
    for _ in halt.steps(K):
        x = halt.check(x, ema_alpha * g(x) + (1.0 - ema_alpha) * x)
    return x


def ema_sched(g: Pass, x0: Tensor, K: int, per_step_alphas: Sequence[float], halt: Halting | None = None) -> Tensor:
    """ema with its own damping a_k at step k."""
    halt = _halting(halt)
    x = x0
    for k in halt.steps(K):
        a = per_step_alphas[k]
        x = halt.check(x, a * g(x) + (1.0 - a) * x)
    return x


def input_anchor(g: Pass, x0: Tensor, K: int, ema_alpha: float, halt: Halting | None = None) -> Tensor:
    """x <- a g(x) + (1 - a) x0: damping toward the window's input, not the last iterate."""
    halt = _halting(halt)
    x = x0
    for _ in halt.steps(K):
        x = halt.check(x, ema_alpha * g(x) + (1.0 - ema_alpha) * x0)
    return x


def norm_stab(g: Pass, x0: Tensor, K: int, ema_alpha: float, halt: Halting | None = None) -> Tensor:
    """ema, then every token rescaled to its norm at the window's input, so the layers
    after the window see states of the size they were trained on."""
    halt = _halting(halt)
    target = x0.float().norm(dim=-1, keepdim=True).clamp_min(EPS)  # [..., 1]
    x = x0
    for _ in halt.steps(K):
        y = (ema_alpha * g(x) + (1.0 - ema_alpha) * x).float()
        x = halt.check(x, (y * (target / y.norm(dim=-1, keepdim=True).clamp_min(EPS))).to(x.dtype))
    return x


def heavy_ball(
    g: Pass, x0: Tensor, K: int, ema_alpha: float, momentum_beta: float, halt: Halting | None = None
) -> Tensor:
    """Polyak momentum on the residual: x <- x + a (g(x) - x) + b (x - x_prev)."""
    halt = _halting(halt)
    x = x_prev = x0
    for _ in halt.steps(K):
        x_new = x + ema_alpha * (g(x) - x) + momentum_beta * (x - x_prev)
        x_prev, x = x, halt.check(x, x_new)
    return x


def anderson(g: Pass, x0: Tensor, K: int, anderson_m: int, anderson_beta: float, halt: Halting | None = None) -> Tensor:
    """Type-II Anderson acceleration over the last ``anderson_m`` + 1 iterates, damping beta.

    gamma = argmin ||f - dF gamma|| (f = g(x) - x, dF/dX the differences of residuals and
    iterates), solved in fp32 by regularised normal equations; then
    x <- (1 - beta)(x - dX gamma) + beta (g(x) - dF gamma).

    Not causal: gamma is fitted over all positions of a row (or of the batch), so every
    token's state depends on later tokens and cached decoding cannot reproduce it;
    ``LoopSpec`` refuses it with ``cache_strategy="per_loop"`` (``mixes_positions``)."""
    halt, beta = _halting(halt), anderson_beta
    xs: list[Tensor] = []  # iterates x_i
    gs: list[Tensor] = []  # their images g(x_i)
    x = x0
    for _ in halt.steps(K):
        G = g(x)
        xs, gs = [*xs, x][-(anderson_m + 1) :], [*gs, G][-(anderson_m + 1) :]
        if len(xs) == 1:  # no history yet: a damped Picard step
            x_new = (1.0 - beta) * x + beta * G
        else:
            f = [gi - xi for gi, xi in zip(gs, xs, strict=True)]
            dF = torch.stack([b - a for a, b in pairwise(f)], dim=-1).float()  # [..., m]
            dX = torch.stack([b - a for a, b in pairwise(xs)], dim=-1).float()  # [..., m]
            gamma = _mixing_coefficients(halt.groups(dF), halt.groups((G - x).float().unsqueeze(-1)))
            gamma = gamma.view(gamma.shape[0], *[1] * (x.ndim - 1), -1)  # [groups, 1, ..., m]
            step_x, step_f = (dX * gamma).sum(-1).to(x.dtype), (dF * gamma).sum(-1).to(x.dtype)
            x_new = (1.0 - beta) * (x - step_x) + beta * (G - step_f)
        x = halt.check(x, x_new)
    return x


def _mixing_coefficients(dF: Tensor, f: Tensor) -> Tensor:
    """Least-squares gamma [groups, m] of dF [groups, N, m] gamma ~ f [groups, N, 1], with a
    Tikhonov term 1e-6 * max|diag(dF^T dF)|; the diagonal's floor keeps a row whose
    residuals stopped changing (a frozen row) solvable: its gamma is 0."""
    A = dF.mT @ dF  # [groups, m, m]
    scale = A.diagonal(dim1=-2, dim2=-1).abs().amax(dim=-1).clamp_min(1e-8)  # [groups]
    A = A + 1e-6 * scale[:, None, None] * torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
    return torch.linalg.solve(A, (dF.mT @ f).squeeze(-1))


def aitken(g: Pass, x0: Tensor, K: int, halt: Halting | None = None) -> Tensor:
    """Per-coordinate Aitken delta-squared, K/2 steps of two passes each, in fp32: where the
    second difference is meaningful x <- x - d1^2 / d2, elsewhere a plain step x <- g(x);
    each coordinate's move is clipped to |d1| (never farther than plain iteration)."""
    halt = _halting(halt)
    x = x0
    for _ in halt.steps(K // 2, loops_per_step=2):
        g1 = g(x)
        g2 = g(g1)
        d1 = (g1 - x).float()
        d2 = (g2 - 2.0 * g1 + x).float()
        accelerate = d2.abs() > 1e-3 * d1.abs() + 1e-4
        move = torch.where(accelerate, d1 * d1 / torch.where(accelerate, d2, 1.0), -d1)
        move = move.clamp(min=-d1.abs(), max=d1.abs())
        x = halt.check(x, (x.float() - move).to(x.dtype))
    return x


# ---- Runge-Kutta on F(x) = g(x) - x over t in [0, 1], step 1/K ----------------------------


def _velocity(g: Pass) -> Pass:
    return lambda z: g(z) - z


def midpoint(g: Pass, x0: Tensor, K: int) -> Tensor:
    F, h = _velocity(g), 1.0 / K
    x = x0
    for _ in range(K):
        k1 = F(x)
        k2 = F(x + (h / 2.0) * k1)
        x = x + h * k2
    return x


def heun(g: Pass, x0: Tensor, K: int) -> Tensor:
    F, h = _velocity(g), 1.0 / K
    x = x0
    for _ in range(K):
        k1 = F(x)
        k2 = F(x + h * k1)
        x = x + (h / 2.0) * (k1 + k2)
    return x


def rk4(g: Pass, x0: Tensor, K: int) -> Tensor:
    F, h = _velocity(g), 1.0 / K
    x = x0
    for _ in range(K):
        k1 = F(x)
        k2 = F(x + (h / 2.0) * k1)
        k3 = F(x + (h / 2.0) * k2)
        k4 = F(x + h * k3)
        x = x + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
    return x


# ---- anchored and per-layer rules ---------------------------------------------------------


def uniform(layers: Sequence[Pass], x0: Tensor, K: int) -> Tensor:
    """K passes over the window; after layer i on pass t the state handed on is the mean
    of layer i's outputs over passes 1..t."""
    sums: list[Tensor | None] = [None] * len(layers)
    x = x0
    for t in range(K):
        for i, layer in enumerate(layers):
            y = layer(x)
            total = y if (previous := sums[i]) is None else previous + y
            sums[i] = total
            x = total / (t + 1)
    return x


def block_anchored(g: Pass, x0: Tensor, K: int, anchor_beta: float) -> Tensor:
    """Euler whose first step reuses the natural pass, blended back toward it at the exit:
    beta g(x0) + (1 - beta) euler(g, x0, K) (paper Algorithm 3, eq. 16)."""
    natural = g(x0)
    h = x0 + (1.0 / K) * (natural - x0)
    for _ in range(K - 1):
        h = h + (1.0 / K) * (g(h) - h)
    return anchor_beta * natural + (1.0 - anchor_beta) * h


def per_layer_anchored(g: Pass, x0: Tensor, K: int, anchor_beta: float) -> Tensor:
    """block_anchored for one layer (layer mode), written as the reference's convex blends."""
    natural = g(x0)
    h = (1.0 - 1.0 / K) * x0 + (1.0 / K) * natural
    for _ in range(K - 1):
        h = (1.0 - 1.0 / K) * h + (1.0 / K) * g(h)
    return anchor_beta * natural + (1.0 - anchor_beta) * h


def _rescale(a: Tensor, norm: Tensor) -> Tensor:
    """Every token of ``a`` scaled to the per-token L2 norm ``norm`` [..., 1] (fp32 math)."""
    a32 = a.float()
    return (a32 * (norm / a32.norm(dim=-1, keepdim=True).clamp_min(EPS))).to(a.dtype)


def layer_anchored_frozen(
    g: Pass, x0: Tensor, K: int, anchor_beta: float, anchor_rescale: bool, natural: Pass | None = None
) -> Tensor:
    """Per-layer Euler whose token norms follow a straight line from the layer's input
    norm to its natural output's norm, anchored to the natural output at the exit.

    ``natural`` is the layer's ordinary pass (the model wrapper's writes the layer's KV,
    and on an MoE layer would fix the routing that the iterations reuse); ``g`` is the
    loop-body pass. They are the same function outside a model."""
    y = (g if natural is None else natural)(x0)
    n_in = x0.float().norm(dim=-1, keepdim=True)  # [..., 1]
    n_out = y.float().norm(dim=-1, keepdim=True)

    def target(k: int) -> Tensor:
        return n_in + (n_out - n_in) * (k / K)

    h = _rescale((1.0 - 1.0 / K) * x0 + (1.0 / K) * y, target(1))
    for k in range(1, K):
        h = (1.0 - 1.0 / K) * h + (1.0 / K) * g(h)
        if k < K - 1:
            h = _rescale(h, target(k + 1))
    out = anchor_beta * y + (1.0 - anchor_beta) * h
    return _rescale(out, n_out) if anchor_rescale else out


# ---- registry ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Strategy:
    rule: Callable[..., Tensor]
    hyperparameters: tuple[str, ...] = ()  # the LoopSpec fields the rule reads
    halts: bool = False  # takes ``halt`` (and so accepts halt_tau)
    modes: tuple[str, ...] = ("block", "layer")
    over_layers: bool = False  # the rule takes the list of layer passes, not g
    writes_cache: bool = False  # its natural pass writes the window's KV (ignores cache_strategy but per_loop)
    # its update reads other positions (not causal): teacher forcing and cached decoding differ
    mixes_positions: bool = False


STRATEGIES: dict[str, Strategy] = {
    "naive": Strategy(naive),
    "residual_scaled": Strategy(residual_scaled),
    "euler": Strategy(euler, halts=True),
    "ema": Strategy(ema, ("ema_alpha",), halts=True),
    "ema_sched": Strategy(ema_sched, ("per_step_alphas",), halts=True),
    "input_anchor": Strategy(input_anchor, ("ema_alpha",), halts=True),
    "norm_stab": Strategy(norm_stab, ("ema_alpha",), halts=True),
    "heavy_ball": Strategy(heavy_ball, ("ema_alpha", "momentum_beta"), halts=True),
    "anderson": Strategy(anderson, ("anderson_m", "anderson_beta"), halts=True, mixes_positions=True),
    "aitken": Strategy(aitken, halts=True),
    "poly_blend": Strategy(poly_blend, ("per_step_alphas",)),
    "midpoint": Strategy(midpoint),
    "heun": Strategy(heun),
    "rk4": Strategy(rk4),
    "uniform": Strategy(uniform, modes=("block",), over_layers=True),
    "block_anchored": Strategy(block_anchored, ("anchor_beta",), modes=("block",)),
    "per_layer_anchored": Strategy(per_layer_anchored, ("anchor_beta",), modes=("layer",)),
    "layer_anchored_frozen": Strategy(
        layer_anchored_frozen, ("anchor_beta", "anchor_rescale"), modes=("layer",), writes_cache=True
    ),
}
