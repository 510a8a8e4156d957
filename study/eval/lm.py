"""``loopdepth``: lm-eval's ``HFLM`` with every forward pass run at a depth policy.

``LoopDepthLM`` is registered with lm-eval as ``loopdepth``. It lets ``HFLM`` load the
model and tokenizer, tokenize, batch, pad, cache and score exactly as ``--model hf``
does, and replaces only the two places where the model is run:

- ``_model_call`` (behind ``loglikelihood`` and ``loglikelihood_rolling``): the batch
  runs through ``bind(model, policy)`` (``study.models.backbones``), the one interface
  the study's own sweeps use, so a policy computes here what it computes there;
- ``generate_until``: greedy decoding with the project's KV-cached ``generate`` of the
  bound policy (its ``LoopSpec`` decides the cache strategy and decode mode).

``pretrained=`` may also be a model already loaded (with its ``tokenizer=``) and
``policy=`` a ``DepthPolicy``: the pipeline's ``benchmarks`` stage evaluates the models
its sweep loaded at the policies of its config that way.

A halting policy decides its depth per row from the row's context alone (never from
the continuation it is scored on), as in the study's NLL sweep. The loops each
``loglikelihood`` request executed are kept in ``executed_loops`` (one dict per
request: task, doc_id, idx, executed_loops); ``python -m study.eval`` writes them
beside lm-eval's samples.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any, ClassVar

import torch
from lm_eval.api.instance import Instance
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from transformers import PreTrainedModel

from study.eval.sources import resolve_pretrained
from study.looping.policies import DepthPolicy, parse_policy
from study.models.backbones import BackboneError, PolicyRunner, bind

Key = tuple[int, ...]


@register_model("loopdepth")
class LoopDepthLM(HFLM):
    """``HFLM`` at a depth policy; ``model_args``: ``pretrained=`` (hub id, folder,
    ``offline:smollm2`` or ``embedded:mini``), ``policy=`` (a policy id as the results
    files spell it, e.g. ``M8`` or ``euler-w12-15-K3``) and any of HFLM's own."""

    # the executed_loops list of every instance made in this process, so the CLI can write
    # them after lm-eval has let go of the model (the lists, not the models, are kept)
    executed_logs: ClassVar[list[list[dict[str, Any]]]] = []

    def __init__(
        self, pretrained: str | PreTrainedModel, policy: str | DepthPolicy, device: str | None = "auto", **kwargs: Any
    ) -> None:
        # a loaded model (the pipeline's benchmarks stage) comes with its tokenizer= and stays where it is
        loaded = isinstance(pretrained, PreTrainedModel)
        if not (loaded or isinstance(pretrained, str)):
            raise TypeError("loopdepth: pretrained= must be a hub id, a folder, offline:smollm2 or embedded:mini")
        if loaded and kwargs.get("tokenizer") is None:
            raise TypeError("loopdepth: a loaded model needs its tokenizer= as well")
        self.policy: DepthPolicy = policy if isinstance(policy, DepthPolicy) else parse_policy(str(policy))
        if device in (None, "auto"):  # HFLM's own default is "cuda", even on a machine without one
            device = "cuda" if torch.cuda.is_available() else "cpu"
        kwargs.setdefault("backend", "causal")  # LoopFormer is not in transformers' causal-LM table
        source = pretrained if isinstance(pretrained, PreTrainedModel) else resolve_pretrained(pretrained)
        super().__init__(pretrained=source, device=device, **kwargs)
        try:
            self.runner: PolicyRunner = bind(self.model, self.policy)
        except BackboneError as error:
            raise ValueError(f"loopdepth: {error}") from None
        if kwargs.get("max_length") is None:
            # LoopFormer's learned positions end at block_size (HFLM would assume 2048)
            self._max_length = self.runner.context_limit
        self.executed_loops: list[dict[str, Any]] = []
        # per _loglikelihood_tokens call: model input (unpadded) -> context tokens in it,
        # and -> loops it executed
        self._prompt_lengths: dict[Key, int] = {}
        self._executed: dict[Key, float] = {}
        self._last_executed: list[float | None] = []
        LoopDepthLM.executed_logs.append(self.executed_loops)

    # ---- scoring -------------------------------------------------------------------------

    def _model_call(
        self, inps: torch.Tensor, attn_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits [B, T, V] of a right-padded batch [B, T] at the policy."""
        if attn_mask is not None or labels is not None:
            raise NotImplementedError("loopdepth runs decoder-only models (no seq2seq)")
        keys = [self._row_key(row) for row in inps.tolist()]
        prompt_lengths = None
        if self.policy.halting is not None:
            # a row HFLM did not announce (batch-size probing) decides on all its tokens
            lengths = [self._prompt_lengths.get(key, inps.shape[1]) for key in keys]
            prompt_lengths = torch.tensor(lengths, dtype=torch.long)
        autocast = torch.autocast(  # HFLM's mixed_precision_dtype, as in its own _model_call
            device_type=self.device.type,
            dtype=self.mixed_precision_dtype,
            enabled=self.mixed_precision_dtype is not None,
        )
        with torch.no_grad(), autocast:
            hidden, executed = self.runner.hidden(inps, prompt_lengths)
            logits = self.runner.head(hidden)
        for key, loops in zip(keys, executed.tolist(), strict=True):
            self._executed[key] = float(loops)
        return logits

    def _row_key(self, row: list[int]) -> Key:
        """A padded row's tokens without HFLM's right padding (zeros). A real token 0 at
        the end is told from padding by the inputs announced for this call."""
        end = len(row)
        while end > 1 and row[end - 1] == 0 and tuple(row[:end]) not in self._prompt_lengths:
            end -= 1
        return tuple(row[:end])

    def _loglikelihood_tokens(
        self,
        requests: list[tuple[tuple[str, str], list[int], list[int]]],
        disable_tqdm: bool = False,
        override_bs: int | None = None,
    ) -> list[tuple[float, bool]]:
        """HFLM's scoring, after noting where each model input's context ends (the part a
        halting policy decides from); afterwards ``_last_executed`` holds each request's loops."""
        keys = []
        for _, context, continuation in requests:
            # the input HFLM builds: context + continuation, left-truncated, without the last token
            model_input = (context + continuation)[-(self.max_length + 1) :][:-1]
            key = tuple(model_input)
            prompt = max(1, len(model_input) - len(continuation) + 1)
            # requests sharing an input share its logits: decide on the shortest context
            self._prompt_lengths[key] = min(prompt, self._prompt_lengths.get(key, prompt))
            keys.append(key)
        try:
            results = super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
            self._last_executed = [self._executed.get(key) for key in keys]
        finally:
            self._prompt_lengths.clear()
            self._executed.clear()
        return results

    def loglikelihood(self, requests: list[Instance], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        results = super().loglikelihood(requests, disable_tqdm=disable_tqdm)
        for request, loops in zip(requests, self._last_executed, strict=True):
            self.executed_loops.append(
                {
                    "task": request.task_name,
                    "doc_id": request.doc_id,
                    "idx": request.idx,
                    "request_type": "loglikelihood",
                    "policy": self.policy.id,
                    "executed_loops": loops,
                }
            )
        return results

    # ---- generation ----------------------------------------------------------------------

    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        """Greedy continuations with the project's cached decoding at the policy, cut at
        the request's ``until`` strings; requests with the same settings share batches."""
        groups: dict[str, list[int]] = defaultdict(list)
        for i, request in enumerate(requests):
            groups[json.dumps(request.args[1], sort_keys=True, default=str)].append(i)
        batch = int(self.batch_size) if str(self.batch_size).isdigit() else 1
        results: list[str] = [""] * len(requests)
        for indices in groups.values():
            until, max_new_tokens = self._generation_settings(requests[indices[0]].args[1])
            for start in range(0, len(indices), batch):
                chunk = indices[start : start + batch]
                prompts = [self._fit_prompt(requests[i].args[0], max_new_tokens) for i in chunk]
                outputs = self.runner.generate(self.tokenizer, prompts, max_new_tokens, stop_strings=until)
                for i, output in zip(chunk, outputs, strict=True):
                    results[i] = output.text
                    self.cache_hook.add_partial("generate_until", requests[i].args, output.text)
        return results

    def _generation_settings(self, gen_kwargs: dict[str, Any]) -> tuple[list[str], int]:
        """(stop strings, new-token budget) of a request; anything but greedy is refused,
        since the study's decoding is greedy."""
        kwargs = dict(gen_kwargs)
        if kwargs.get("do_sample") or float(kwargs.get("temperature") or 0.0) > 0.0:
            raise ValueError(f"loopdepth decodes greedily; got do_sample/temperature in {gen_kwargs}")
        until = kwargs.get("until") or [self.tok_decode(self.eot_token_id)]
        if isinstance(until, str):
            until = [until]
        return list(until), int(kwargs.get("max_gen_toks") or self.max_gen_toks)

    def _fit_prompt(self, context: str, max_new_tokens: int) -> str:
        """The context, left-truncated (as HFLM does) so the answer fits the model's length."""
        room = self.max_length - max_new_tokens
        ids = self.tok_encode(context)
        if room < 1 or len(ids) <= room:
            return context
        return self.tok_decode(ids[-room:], skip_special_tokens=False)
