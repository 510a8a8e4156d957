"""The training-free looped decoder as a registry entry: a pretrained Llama/Qwen3-family
causal LM whose layer window ``loop_decoder(model, spec)`` re-applies K times.

``LoopedDecoderRunner`` runs ``LoopedWindow``; the wrapper is never baked into the
weights, so one loaded model serves every policy. ``HaltingWindowRunner`` runs
``HaltingWindow``: the window's strategy (euler ...) with a ``PromptHalting`` rule that
freezes a row once its signal falls below tau. ``WindowTraceRunner`` runs its
``WindowTrace``: every step of the K_max-step trajectory with both rules' signals, from
which the adaptive stage reads every (rule, tau). ``WindowLadderRunner`` runs
``WindowLadder`` (K per input from a ladder of fixed depths, each a finished
``LoopedWindow(K)`` trajectory, as LoopFormer's ``RungLadder``; the rung is decided on
the prompt alone, the same in scoring and generation) and ``WindowLadderTraceRunner``
its ``WindowLadderTrace`` (every rung's cost and KL to the rung below, from the
prompts; each rung's NLL is the fixed-depth sweep's). Keys and values: the window's KV is
written after the loop by one more pass (``cache_strategy``), from each row's own final
state, so a row that stopped early still leaves KV for every later token. In generation
each call decides on its own new tokens (the prompt at prefill, the new token at each
decode step under decode_mode full). Under ``cache_strategy="per_loop"`` a halting rule
scores as above (teacher forcing keeps no KV) and generates token by token: the prompt
at full depth, then each generated token stops its own loop by the rule, and a later
token reads an exited token's missing passes from its last computed one
(``study.models.looped_decoder``).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.cache_utils import DynamicCache

from study.errors import BackboneError
from study.looping.policies import (
    DepthPolicy,
    HaltingWindow,
    LoopedWindow,
    LoopFamily,
    WindowLadder,
    WindowLadderTrace,
    WindowTrace,
)
from study.looping.spec import LoopSpec
from study.looping.strategies import Halting
from study.models.adaptive import (
    PromptHalting,
    SignalRecorder,
    TraceStep,
    prompt_ladder,
    prompt_mask,
)
from study.models.backbone import Backbone, PolicyRunner
from study.models.generation import DEFAULT_STOP_STRINGS, GenerationResult, forced_decode, greedy_generate
from study.models.hf_compat import cache_kwargs, output_cache, take_cache
from study.models.looped_decoder import (
    LoopedCausalLMOutput,
    LoopedDecoder,
    LoopedModelOutput,
    PrefixStates,
    loop_decoder,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from study.config import AdaptiveConfig, LoopingConfig

IGNORE_INDEX = -100  # label of the prompt and padding tokens (trl's completion-only collator)
# evaluations of the window per loop step where a strategy needs more than one
# (aitken's two passes already count as two loops: see LoopSpec)
WINDOW_EVALUATIONS_PER_LOOP = {"midpoint": 2, "heun": 2, "rk4": 4}


# ---- runners ------------------------------------------------------------------------------


class LoopedCausalLM(nn.Module):
    """The looped decoder with the causal-LM call ``greedy_generate`` makes
    (``logits_to_keep``; loop arguments of LoopFormer are ignored: the spec holds the loop)."""

    def __init__(self, looped: LoopedDecoder) -> None:
        super().__init__()
        self.looped = looped
        self.config = looped.config

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        cache: DynamicCache | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        past_key_values: DynamicCache | None = None,
        **_: Any,
    ) -> LoopedCausalLMOutput:
        cache = take_cache(cache, past_key_values, "LoopedCausalLM.forward")
        out = self.looped.base_forward(input_ids, attention_mask, cache, use_cache)
        hidden = out.last_hidden_state  # [B, T, H]
        assert hidden is not None  # always set: transformers types every output field optional
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        return LoopedCausalLMOutput(
            logits=self.looped.model.lm_head(hidden), executed_loops=out.executed_loops,
            **cache_kwargs(output_cache(out)),
        )  # fmt: skip


class LoopedDecoderRunner(PolicyRunner):
    model: Any  # a Llama/Qwen3-family causal LM: transformers gives them no common type with lm_head
    policy: LoopedWindow

    def __init__(self, model: nn.Module, policy: LoopedWindow) -> None:
        super().__init__(model, policy)
        try:
            self.looped = loop_decoder(model, policy.spec)
        except ValueError as error:  # e.g. a window outside the model's layers
            raise BackboneError(f"looping: {error}") from None
        self.causal_lm = LoopedCausalLM(self.looped)

    @property
    def context_limit(self) -> int:
        return int(self.model.config.max_position_embeddings)

    def hidden(self, input_ids: Tensor, prompt_lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        out = self.looped.base_forward(input_ids, use_cache=False)
        return self._hidden_and_executed(out, input_ids.shape[0])

    def head(self, hidden: Tensor) -> Tensor:
        return self.model.lm_head(hidden)

    @classmethod
    def prefix_key(cls, policy: DepthPolicy) -> Hashable | None:
        # layers 0..a-1 without a cache depend on the window start alone (not on K,
        # the strategy, the cache or decode mode, nor a halting rule)
        assert isinstance(policy, LoopedWindow | HaltingWindow)
        return (policy.backbone, "layers-before", policy.spec.window[0])

    def prefix(self, input_ids: Tensor) -> PrefixStates:
        return self.looped.prefix(input_ids)

    def hidden_from_prefix(self, prefix: PrefixStates, prompt_lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        out = self.looped.forward_from_prefix(prefix)
        return self._hidden_and_executed(out, prefix.hidden.shape[0])

    def _hidden_and_executed(self, out: LoopedModelOutput, batch: int) -> tuple[Tensor, Tensor]:
        hidden = out.last_hidden_state  # [B, T, H]
        assert hidden is not None
        executed = out.executed_loops  # [B], None when no row can stop early
        if executed is None:
            executed = torch.full((batch,), float(self.policy.inference_loops))
        return hidden, executed.detach().float().cpu()

    def generate(self, tokenizer, prompts, max_new_tokens, stop_strings=DEFAULT_STOP_STRINGS, early_stop=True):
        # the wrapper brings its own loop; its cache is a plain one (the looped layers append and crop)
        return greedy_generate(
            self.causal_lm, tokenizer, prompts, max_new_tokens, stop_strings=stop_strings, early_stop=early_stop,
            new_cache=DynamicCache,
        )  # fmt: skip

    @torch.inference_mode()
    def prefill(self, input_ids: Tensor, new_tokens: int) -> None:
        self.causal_lm(input_ids, use_cache=True, logits_to_keep=1)

    def forced_decode(self, input_ids: Tensor, prompt_tokens: int) -> tuple[Tensor, list[float]]:
        logits, loops = forced_decode(self.causal_lm, input_ids, prompt_tokens, DynamicCache())
        fed = input_ids.shape[1] - prompt_tokens - 1
        return logits, loops if loops is not None else [float(self.policy.inference_loops)] * fed


class HaltingWindowRunner(LoopedDecoderRunner):
    """``HaltingWindow``: each row stops looping once its prompt's signal is below tau."""

    policy: HaltingWindow  # type: ignore[assignment]  # the runner of halting windows only

    def __init__(self, model: nn.Module, policy: HaltingWindow) -> None:
        super().__init__(model, LoopedWindow(policy.spec))
        self.policy = policy
        # (prompt mask [B, T], last prompt position [B]) while a teacher-forced batch is scored;
        # None in generation, where each call decides on its own new tokens
        self.decision: tuple[Tensor, Tensor] | None = None
        readout = window_readout(model)

        def make_halting(token_mask: Tensor | None) -> Halting:
            if self.decision is None:  # left padding: a call's last position is always a real token
                return PromptHalting(policy.rule, policy.tau, token_mask, None, readout)
            return PromptHalting(policy.rule, policy.tau, *self.decision, readout)

        self.looped.make_halting = make_halting

    def hidden(self, input_ids: Tensor, prompt_lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self.decision = self._decision(prompt_lengths, input_ids.shape[1], input_ids.device)
        try:
            return super().hidden(input_ids)
        finally:
            self.decision = None

    def hidden_from_prefix(self, prefix: PrefixStates, prompt_lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self.decision = self._decision(prompt_lengths, prefix.hidden.shape[1], prefix.hidden.device)
        try:
            return super().hidden_from_prefix(prefix)
        finally:
            self.decision = None

    def _decision(self, prompt_lengths: Tensor | None, length: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """(prompt mask [B, T], last prompt position [B]) of a teacher-forced batch."""
        if prompt_lengths is None:
            raise ValueError(f"policy {self.policy.id} decides its depth from the prompt: give prompt_lengths")
        mask = prompt_mask(prompt_lengths.cpu(), length).to(device)
        return mask, (prompt_lengths - 1).to(device)


def window_readout(model: nn.Module) -> Callable[[Tensor], Tensor]:
    """The LM head's reading of a window state [..., H] -> [..., V] (a logit lens)."""
    decoder: Any = model  # Llama family: model.model.norm, model.lm_head

    def readout(states: Tensor) -> Tensor:
        return decoder.lm_head(decoder.model.norm(states))

    return readout


class WindowTraceRunner(PolicyRunner):
    """``WindowTrace``: every step of the window's K_max-step trajectory on every row,
    with both rules' signals, for the adaptive stage's lookups. A ``HaltingWindow`` row
    that stops at step k keeps step k's state while its batch mates run on, and its
    signals are the same ``PromptHalting`` computations on the same batch, so its result
    read off the trace is the runner's, bit for bit."""

    model: Any
    policy: WindowTrace

    def __init__(self, model: nn.Module, policy: WindowTrace) -> None:
        super().__init__(model, policy)
        try:
            self.looped = loop_decoder(model, policy.spec)
        except ValueError as error:
            raise BackboneError(f"looping: {error}") from None
        self.readout = window_readout(model)

    @property
    def context_limit(self) -> int:
        return int(self.model.config.max_position_embeddings)

    def head(self, hidden: Tensor) -> Tensor:
        return self.model.lm_head(hidden)

    def trace(self, input_ids: Tensor, prompt_lengths: Tensor) -> Iterator[TraceStep]:
        """One step per step of the loop: the hidden states [B, T, H] of a row stopped
        after it, its loops (k, or 2k for aitken) and each rule's signal there."""
        device = input_ids.device
        mask = prompt_mask(prompt_lengths.cpu(), input_ids.shape[1]).to(device)
        at = (prompt_lengths - 1).to(device)
        rules = {rule: PromptHalting(rule, 0.0, mask, at, self.readout) for rule in self.policy.signals}
        recorder = SignalRecorder(rules, mask)
        for step, hidden in enumerate(self.looped.trajectory(input_ids, recorder)):
            signals: dict[str, Tensor | None] = {rule: recorder.signals[rule][step].cpu() for rule in rules}
            yield TraceStep(step + 1, hidden, recorder.costs[step].float().cpu(), signals)


def ladder_decoders(model: nn.Module, rungs: Sequence[LoopedWindow]) -> list[tuple[int, LoopedDecoder]]:
    """(K, the looped decoder of ``LoopedWindow(K)``) per rung of a looped decoder's ladder."""
    try:
        return [(rung.inference_loops, loop_decoder(model, rung.spec)) for rung in rungs]
    except ValueError as error:  # e.g. a window outside the model's layers
        raise BackboneError(f"looping: {error}") from None


def prompt_rung_logits(
    model: Any, decoders: Sequence[tuple[int, LoopedDecoder]], prompt: Tensor
) -> Iterator[tuple[int, Tensor]]:
    """Per rung (K, logits [1, V] at the last position) of one prompt [1, P] alone: the
    layers below the window once, then each rung's window and the layers above it, on
    the prompt's tokens only (no answer, no padding, no batch mates). Lazy: a rung is
    run only when asked for."""
    # contiguous: a row sliced from a padded batch runs as the same ids given alone
    prefix = decoders[0][1].prefix(prompt.contiguous())  # [1, P, H]: the rungs share the window's start
    for loops, looped in decoders:
        hidden = looped.forward_from_prefix(prefix).last_hidden_state  # [1, P, H]
        assert hidden is not None
        yield loops, model.lm_head(hidden[:, -1])


class WindowLadderRunner(PolicyRunner):
    """``WindowLadder``: K chosen per input from a ladder of fixed depths. The decision
    reads the prompt only, exactly what generation sees: each row's prompt alone
    (``prompt_rung_logits``: a forward of its prompt tokens per rung, the layers below
    the window once) climbs while the KL of the first answer token's distribution to the
    rung below is >= tau (``prompt_ladder``), so a row stops on the same rung in
    scoring, in the adaptive stage's trace and in generation, whatever its batch. It is
    then scored at that rung as ``LoopedWindow(K)`` on the whole batch (the fixed-depth
    sweep's forward: its NLL is the sweep's at K, bit for bit), and pays for every rung
    its prompt ran (stopping at 4 of 1, 2, 4 costs 1 + 2 + 4 loops). Generation decides
    K on each prompt, then decodes each group of equal K at that K."""

    model: Any
    policy: WindowLadder

    def __init__(self, model: nn.Module, policy: WindowLadder) -> None:
        super().__init__(model, policy)
        self.rungs = [LoopedDecoderRunner(model, rung) for rung in policy.rungs]
        self.decoders = [(runner.policy.inference_loops, runner.looped) for runner in self.rungs]

    @property
    def context_limit(self) -> int:
        return int(self.model.config.max_position_embeddings)

    def head(self, hidden: Tensor) -> Tensor:
        return self.model.lm_head(hidden)

    def decide(self, prompt: Tensor) -> tuple[int, float]:
        """(the rung K one prompt [1, P] stops on, the loops it paid to get there)."""
        *_, (loops, paid, _) = prompt_ladder(prompt_rung_logits(self.model, self.decoders, prompt), self.policy.tau)
        return loops, paid

    def hidden(self, input_ids: Tensor, prompt_lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Each row's hidden states [B, T, H] at the rung its prompt stopped on (``input_ids``
        right-padded: row r's prompt is its first ``prompt_lengths[r]`` tokens), and its cost [B]."""
        if prompt_lengths is None:
            raise ValueError(f"policy {self.policy.id} decides its depth from the prompt: give prompt_lengths")
        decisions = [self.decide(input_ids[r : r + 1, : int(n)]) for r, n in enumerate(prompt_lengths.tolist())]
        prefix = self.rungs[0].prefix(input_ids)  # [B, T, H]: as the sweep shares it across K
        hidden: Tensor | None = None
        for runner in self.rungs:  # only the rungs some row stopped on, each on the whole batch
            rows = [r for r, (loops, _) in enumerate(decisions) if loops == runner.policy.inference_loops]
            if rows:
                out, _ = runner.hidden_from_prefix(prefix)  # [B, T, H]
                hidden = torch.zeros_like(out) if hidden is None else hidden
                index = torch.tensor(rows, device=out.device)
                hidden[index] = out[index]
        assert hidden is not None  # every row stops on some rung
        return hidden, torch.tensor([paid for _, paid in decisions])

    def generate(self, tokenizer, prompts, max_new_tokens, stop_strings=DEFAULT_STOP_STRINGS, early_stop=True):
        chosen = self.choose(tokenizer, prompts)
        results: list[GenerationResult | None] = [None] * len(prompts)
        for runner in self.rungs:
            group = [i for i, k in enumerate(chosen) if k == runner.policy.inference_loops]
            if group:
                out = runner.generate(tokenizer, [prompts[i] for i in group], max_new_tokens, stop_strings, early_stop)
                for i, result in zip(group, out, strict=True):
                    results[i] = result
        return results

    def forced_decode(self, input_ids: Tensor, prompt_tokens: int) -> tuple[Tensor, list[float]]:
        """The rung the prompt stops on (``decide``: the prompt alone, as ``generate`` and
        scoring decide it), then the gold continuation decoded at that K."""
        with torch.inference_mode():
            loops, _ = self.decide(input_ids[:, :prompt_tokens])
        chosen = next(runner for runner in self.rungs if runner.policy.inference_loops == loops)
        return chosen.forced_decode(input_ids, prompt_tokens)

    @torch.inference_mode()
    def choose(self, tokenizer, prompts: Sequence[str]) -> list[int]:
        """The rung (K) each prompt stops on, decided on its ids as ``greedy_generate``
        encodes them (``decide``: the same rule as scoring)."""
        chosen = []
        for prompt in prompts:
            ids = torch.tensor([tokenizer.encode(prompt, add_special_tokens=False)], device=self.device)
            chosen.append(self.decide(ids)[0])
        return chosen


class WindowLadderTraceRunner(PolicyRunner):
    """``WindowLadderTrace``: every rung of the ladder on every row's prompt, for the
    adaptive stage's lookups. The signal is ``WindowLadderRunner``'s, computed the same
    way (``prompt_rung_logits`` of each prompt alone, ``prompt_ladder`` never stopping),
    so a ``WindowLadder``'s stopping rung read off the trace is its runner's, bit for
    bit. The trace yields only cost and signal (``TraceStep.hidden`` None): a rung's NLL
    is ``LoopedWindow(K)``'s, which the fixed-depth sweep has already scored
    (``results/nll.csv``), and the stage reads it from there. Cost: per example, the
    prompt's tokens through the layers below the window once and through each rung's
    window and the layers above it (sum(ladder) window passes over the prompt), plus one
    head row per rung; no answer token is run."""

    model: Any
    policy: WindowLadderTrace

    def __init__(self, model: nn.Module, policy: WindowLadderTrace) -> None:
        super().__init__(model, policy)
        self.decoders = ladder_decoders(model, policy.rungs)

    @property
    def context_limit(self) -> int:
        return int(self.model.config.max_position_embeddings)

    def head(self, hidden: Tensor) -> Tensor:
        return self.model.lm_head(hidden)

    def trace(self, input_ids: Tensor, prompt_lengths: Tensor) -> Iterator[TraceStep]:
        """One step per rung (hidden None: the sweep's NLL at K), with the loops paid to
        stop there (every rung so far) and the KL to the rung below (none at the first)."""
        climbs = [
            list(prompt_ladder(prompt_rung_logits(self.model, self.decoders, input_ids[r : r + 1, : int(n)]), None))
            for r, n in enumerate(prompt_lengths.tolist())
        ]  # per row, per rung: (K, paid, KL [1] or None)
        for step, loops in enumerate(self.policy.ladder):
            executed = torch.tensor([climb[step][1] for climb in climbs])
            signals = [climb[step][2] for climb in climbs]
            kl = None if step == 0 else torch.cat([s for s in signals if s is not None])
            yield TraceStep(loops, None, executed, {"kl": kl})


# ---- loading ---------------------------------------------------------------------------------


def has_layer_stack(model: nn.Module) -> bool:
    """Whether ``model`` has the Llama-family ``model.layers`` that ``loop_decoder`` loops."""
    return isinstance(getattr(getattr(model, "model", None), "layers", None), nn.ModuleList)


def load_looped_base(source: str, revision: str | None, device: torch.device) -> PreTrainedModel:
    """A plain Llama/Qwen3-family causal LM in fp32 from a local folder or a hub id."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(source, revision=revision, dtype=torch.float32)
    except OSError as error:
        raise BackboneError(f"{source}: cannot load a causal LM ({' '.join(str(error).split())[:250]})") from None
    if not has_layer_stack(model):
        raise BackboneError(f"{source}: {type(model).__name__} has no model.layers to loop (need Llama/Qwen3 family)")
    return model.to(device).eval()  # type: ignore[arg-type]  # transformers' @wraps on PreTrainedModel.to mistypes it


# ---- analytic cost ----------------------------------------------------------------------


def decoder_layer_flops(config, context: float) -> float:
    """Forward FLOPs of one Llama-family decoder layer for one token attending to
    ``context`` keys: q/o projections (d x heads*head_dim), k/v (d x kv_heads*head_dim),
    the gated MLP (3 matmuls d x i) and attention (4 * context * heads*head_dim)."""
    d = config.hidden_size
    head_dim = getattr(config, "head_dim", None) or d // config.num_attention_heads
    q_width, kv_width = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim
    projections = 2 * (2 * d * q_width + 2 * d * kv_width)
    return projections + 2 * 3 * d * config.intermediate_size + 4 * context * q_width


def looped_decoder_token_flops(
    config, policy: LoopedWindow | HaltingWindow | WindowLadder, context: float, decoding: bool = True
) -> float:
    """Forward FLOPs for one token of a looped decoder: the layers outside the window
    once, the window K times (x evaluations per step of the strategy), plus the pass
    that writes the window's KV when a cache is kept (not under per_loop, whose passes
    write their own); bypassed decode steps run the window once. The LM head (2 d V)
    is included. A halting policy counts at its K_max, a ladder at its top rung."""
    spec = policy.spec
    width = spec.window[1] - spec.window[0] + 1
    if decoding and spec.decode_mode == "bypass":
        window_passes = 1.0
    else:
        window_passes = spec.loops * WINDOW_EVALUATIONS_PER_LOOP.get(spec.strategy, 1)
        window_passes += 1 if spec.cache_strategy not in ("none", "per_loop") else 0  # the KV-writing pass
    layers = config.num_hidden_layers - width + window_passes * width
    return layers * decoder_layer_flops(config, context) + 2 * config.hidden_size * config.vocab_size


# ---- training ---------------------------------------------------------------------------------


def looped_sft_trainer(spec: LoopSpec) -> type:
    """An ``SFTTrainer`` whose forward runs the model through ``loop_decoder(model,
    spec)``: the weights are the plain decoder's, the loss is the looped model's."""
    from trl import SFTTrainer

    class LoopedSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            decoder = self.accelerator.unwrap_model(model)
            looped = loop_decoder(decoder, spec)  # holds references only: gradients reach the decoder
            hidden = looped.base_forward(inputs["input_ids"], attention_mask=inputs.get("attention_mask"))
            labels = inputs["labels"][:, 1:]  # token t is predicted at position t - 1
            scored = labels != IGNORE_INDEX
            assert hidden.last_hidden_state is not None  # always set: transformers types every output field optional
            logits = decoder.lm_head(hidden.last_hidden_state[:, :-1][scored])  # [tokens, V]
            loss = F.cross_entropy(logits.float(), labels[scored], reduction="sum")
            count = scored.sum() if num_items_in_batch is None else num_items_in_batch
            # like the causal-LM loss with num_items_in_batch: a sum over the tokens of the whole
            # accumulated batch, divided once by their number
            loss = loss / torch.as_tensor(count, device=loss.device).clamp(min=1)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes
            return (loss, None) if return_outputs else loss

    return LoopedSFTTrainer


# ---- the entry ------------------------------------------------------------------------------


class LoopedDecoderBackbone(Backbone):
    name = "looped_decoder"
    title = "a looped pretrained decoder"
    depth_symbol = "K"
    runners = {
        LoopedWindow: LoopedDecoderRunner, HaltingWindow: HaltingWindowRunner, WindowTrace: WindowTraceRunner,
        WindowLadder: WindowLadderRunner, WindowLadderTrace: WindowLadderTraceRunner,
    }  # fmt: skip

    def accepts(self, model: nn.Module) -> bool:
        return has_layer_stack(model)

    def load(self, source: str, revision: str | None, device: torch.device) -> PreTrainedModel:
        return load_looped_base(source, revision, device)

    def check_checkpoint(self, source: str) -> None:
        # nothing to read before loading: ``load`` names what it cannot load (and the offline
        # SmolLM2 base is dequantized into the run directory, which does not exist yet)
        return None

    def training_depth(self, source: str) -> int:
        return 1  # a pretrained decoder runs its window once: K = 1 is its training depth

    def token_flops(self, model_config: Any, policy: DepthPolicy, context: float) -> float:
        assert isinstance(policy, LoopedWindow | HaltingWindow | WindowLadder)
        return looped_decoder_token_flops(model_config, policy, context)

    def sft_trainer(self, policy: DepthPolicy) -> type:
        assert isinstance(policy, LoopedWindow)
        return looped_sft_trainer(policy.spec)

    def set_train_depth(self, model: PreTrainedModel, loops: int) -> None:
        # the weights stay the plain decoder's: the depth is in loop_policy.json beside them
        return None

    def halting_policies(self, family: LoopFamily, section: AdaptiveConfig) -> list[DepthPolicy]:
        """The window family (each rule x tau, halting a K_max-step trajectory) when ``k_max``
        is given, then the ladder family (kl x tau over fixed depths) when ``ladder`` is."""
        policies: list[DepthPolicy] = []
        if section.k_max is not None:
            window = family.policy(section.k_max)
            assert isinstance(window, LoopedWindow)
            policies += [HaltingWindow(window.spec, rule, tau) for rule in section.rules for tau in section.taus]
        if section.ladder is not None:
            top = family.policy(section.ladder[-1])
            assert isinstance(top, LoopedWindow)
            policies += [WindowLadder(tuple(section.ladder), tau, top.spec) for tau in section.taus]
        return policies

    def decode_halting(self, looping: LoopingConfig | None) -> str | None:
        # per_loop: each generated token halts on its own and the gold answer fed token by token
        # scores what teacher forcing scores; other cache strategies write KV the sweep never sees
        return "token" if looping is not None and looping.cache_strategy == "per_loop" else None

    def depth_axis(self, looping: LoopingConfig | None) -> str:
        if looping is None:
            return "inference loops (test-time depth)"
        a, b = looping.window
        return f"inference loops K (layers {a}-{b} looped, {looping.strategy})"
