"""What a backbone is to the study: a ``Backbone`` entry (load, validate, run, cost,
train, name its depth) and the ``PolicyRunner`` it binds a depth policy with.

The registry of entries is ``study.models.backbones.BACKBONES``; its docstring lists
what a new entry must provide. This module holds only the two interfaces, so that the
entries (``study.models.entries.*``) and the registry import it, never each other.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from study.models.generation import DEFAULT_STOP_STRINGS, GenerationResult

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from study.config import AdaptiveConfig, LoopingConfig
    from study.looping.policies import DepthPolicy, LoopFamily


class PolicyRunner:
    """``model`` run at ``policy``: the one interface the sweeps and the SFT use.

    - ``hidden(input_ids, prompt_lengths)``: final hidden states [B, T, H] of a right-padded
      batch (no attention mask: attention is causal, so padding after a token never
      reaches it) and the loops each row executed [B];
    - ``head(hidden)``: the LM head on selected positions;
    - ``generate(...)``: greedy decoding with the KV cache (``study.models.generation``);
    - ``prefill(input_ids, new_tokens)``: the prompt's forward pass as ``generate`` runs it;
    - ``forced_decode(input_ids, prompt_tokens)``: a gold continuation fed through the
      decoding path token by token (``study.models.generation.forced_decode``), with the
      loops each fed token ran: how a policy that halts while decoding scores it;
    - ``context_limit``: the longest sequence the backbone takes;
    - ``prefix_key(policy)``, ``prefix(input_ids)``, ``hidden_from_prefix(prefix, ...)``
      (optional): a policy whose first layers do not depend on its depth names them by a
      key; runners of one model with equal keys share ``prefix`` of a batch, and
      ``hidden_from_prefix`` finishes it to what ``hidden`` gives, bit for bit (a sweep
      over depths computes those layers once per batch: ``score_continuations_group``).
    """

    def __init__(self, model: nn.Module, policy: DepthPolicy) -> None:
        self.model = model
        self.policy = policy

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def context_limit(self) -> int:
        raise NotImplementedError

    def hidden(self, input_ids: Tensor, prompt_lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``prompt_lengths`` [B]: each row's prompt tokens, from which a halting policy
        decides its depth; fixed depths ignore it."""
        raise NotImplementedError

    def head(self, hidden: Tensor) -> Tensor:
        raise NotImplementedError

    @classmethod
    def prefix_key(cls, policy: DepthPolicy) -> Hashable | None:
        """What the layers this runner shares across policies depend on (None: it shares
        none). Read from the policy alone, before any model is loaded."""
        return None

    def prefix(self, input_ids: Tensor) -> Any:
        """The shared first layers on a right-padded batch [B, T] (see ``prefix_key``)."""
        raise NotImplementedError(f"{type(self).__name__} shares no prefix")

    def hidden_from_prefix(self, prefix: Any, prompt_lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``hidden`` of the batch ``prefix`` was computed on, from ``prefix`` (a runner of
        the same model and ``prefix_key`` computed it)."""
        raise NotImplementedError(f"{type(self).__name__} shares no prefix")

    def generate(
        self,
        tokenizer: Any,
        prompts: list[str],
        max_new_tokens: int,
        stop_strings: Sequence[str] = DEFAULT_STOP_STRINGS,
        early_stop: bool = True,
    ) -> list[GenerationResult]:
        raise NotImplementedError

    def prefill(self, input_ids: Tensor, new_tokens: int) -> None:
        raise NotImplementedError

    def forced_decode(self, input_ids: Tensor, prompt_tokens: int) -> tuple[Tensor, list[float]]:
        """Logits [T - P, V] of one row ``input_ids`` [1, T] after its first ``prompt_tokens``
        (P), decoded as ``generate`` decodes with the gold tokens fed back, and the loops
        each of the T - P - 1 fed tokens ran."""
        raise NotImplementedError


class Backbone(ABC):
    """One registry entry: everything the pipeline, the stages and the validation ask of a
    backbone, so that none of them branches on which backbone a run uses."""

    name: ClassVar[str]  # ``model.backbone`` in the config, ``policy.backbone`` of its policies
    title: ClassVar[str]  # how errors name it: "LoopFormer"
    depth_symbol: ClassVar[str]  # the letter of its loop count: "M" (LoopFormer), "K" (looped decoder)
    runners: ClassVar[Mapping[type[DepthPolicy], type[PolicyRunner]]]  # policy type -> its runner

    @abstractmethod
    def accepts(self, model: nn.Module) -> bool:
        """Whether ``model`` is one of this backbone's (``bind`` refuses the others)."""

    @abstractmethod
    def load(self, source: str, revision: str | None, device: torch.device) -> PreTrainedModel:
        """A base or SFT checkpoint (folder or hub id) in fp32, in eval mode, on ``device``.
        Raises ``CheckpointError`` or ``BackboneError`` (one line) for what it cannot load."""

    @abstractmethod
    def check_checkpoint(self, source: str) -> None:
        """Before a run writes anything: refuse a bad base checkpoint in one line."""

    @abstractmethod
    def training_depth(self, source: str) -> int:
        """The loop count the base was (pre)trained at: the "preferred depth" of the base."""

    @abstractmethod
    def token_flops(self, model_config: Any, policy: DepthPolicy, context: float) -> float:
        """Analytic forward FLOPs of one generated token attending to ``context`` keys."""

    @abstractmethod
    def sft_trainer(self, policy: DepthPolicy) -> type:
        """The trl ``SFTTrainer`` class that trains a model at ``policy``."""

    @abstractmethod
    def set_train_depth(self, model: PreTrainedModel, loops: int) -> None:
        """Record in the model the depth it is trained at, where its weights carry it."""

    @abstractmethod
    def halting_policies(self, family: LoopFamily, section: AdaptiveConfig) -> list[DepthPolicy]:
        """The ``adaptive`` section's halting policies (depth chosen per input), in order."""

    @abstractmethod
    def depth_axis(self, looping: LoopingConfig | None) -> str:
        """The x-axis label of the depth figures."""

    def decode_halting(self, looping: LoopingConfig | None) -> str | None:
        """How its halting policies halt while generating: "token" (each generated token
        stops its own loop), "prompt" (the depth is chosen once per prompt) or None (not
        comparable with teacher forcing: the latency stage then times no halting policy)."""
        return None

    def module_names(self) -> tuple[str, ...] | None:
        """Names of a model's modules, which ``sft.lora.target_modules`` must match; None:
        the backbone takes no LoRA (the config refuses ``sft.lora`` for it)."""
        return None


def cast_weights(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """``model`` with every parameter in ``dtype`` (in place; tied weights stay tied). Buffers
    keep theirs: a Llama's rotary ``inv_freq`` stays fp32, as transformers keeps it when it
    loads a model in bfloat16 (rounded to bf16 it would shift every position's angle)."""
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.data = parameter.data.to(dtype)
    return model
