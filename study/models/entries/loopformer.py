"""LoopFormer (``study.models.loopformer``) as a registry entry: its runners of
``UniformLoops``, ``StepSchedule``, ``RungLadder`` and ``LadderTrace``, loading, checks,
FLOPs and SFT.

LoopFormer takes its depth as arguments of the forward pass (``num_loops``/``schedule``),
so one loaded model runs every policy. ``LadderRunner`` chooses M per input: it runs
rung after rung on the rows still climbing and scores each row at the rung it stopped
on; generation decides M on the prompt, then decodes the whole answer at that M.
LoopFormer keeps this per-prompt ladder in decoding, where the looped decoder halts per
generated token: its steps are conditioned on (t, dt) with dt = 1/M, so M must be known
before a token's first step, and a token cannot stop its own loop part way through.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence
from dataclasses import replace
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from study.errors import CheckpointError
from study.looping.policies import DepthPolicy, LadderTrace, LoopFamily, RungLadder, StepSchedule, UniformLoops
from study.models.adaptive import Rung, TraceStep, climb_ladder, ladder_steps
from study.models.backbone import Backbone, PolicyRunner
from study.models.generation import (
    DEFAULT_STOP_STRINGS,
    GenerationResult,
    forced_decode,
    greedy_generate,
    preallocated_cache,
)
from study.models.loopformer import (
    LoopFormerConfig,
    LoopFormerForCausalLM,
    LoopFormerModel,
    check_local_checkpoint,
    read_checkpoint_config,
    resolve_schedule,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from study.config import AdaptiveConfig, LoopingConfig

DEFAULT_TRAIN_LOOPS = 8  # LoopFormerConfig's, for a hub base whose config is not read before loading


# ---- runners ------------------------------------------------------------------------------


class LoopFormerRunner(PolicyRunner):
    model: LoopFormerForCausalLM
    policy: UniformLoops | StepSchedule

    @property
    def context_limit(self) -> int:
        return int(self.model.config.block_size)

    def hidden(self, input_ids: Tensor, prompt_lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        kwargs = self.policy.loopformer_kwargs()
        hidden = self.model.gpt(input_ids, use_cache=False, **kwargs).last_hidden_state  # [B, T, H]
        executed = torch.full((input_ids.shape[0],), float(self.policy.inference_loops))  # [B]
        return hidden, executed

    def head(self, hidden: Tensor) -> Tensor:
        return self.model.lm_head(hidden)

    def generate(self, tokenizer, prompts, max_new_tokens, stop_strings=DEFAULT_STOP_STRINGS, early_stop=True):
        return greedy_generate(
            self.model, tokenizer, prompts, max_new_tokens, stop_strings=stop_strings, early_stop=early_stop,
            **self.policy.loopformer_kwargs(),
        )  # fmt: skip

    @classmethod
    def prefix_key(cls, policy: DepthPolicy) -> Hashable | None:
        # the schedules of a sweep share their input states and every common prefix of steps
        # (the 35 schedules of 4 steps in eighths run 90 distinct steps instead of 140); a
        # uniform depth shares little with the others and runs alone
        return (policy.backbone, "schedule-steps") if isinstance(policy, StepSchedule) else None

    def prefix(self, input_ids: Tensor) -> ScheduleStates:
        return ScheduleStates(self.model.gpt, input_ids)

    def hidden_from_prefix(self, prefix: ScheduleStates, prompt_lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        kwargs = self.policy.loopformer_kwargs()
        hidden = prefix.hidden(resolve_schedule(kwargs.get("schedule"), kwargs.get("num_loops"), 1))  # [B, T, H]
        return hidden, torch.full((hidden.shape[0],), float(self.policy.inference_loops))

    @torch.inference_mode()
    def prefill(self, input_ids: Tensor, new_tokens: int) -> None:
        steps = self.policy.inference_loops
        cache = preallocated_cache(self.model, steps, input_ids.shape[1] + new_tokens - 1)
        kwargs = self.policy.loopformer_kwargs()
        self.model(input_ids, cache=cache, use_cache=True, logits_to_keep=1, **kwargs)

    def forced_decode(self, input_ids: Tensor, prompt_tokens: int) -> tuple[Tensor, list[float]]:
        return self.decode_at(input_ids, prompt_tokens, self.policy.loopformer_kwargs())

    def decode_at(self, input_ids: Tensor, prompt_tokens: int, kwargs: dict[str, Any]) -> tuple[Tensor, list[float]]:
        """``forced_decode`` at the depth ``kwargs`` give (``num_loops`` or ``schedule``)."""
        steps = len(resolve_schedule(kwargs.get("schedule"), kwargs.get("num_loops"), self.model.config.train_loops))
        cache = preallocated_cache(self.model, steps, input_ids.shape[1] - 1)
        logits, _ = forced_decode(self.model, input_ids, prompt_tokens, cache, **kwargs)
        return logits, [float(steps)] * (input_ids.shape[1] - prompt_tokens - 1)


class ScheduleStates:
    """A scoring batch's states after each prefix of steps, shared by the schedules of a
    sweep (``LoopFormerRunner.prefix``): the state after steps s_1..s_i depends on those
    steps alone (their sizes and, through t, their order), so schedules with a common
    prefix compute it once. Only the states along the last schedule's path are kept (at
    most M + 1 of them): in the sweep's lexicographic order no prefix is needed again
    once left. Each step runs ``LoopFormerModel.run_step`` with ``step_modulations`` as
    ``forward`` does, so the hidden states equal ``forward``'s bit for bit."""

    def __init__(self, gpt: LoopFormerModel, input_ids: Tensor) -> None:
        self.gpt = gpt
        x, self.mask = gpt.teacher_forced_inputs(input_ids)  # [B, T, d]
        self.path: list[tuple[tuple[float, ...], Tensor]] = [((), x)]  # (steps so far, state after them)
        self.steps_run = 0  # steps computed (for the tests and the bench)

    def hidden(self, steps: Sequence[float]) -> Tensor:
        """Final hidden states [B, T, d] after ``steps``."""
        steps = tuple(steps)
        kept = 1
        while kept < len(self.path) and self.path[kept][0] == steps[:kept]:
            kept += 1
        del self.path[kept:]
        done, x = self.path[-1]
        t = 0.0
        for dt in done:  # the time of the next step, summed in forward's order
            t += dt
        for i in range(len(done), len(steps)):
            x = self.gpt.run_step(x, self.gpt.step_modulations(t, steps[i]), self.mask, None, i)
            t += steps[i]
            self.path.append((steps[: i + 1], x))
            self.steps_run += 1
        return self.gpt.transformer.norm_f(x)


class LadderRunner(LoopFormerRunner):
    """``RungLadder``: M chosen per input from the prompt (see the module docstring)."""

    policy: RungLadder  # type: ignore[assignment]  # the runner of the ladder only

    @classmethod
    def prefix_key(cls, policy: DepthPolicy) -> Hashable | None:
        return None  # its rows stop at different rungs: nothing to share

    def hidden(self, input_ids: Tensor, prompt_lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Each row's hidden states [B, T, H] at the rung it stopped on, and its cost [B]
        (the sum of the rungs it ran)."""
        if prompt_lengths is None:
            raise ValueError(f"policy {self.policy.id} decides its depth from the prompt: give prompt_lengths")
        hidden, cost, _ = self.climb(input_ids, prompt_lengths - 1)
        return hidden, cost

    def climb(self, input_ids: Tensor, decide_at: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(hidden [B, T, H] at each row's final rung, cost [B], final rung [B])."""
        gpt = self.model.gpt

        def rung(loops: int) -> Rung:
            return loops, lambda ids: gpt(ids, use_cache=False, num_loops=loops).last_hidden_state

        rungs = [rung(loops) for loops in self.policy.ladder]
        return climb_ladder(rungs, self.model.lm_head, self.policy.tau, input_ids, decide_at)

    def generate(self, tokenizer, prompts, max_new_tokens, stop_strings=DEFAULT_STOP_STRINGS, early_stop=True):
        """Decide M on each prompt alone, then decode each group of equal M at that M (per
        prompt, never per token: the schedule needs M up front; see the module docstring)."""
        chosen = self.choose(tokenizer, prompts)
        results: list[GenerationResult | None] = [None] * len(prompts)
        for loops in sorted(set(chosen)):
            group = [i for i, m in enumerate(chosen) if m == loops]
            out = greedy_generate(
                self.model, tokenizer, [prompts[i] for i in group], max_new_tokens, stop_strings=stop_strings,
                early_stop=early_stop, num_loops=loops,
            )  # fmt: skip
            for i, result in zip(group, out, strict=True):  # every token fed back ran M loops
                results[i] = replace(result, token_loops=[float(loops)] * max(len(result.token_ids) - 1, 0))
        return results

    def forced_decode(self, input_ids: Tensor, prompt_tokens: int) -> tuple[Tensor, list[float]]:
        """The rung the prompt stops on (``climb`` on the prompt alone, as ``generate``
        decides it), then the gold continuation decoded at that M."""
        _, _, rung = self.climb(input_ids[:, :prompt_tokens], torch.tensor([prompt_tokens - 1]))
        return self.decode_at(input_ids, prompt_tokens, {"num_loops": int(rung[0])})

    @torch.inference_mode()
    def choose(self, tokenizer, prompts: Sequence[str]) -> list[int]:
        """The rung each prompt stops on (each prompt alone: no padding, no batch mates)."""
        chosen = []
        for prompt in prompts:
            ids = torch.tensor([tokenizer(prompt)["input_ids"]], device=self.device)
            _, _, rung = self.climb(ids, torch.tensor([ids.shape[1] - 1]))
            chosen.append(int(rung[0]))
        return chosen


class LadderTraceRunner(PolicyRunner):
    """``LadderTrace``: every rung of the ladder on every row, for the adaptive stage's
    lookups. A row's rung-M hidden states are ``UniformLoops(M)``'s (whichever rows share
    its batch), and its signal is computed as ``LadderRunner`` computes it (row by row),
    so a ``RungLadder``'s result read off the trace is the runner's, bit for bit."""

    model: LoopFormerForCausalLM
    policy: LadderTrace

    @property
    def context_limit(self) -> int:
        return int(self.model.config.block_size)

    def head(self, hidden: Tensor) -> Tensor:
        return self.model.lm_head(hidden)

    def trace(self, input_ids: Tensor, prompt_lengths: Tensor) -> Iterator[TraceStep]:
        """One step per rung: its hidden states [B, T, H], the loops paid to stop there
        (every rung so far) and the KL of the first answer token's distribution to the
        rung below (none at the first rung)."""
        gpt = self.model.gpt
        rungs = ((m, gpt(input_ids, use_cache=False, num_loops=m).last_hidden_state) for m in self.policy.ladder)
        yield from ladder_steps(rungs, self.model.lm_head, prompt_lengths - 1)


# ---- analytic cost ----------------------------------------------------------------------


def block_matmul_flops(config) -> int:
    """Forward FLOPs of one block's weight matmuls for one token: 2 per multiply-add over
    c_attn (d×3d), attn.c_proj (d×d), mlp.c_fc (d×i) and mlp.c_proj (i×d)."""
    d, i = config.n_embd, config.intermediate_dim
    return 2 * (4 * d * d + 2 * d * i)


def token_flops(config, loops: int, context: float, head: bool = True) -> float:
    """Forward FLOPs for one token that attends to ``context`` keys, at ``loops`` uniform
    steps of the ``n_layer`` shared blocks::

        loops * n_layer * (2 * (4 d^2 + 2 d i)  +  4 * context * d)  +  2 * d * V

    The first term is the blocks' weight matmuls, the second attention (q.k over the
    context and the weighted sum of values, 2 * context * d each), the last the tied LM
    head (dropped with ``head=False``). Norms, GELU, softmax, embedding lookups and the
    adaLN conditioning (once per forward, not per token) are left out: they are a few
    percent at these widths."""
    per_block = block_matmul_flops(config) + 4 * context * config.n_embd
    head_flops = 2 * config.n_embd * config.vocab_size if head else 0
    return loops * config.n_layer * per_block + head_flops


# ---- the entry ------------------------------------------------------------------------------


@cache
def loopformer_module_names() -> tuple[str, ...]:
    """Module names of a LoopFormer (they do not depend on its sizes)."""
    tiny = LoopFormerConfig(block_size=4, vocab_size=4, n_layer=1, n_head=1, n_embd=4, intermediate_dim=4)
    return tuple(name for name, _ in LoopFormerForCausalLM(tiny).named_modules() if name)


class LoopFormerBackbone(Backbone):
    name = "loopformer"
    title = "LoopFormer"
    depth_symbol = "M"
    runners = {
        UniformLoops: LoopFormerRunner, StepSchedule: LoopFormerRunner, RungLadder: LadderRunner,
        LadderTrace: LadderTraceRunner,
    }  # fmt: skip

    def accepts(self, model: nn.Module) -> bool:
        # by its config's model_type, as transformers' Auto classes tell models apart
        return getattr(getattr(model, "config", None), "model_type", None) == LoopFormerConfig.model_type

    def load(self, source: str, revision: str | None, device: torch.device) -> LoopFormerForCausalLM:
        try:
            model = LoopFormerForCausalLM.from_pretrained(source, revision=revision, dtype=torch.float32)
        except OSError as error:
            raise CheckpointError(f"{source}: cannot load checkpoint ({' '.join(str(error).split())[:300]})") from None
        return model.to(device).eval()

    def check_checkpoint(self, source: str) -> None:
        if Path(source).is_dir():  # a hub id is checked by from_pretrained as it downloads
            check_local_checkpoint(Path(source))

    def training_depth(self, source: str) -> int:
        config_path = Path(source) / "config.json"
        if not config_path.is_file():
            return DEFAULT_TRAIN_LOOPS
        return read_checkpoint_config(config_path).get("train_loops", DEFAULT_TRAIN_LOOPS)

    def token_flops(self, model_config: Any, policy: DepthPolicy, context: float) -> float:
        return token_flops(model_config, policy.inference_loops, context)

    def sft_trainer(self, policy: DepthPolicy) -> type:
        from trl import SFTTrainer  # trl reaches LoopFormer through its config's train_loops

        return SFTTrainer

    def set_train_depth(self, model: PreTrainedModel, loops: int) -> None:
        # trl calls the model with input ids and mask only: the loop count travels in its config
        model.config.train_loops = loops

    def halting_policies(self, family: LoopFamily, section: AdaptiveConfig) -> list[DepthPolicy]:
        assert section.ladder is not None  # the config requires a ladder for LoopFormer
        return [RungLadder(tuple(section.ladder), tau) for tau in section.taus]

    def decode_halting(self, looping: LoopingConfig | None) -> str | None:
        return "prompt"  # a ladder picks M per prompt: the schedule needs M before a token's first step

    def depth_axis(self, looping: LoopingConfig | None) -> str:
        return "inference loops (test-time depth)"

    def module_names(self) -> tuple[str, ...]:
        return loopformer_module_names()
