"""LoopFormer: an elastic-depth looped transformer, as a Hugging Face model.

A nanoGPT-style decoder whose shared stack of ``n_layer`` blocks is applied once per
step of a *schedule* (a list of step sizes summing to 1). Step i runs at time
t_i = sum of the earlier steps with step size dt_i; both reach every block through
adaLN: the scale of the no-affine RMSNorms and gates on the attention and MLP
residuals. ``num_loops=M`` is the uniform schedule of M steps of 1/M.

Module names follow the authors' implementation so the released checkpoint
(``armenjeddi/LoopFormer-3block-8iterations``) loads key for key under the ``gpt.``
prefix; the LM head is tied to the token embedding and not stored.
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, cast

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    GenerationMixin,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, slice_logits_to_keep
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs
from transformers.utils.generic import can_return_tuple

from study.errors import CheckpointError as CheckpointError  # re-exported: raised here
from study.models.hf_compat import cache_kwargs, output_cache, take_cache
from study.models.validation import read_json_object, validate_model_config, validate_weights

SCHEDULE_TOLERANCE = 1e-6


class LoopFormerKwargs(TransformersKwargs, total=False):
    """Keywords ``forward`` takes beyond its named ones: transformers' shared set (the
    Trainer passes ``num_items_in_batch``, ``generate`` ``return_dict``). Anything else is
    refused, so a misspelt ``num_loop=4`` cannot silently run the default depth."""

    return_dict: bool | None
    # ``generate(..., stop_strings=..., tokenizer=tok)`` hands its tokenizer on to every
    # forward along with the model inputs (transformers 5.x); it means nothing here
    tokenizer: object


ACCEPTED_KWARGS = LoopFormerKwargs.__optional_keys__ | LoopFormerKwargs.__required_keys__
# accepted for signature compatibility, but this model has nothing to give when they are set
UNSUPPORTED_WHEN_SET = ("output_attentions", "output_router_logits", "cu_seq_lens_q", "cu_seq_lens_k", "seq_idx")


def check_kwargs(kwargs: dict, where: str) -> None:
    unknown = sorted(set(kwargs) - ACCEPTED_KWARGS)
    if unknown:
        raise TypeError(
            f"{where}() got unexpected keyword arguments {unknown}: LoopFormer takes its depth as "
            "num_loops= or schedule=, and otherwise only transformers' shared keywords"
        )
    unsupported = [k for k in UNSUPPORTED_WHEN_SET if kwargs.get(k) not in (None, False)]
    if unsupported or kwargs.get("is_causal") is False:
        raise ValueError(f"{where}(): {unsupported or ['is_causal=False']} not supported by LoopFormer")


class LoopFormerConfig(PretrainedConfig):
    """Fields of the released ``config.json`` plus ``train_loops``, the loop count a
    forward pass uses when it is given neither ``schedule`` nor ``num_loops``."""

    model_type = "loopformer"
    attribute_map = {
        "hidden_size": "n_embd",
        "num_hidden_layers": "n_layer",
        "num_attention_heads": "n_head",
        "max_position_embeddings": "block_size",
        "intermediate_size": "intermediate_dim",
    }

    def __init__(
        self,
        block_size: int = 1024,
        vocab_size: int = 50304,
        n_layer: int = 3,
        n_head: int = 32,
        n_embd: int = 2048,
        intermediate_dim: int = 5120,
        bias: bool = False,
        dropout: float = 0.0,
        train_loops: int = 8,
        initializer_range: float = 0.02,
        bos_token_id: int = 50256,
        eos_token_id: int = 50256,
        pad_token_id: int = 50256,
        tie_word_embeddings: bool = True,
        **kwargs,
    ) -> None:
        self.block_size = block_size
        self.vocab_size = vocab_size
        self.n_layer = n_layer
        self.n_head = n_head
        self.n_embd = n_embd
        self.intermediate_dim = intermediate_dim
        self.bias = bias
        self.dropout = dropout
        self.train_loops = train_loops
        self.initializer_range = initializer_range
        if n_embd % n_head:
            raise ValueError(f"n_embd ({n_embd}) must be divisible by n_head ({n_head})")
        if train_loops < 1:
            raise ValueError(f"train_loops must be a positive integer, got {train_loops}")
        # transformers 5.25 types PreTrainedConfig.__init__ by its dataclass fields only; the token ids
        # and tie_word_embeddings still reach it through **kwargs (its __post_init__)
        super().__init__(  # type: ignore[call-arg]
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )


def resolve_schedule(schedule: Sequence[float] | None, num_loops: int | None, default_loops: int) -> list[float]:
    """The step sizes a forward pass runs: ``schedule`` if given, else ``num_loops``
    uniform steps, else ``default_loops`` uniform steps."""
    if schedule is not None and num_loops is not None:
        raise ValueError("pass either schedule or num_loops, not both")
    if schedule is None:
        loops = default_loops if num_loops is None else num_loops
        if isinstance(loops, bool) or not isinstance(loops, int) or loops < 1:
            raise ValueError(f"num_loops must be a positive integer, got {loops!r}")
        return [1.0 / loops] * loops
    steps = [float(s) for s in schedule]
    if not steps:
        raise ValueError("schedule is empty: it needs at least one step size")
    bad = [s for s in steps if not s > 0]
    if bad:
        raise ValueError(f"schedule has non-positive step sizes {bad}: every step must be > 0")
    total = math.fsum(steps)
    if abs(total - 1.0) > SCHEDULE_TOLERANCE:
        raise ValueError(f"schedule sums to {total!r}, not 1 (tolerance {SCHEDULE_TOLERANCE})")
    return steps


class TimestepEmbedder(nn.Module):
    """Scalar -> [cos(s*f), sin(s*f)] with 128 geometric frequencies -> MLP."""

    frequency_dim = 256

    def __init__(self, n_embd: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(self.frequency_dim, n_embd), nn.SiLU(), nn.Linear(n_embd, n_embd))

    def forward(self, s: float) -> torch.Tensor:
        weight = cast(nn.Linear, self.mlp[0]).weight
        half = self.frequency_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=weight.device, dtype=torch.float32) / half)
        angles = float(s) * freqs
        features = torch.cat([torch.cos(angles), torch.sin(angles)]).to(weight.dtype)
        return self.mlp(features[None])  # (1, n_embd): one vector shared by every sequence


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention written out, for ``attn_implementation="eager"``. q: (B, H, T, D), k and
    v: (B, H, S, D), ``attention_mask``: additive (B, 1, T, S) float. Returns (B, T, H, D)."""
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = F.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


class CausalSelfAttention(nn.Module):
    is_causal = True  # read by transformers' sdpa integration

    def __init__(self, config: LoopFormerConfig) -> None:
        super().__init__()
        self.config = config
        self.n_head = config.n_head
        self.scaling = (config.n_embd // config.n_head) ** -0.5
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None,
        cache: Cache | None,
        cache_index: int,
    ) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.c_attn(x).split(width, dim=2)  # fused QKV: one matmul, (B, T, d) each
        q, k, v = (z.view(batch, length, self.n_head, -1).transpose(1, 2) for z in (q, k, v))  # (B, H, T, D)
        if cache is not None:
            k, v = cache.update(k, v, cache_index)  # (B, H, past + T, D)
        attention = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        y, _ = attention(self, q, k, v, attn_mask, dropout=self.dropout if self.training else 0.0, scaling=self.scaling)
        return self.resid_dropout(self.c_proj(y.reshape(batch, length, width)))


class MLP(nn.Module):
    def __init__(self, config: LoopFormerConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, config.intermediate_dim, bias=config.bias)
        self.c_proj = nn.Linear(config.intermediate_dim, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))


class LoopBlock(nn.Module):
    """Pre-norm block whose norms are scaled and residuals gated by the loop's (t, dt)."""

    def __init__(self, config: LoopFormerConfig) -> None:
        super().__init__()
        self.norm_1 = nn.RMSNorm(config.n_embd, elementwise_affine=False)
        self.attn = CausalSelfAttention(config)
        self.norm_2 = nn.RMSNorm(config.n_embd, elementwise_affine=False)
        self.mlp = MLP(config)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(config.n_embd, 4 * config.n_embd, bias=True))

    def forward(
        self,
        x: torch.Tensor,
        modulation: torch.Tensor,
        attn_mask: torch.Tensor | None,
        cache: Cache | None,
        cache_index: int,
    ) -> torch.Tensor:
        """``modulation`` is ``adaLN_modulation(conditioning)``, shaped (1, 1, 4*n_embd)."""
        gate_attn, gate_mlp, scale_attn, scale_mlp = modulation.chunk(4, dim=-1)
        x = x + gate_attn * self.attn(self.norm_1(x) * (1 + scale_attn), attn_mask, cache, cache_index)
        x = x + gate_mlp * self.mlp(self.norm_2(x) * (1 + scale_mlp))
        return x


class LoopStack(nn.Module):
    """The shared blocks; a module of its own so keys read ``transformer.h.blocks.{i}``."""

    def __init__(self, config: LoopFormerConfig) -> None:
        super().__init__()
        # typed as what it holds: an nn.ModuleList iterates and indexes as plain Modules
        self.blocks = cast("Sequence[LoopBlock]", nn.ModuleList(LoopBlock(config) for _ in range(config.n_layer)))


class Trunk(Protocol):
    """The modules in ``LoopFormerModel.transformer`` (an ``nn.ModuleDict``), for the type checker."""

    wte: nn.Embedding
    wpe: nn.Embedding
    drop: nn.Dropout
    h: LoopStack
    norm_f: nn.RMSNorm


class LoopFormerPreTrainedModel(PreTrainedModel):
    config_class = LoopFormerConfig
    config: LoopFormerConfig
    base_model_prefix = "gpt"
    main_input_name = "input_ids"
    _no_split_modules = ["LoopBlock"]
    _supports_sdpa = True
    _supports_attention_backend = True

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, LoopBlock):
            # adaLN-zero as in DiT: every loop step starts as the identity (matters only from scratch)
            modulation = cast(nn.Linear, module.adaLN_modulation[1])
            init.zeros_(modulation.weight)
            init.zeros_(modulation.bias)
        if isinstance(module, (CausalSelfAttention, MLP)):
            std = self.config.initializer_range / math.sqrt(2 * self.config.n_layer)
            init.normal_(module.c_proj.weight, mean=0.0, std=std)


class LoopFormerModel(LoopFormerPreTrainedModel):
    """The backbone: embeddings, the looped stack and the final norm (no head)."""

    def __init__(self, config: LoopFormerConfig) -> None:
        super().__init__(config)
        trunk = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=LoopStack(config),
                norm_f=nn.RMSNorm(config.n_embd),
            )
        )
        self.transformer = cast(Trunk, trunk)
        self.time_embedder = TimestepEmbedder(config.n_embd)
        self.dt_embedder = TimestepEmbedder(config.n_embd)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.transformer.wte

    def set_input_embeddings(self, value: nn.Embedding) -> None:  # type: ignore[override]  # only an Embedding fits
        self.transformer.wte = value

    def loop_modulations(
        self, schedule: Sequence[float] | None = None, num_loops: int | None = None
    ) -> list[list[torch.Tensor]]:
        """Every block's adaLN output at every step of the schedule, ``[step][block]`` of
        (1, 1, 4*n_embd). The (t, dt) conditioning does not depend on the tokens, so a
        cached forward computes it once per cache (``cached_modulations``). Each step
        is its own matrix-vector product, as in the authors' code: batching the steps
        into one matmul changes the last bits of the logits (2.9e-6 vs 1.0e-6 max-abs on
        the conformance fixture)."""
        steps = resolve_schedule(schedule, num_loops, self.config.train_loops)
        modulations, t = [], 0.0
        for dt in steps:
            modulations.append(self.step_modulations(t, dt))
            t += dt
        return modulations

    def step_modulations(self, t: float, dt: float) -> list[torch.Tensor]:
        """Every block's adaLN output for the step at time ``t`` of size ``dt``: (1, 1, 4*n_embd) each."""
        conditioning = self.time_embedder(t) + self.dt_embedder(dt)
        return [b.adaLN_modulation(conditioning)[:, None, :] for b in self.transformer.h.blocks]

    def run_step(
        self, x: torch.Tensor, modulations: Sequence[torch.Tensor], attn_mask: torch.Tensor | None,
        cache: Cache | None, step: int,
    ) -> torch.Tensor:  # fmt: skip
        """One step of the schedule: every block on x (B, T, d) with that step's modulations."""
        blocks = self.transformer.h.blocks
        for i, (block, modulation) in enumerate(zip(blocks, modulations, strict=True)):
            x = block(x, modulation, attn_mask, cache, step * len(blocks) + i)
        return x

    def teacher_forced_inputs(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """What ``forward`` feeds its first step for ``input_ids`` (B, T) with no cache and no
        attention mask (a right-padded scoring batch): the input states (B, T, d) and the
        causal mask (None when the attention kernel's causal flag says it all)."""
        self._check_length(input_ids.shape[1], 0)
        position_ids = torch.arange(input_ids.shape[1], device=input_ids.device)[None]
        x = self.transformer.drop(self.transformer.wte(input_ids) + self.transformer.wpe(position_ids))
        mask = create_causal_mask(
            config=self.config, inputs_embeds=x, attention_mask=None, position_ids=position_ids, **cache_kwargs(None)
        )
        return x, mask

    def _check_length(self, length: int, past_length: int) -> None:
        if past_length + length > self.config.block_size:
            raise ValueError(f"sequence length {past_length + length} exceeds block_size {self.config.block_size}")

    def cached_modulations(self, cache: Cache, steps: list[float]) -> list[list[torch.Tensor]]:
        """Modulations for ``steps``, and a guard on the cache: its keys were computed at one
        schedule and mean nothing at another, so reusing it at a different one is refused.
        Without gradients the modulations are kept on the cache: a decode step then reads
        no adaLN or timestep weights at all."""
        filled_at = getattr(cache, "loop_schedule", None)
        if cache.get_seq_length() > 0 and filled_at is not None and filled_at != steps:
            raise ValueError(
                f"this cache was filled at schedule {filled_at} and cannot be reused at {steps}: "
                "start a new cache for another depth"
            )
        marked: Any = cache  # loop_schedule and loop_modulations are this model's own attributes on the cache
        if filled_at != steps or torch.is_grad_enabled() or getattr(cache, "loop_modulations", None) is None:
            modulations = self.loop_modulations(steps)
            marked.loop_schedule = steps
            marked.loop_modulations = None if torch.is_grad_enabled() else modulations
            return modulations
        return marked.loop_modulations

    def forward(  # type: ignore[misc]  # TransformersKwargs repeats two named params, as in transformers' models
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        schedule: Sequence[float] | None = None,
        num_loops: int | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        inputs_embeds: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        **kwargs: Unpack[LoopFormerKwargs],
    ) -> BaseModelOutputWithPast:
        """Hidden states after ``schedule`` (or ``num_loops`` uniform steps). The KV cache is
        taken as ``cache=`` (transformers >= 5.24) or ``past_key_values=`` (before)."""
        check_kwargs(kwargs, f"{type(self).__name__}.forward")
        cache = take_cache(cache, past_key_values, f"{type(self).__name__}.forward")
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.transformer.wte(input_ids)  # (B, T, d)
        steps = resolve_schedule(schedule, num_loops, self.config.train_loops)
        length = inputs_embeds.shape[1]
        blocks = self.transformer.h.blocks
        if use_cache is None:
            use_cache = not self.training
        if use_cache and cache is None:
            cache = DynamicCache()
        if not use_cache:
            cache = None
        past_length = cache.get_seq_length() if cache is not None else 0
        if cache is not None:
            modulations = self.cached_modulations(cache, steps)
            # one cache slot per (schedule step, block): loops never share keys
            while len(cache.layers) < len(steps) * len(blocks):
                cache.layers.append(DynamicLayer())
        else:
            modulations = self.loop_modulations(steps)
        self._check_length(length, past_length)

        if position_ids is None:
            if attention_mask is not None:
                # learned absolute positions count real tokens only, so left padding is harmless
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -length:]
            else:
                position_ids = torch.arange(past_length, past_length + length, device=inputs_embeds.device)[None]
        x = self.transformer.drop(inputs_embeds + self.transformer.wpe(position_ids))  # (B, T, d)
        # None when the attention kernel's own causal flag says it all (sdpa, no padding)
        attn_mask = create_causal_mask(
            config=self.config,
            inputs_embeds=x,
            attention_mask=attention_mask,
            position_ids=position_ids,
            **cache_kwargs(cache),
        )

        hidden_states: list[torch.Tensor] = [x] if output_hidden_states else []
        for step, step_modulations in enumerate(modulations):
            x = self.run_step(x, step_modulations, attn_mask, cache, step)
            if output_hidden_states:
                hidden_states.append(x)
        x = self.transformer.norm_f(x)
        return BaseModelOutputWithPast(
            last_hidden_state=x,
            hidden_states=tuple(hidden_states) if output_hidden_states else None,
            **cache_kwargs(cache),
        )


class LoopFormerForCausalLM(LoopFormerPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "gpt.transformer.wte.weight"}

    def __init__(self, config: LoopFormerConfig) -> None:
        super().__init__(config)
        self.gpt = LoopFormerModel(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    @can_return_tuple
    def forward(  # type: ignore[misc]  # TransformersKwargs repeats two named params, as in transformers' models
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        schedule: Sequence[float] | None = None,
        num_loops: int | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        position_ids: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        inputs_embeds: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        **kwargs: Unpack[LoopFormerKwargs],
    ) -> CausalLMOutputWithPast:
        """Logits for every position (or those ``logits_to_keep`` selects, as in
        transformers). With ``labels`` (-100 = ignored) the loss is transformers' causal
        LM loss: next-token cross entropy over the counted tokens, or summed and divided
        by ``num_items_in_batch`` when the Trainer passes it. The KV cache is ``cache=``
        (transformers >= 5.24, as ``generate`` passes it) or ``past_key_values=`` (before)."""
        cache = take_cache(cache, past_key_values, f"{type(self).__name__}.forward")
        outputs = self.gpt(
            input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            schedule=schedule,
            num_loops=num_loops,
            cache=cache,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            inputs_embeds=inputs_embeds,
            **kwargs,
        )
        logits = self.lm_head(slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep))
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            **cache_kwargs(output_cache(outputs)),
        )

    @classmethod
    def from_pretrained(  # type: ignore[override]  # a checkpoint only: transformers' also takes None
        cls, pretrained_model_name_or_path: str | os.PathLike, *args, **kwargs
    ):
        """Load a checkpoint in the released layout. Safetensors only, no remote code;
        missing, unexpected or mis-shaped tensors raise ``CheckpointError``."""
        if kwargs.pop("trust_remote_code", False):
            raise CheckpointError("trust_remote_code is refused: LoopFormer is implemented here")
        if kwargs.pop("use_safetensors", True) is not True:
            raise CheckpointError("use_safetensors=False is refused: pickle weights are never loaded")
        local = Path(pretrained_model_name_or_path)
        if local.is_dir():
            check_local_checkpoint(local)
        want_info = kwargs.pop("output_loading_info", False)
        kwargs.pop("ignore_mismatched_sizes", None)
        kwargs.setdefault("dtype", torch.float32)
        # mis-shaped tensors are let through here only to be listed by name and refused below
        loaded: Any = super().from_pretrained(  # typed as a model, but output_loading_info makes it a pair
            pretrained_model_name_or_path,
            *args,
            use_safetensors=True,
            output_loading_info=True,
            ignore_mismatched_sizes=True,
            **kwargs,
        )
        model, info = loaded
        problems = []
        missing = sorted(k for k in info.get("missing_keys", ()) if k != "lm_head.weight")
        if missing:
            problems.append(f"missing tensors {missing}")
        if info.get("unexpected_keys"):
            problems.append(f"unexpected tensors {sorted(info['unexpected_keys'])}")
        if info.get("mismatched_keys"):
            shapes = [f"{k} {tuple(a)} vs model {tuple(b)}" for k, a, b in info["mismatched_keys"]]
            problems.append(f"mis-shaped tensors {shapes}")
        if info.get("error_msgs"):
            problems.append(f"load errors {[_one_line(m) for m in info['error_msgs']]}")
        if problems:
            raise CheckpointError(
                f"{pretrained_model_name_or_path}: not a LoopFormer checkpoint of this config: " + "; ".join(problems)
            )
        return (model, info) if want_info else model


def _one_line(message: object) -> str:
    return " ".join(str(message).split())[:500]


def config_defaults() -> dict[str, Any]:
    """``LoopFormerConfig``'s defaults: what the model assumes for a field ``config.json`` omits."""
    return {
        name: parameter.default
        for name, parameter in inspect.signature(LoopFormerConfig.__init__).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }


def read_checkpoint_config(path: Path) -> dict[str, Any]:
    """A LoopFormer ``config.json`` as a dict, each field the model reads checked for type and
    range (``CheckpointError`` names the file and field): a ``train_loops`` of 2.5 is refused
    here, never rounded by transformers."""
    return validate_model_config(path, config_defaults())


def check_local_checkpoint(folder: Path) -> None:
    """Refuse, with the file named, what ``from_pretrained`` would otherwise report
    obscurely: no config, another architecture, pickle-only weights."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{config_path}: missing (a LoopFormer checkpoint needs config.json)")
    model_type = read_json_object(config_path).get("model_type")
    if model_type != LoopFormerConfig.model_type:
        raise CheckpointError(f"{config_path}: model_type is {model_type!r}, expected {LoopFormerConfig.model_type!r}")
    read_checkpoint_config(config_path)  # types and ranges, before transformers coerces or crashes
    has_safetensors = any(folder.glob("*.safetensors")) or (folder / "model.safetensors.index.json").is_file()
    if not has_safetensors:
        pickles = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt"))
        found = f" (found only {pickles}: pickle files are refused)" if pickles else ""
        raise CheckpointError(f"{folder}: no model.safetensors{found}")
    validate_weights(folder)  # truncated, empty or garbage files: named here, not deep in the loader


AutoConfig.register(LoopFormerConfig.model_type, LoopFormerConfig)
AutoModel.register(LoopFormerConfig, LoopFormerModel)
AutoModelForCausalLM.register(LoopFormerConfig, LoopFormerForCausalLM)
