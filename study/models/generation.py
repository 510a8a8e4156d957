"""Batched greedy decoding for LoopFormer, with and without the KV cache.

``greedy_generate`` is the fast path every stage uses: the prompts are left-padded
into one batch and prefilled once (the model derives each row's positions from the
attention mask, so padding shifts nothing), then each step feeds one new token per
row and reuses the per-(step, block) keys and values in a ``DynamicCache``. Its
layers are preallocated for the whole generation (``PreallocatedLayer``): the stock
layer re-copies its whole history with ``torch.cat`` at every step, memory traffic
that grows with the square of the generated length. Rows that stop (EOS or a stop string) leave the
batch, cache rows included, so the remaining rows stop paying for them.

``recompute_generate`` is the reference: no cache, a full forward over the whole
sequence at every step (what the LoopFormer authors' ``generate`` does). It gives
the same tokens and exists for the tests and for ``study.bench``.

Both are greedy (argmax) and deterministic; the loop depth comes from ``schedule``
or ``num_loops`` exactly as in ``LoopFormerForCausalLM.forward``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

from study.models.loopformer import resolve_schedule

DEFAULT_STOP_STRINGS = ("Question:",)  # the few-shot GSM8K prompt format starts a new question here


@dataclass(frozen=True)
class GenerationResult:
    """One row's output. ``token_ids`` are the generated tokens (EOS excluded; with a
    stop string, up to and including the token that completed it); ``text`` is their
    decoding, cut before the first stop string. ``finish_reason`` is "eos", "stop" or
    "length" (ran out of ``max_new_tokens`` or of the model's ``block_size``)."""

    text: str
    token_ids: list[int]
    prompt_tokens: int
    finish_reason: str
    # loops the model reported for each generated token it was fed back (cached decoding of a
    # model that reports them, e.g. the looped decoder: per-token halting stops some early);
    # the last token is never fed back. Not part of equality: the tokens are the result.
    token_loops: list[float] | None = field(default=None, compare=False)


class PreallocatedLayer(DynamicLayer):
    """A cache layer whose keys and values live in buffers sized for the whole
    generation: each step writes its new entries in place and the layer exposes the
    filled prefix as a view, instead of concatenating onto a fresh copy every step."""

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity
        self.length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        batch, heads, _, width = key_states.shape
        self.key_buffer = key_states.new_empty(batch, heads, self.capacity, width)
        self.value_buffer = value_states.new_empty(batch, heads, self.capacity, value_states.shape[-1])
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self.capacity:
            raise ValueError(f"cache capacity {self.capacity} exceeded ({end} positions)")
        self.key_buffer[:, :, self.length : end] = key_states
        self.value_buffer[:, :, self.length : end] = value_states
        self.length = end
        self.keys, self.values = self.key_buffer[:, :, :end], self.value_buffer[:, :, :end]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:
            self.key_buffer, self.value_buffer = self.key_buffer[indices], self.value_buffer[indices]
            self.keys, self.values = self.key_buffer[:, :, : self.length], self.value_buffer[:, :, : self.length]


def preallocated_cache(model, steps: int, capacity: int) -> DynamicCache:
    """A ``DynamicCache`` with one ``PreallocatedLayer`` per (schedule step, block): the
    model only appends layers when there are fewer, so it uses these as they are."""
    cache = DynamicCache()
    cache.layers = [PreallocatedLayer(capacity) for _ in range(steps * model.config.n_layer)]
    return cache


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def left_pad(
    token_lists: Sequence[Sequence[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both (rows, longest), padding on the left so every
    row's last prompt token sits in the last column, where the next token is read."""
    width = max(len(ids) for ids in token_lists)
    input_ids = torch.full((len(token_lists), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(token_lists), width), dtype=torch.long)
    for row, ids in enumerate(token_lists):
        if ids:
            input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, width - len(ids) :] = 1
    return input_ids.to(device), attention_mask.to(device)


def cut_at_stop(text: str, stop_strings: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to the earliest stop string, and whether one was found."""
    cuts = [text.find(s) for s in stop_strings if s and s in text]
    return (text[: min(cuts)], True) if cuts else (text, False)


def greedy_generate(
    model,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int,
    schedule: Sequence[float] | None = None,
    num_loops: int | None = None,
    stop_strings: Sequence[str] = DEFAULT_STOP_STRINGS,
    early_stop: bool = True,
    new_cache: Callable[[], Cache] | None = None,
) -> list[GenerationResult]:
    """Greedy continuations of ``prompts`` (one batch), using the KV cache.

    With ``early_stop=False`` every row generates exactly ``max_new_tokens`` tokens
    (EOS and stop strings are ignored and ``text`` is the plain decoding): equal token
    work for latency measurements, and no host sync inside the decode loop.
    ``new_cache``: for a causal LM other than LoopFormer (the looped decoder's adapter),
    which brings its own loop: the cache to decode with; ``schedule``/``num_loops`` unused."""
    return _generate(
        model, tokenizer, prompts, max_new_tokens, schedule, num_loops, stop_strings, early_stop, True, new_cache
    )


@torch.inference_mode()
def forced_decode(
    model, input_ids: torch.Tensor, prompt_tokens: int, cache: Cache, **loop_kwargs
) -> tuple[torch.Tensor, list[float] | None]:
    """Teacher forcing through the decoding path: the logits [T - P, V] that predict
    tokens P..T-1 of one row ``input_ids`` [1, T] (P = ``prompt_tokens``), computed as
    ``greedy_generate`` computes them: the prompt prefilled into ``cache``, then tokens
    P..T-2 fed one call each (the gold tokens in place of the greedy ones). Also the
    loops the model reported for each fed token (None when it reports none): a policy
    that halts per generated token scores the gold answer at the depths it halts at."""
    if input_ids.shape[0] != 1 or not 0 < prompt_tokens < input_ids.shape[1]:
        raise ValueError(f"forced_decode takes one row of prompt + continuation, got {list(input_ids.shape)}")
    mask = input_ids.new_ones(1, prompt_tokens)
    call = {"cache": cache, "use_cache": True, "logits_to_keep": 1, **loop_kwargs}
    out = model(input_ids[:, :prompt_tokens], attention_mask=mask, **call)
    logits, loops = [out.logits[:, -1]], []  # [1, V] each
    for t in range(prompt_tokens, input_ids.shape[1] - 1):
        mask = torch.cat([mask, mask.new_ones(1, 1)], dim=1)
        out = model(input_ids[:, t : t + 1], attention_mask=mask, **call)
        logits.append(out.logits[:, -1])
        executed = getattr(out, "executed_loops", None)  # [1]: the looped decoder reports them
        if executed is not None:
            loops.append(float(executed[0]))
    return torch.cat(logits), (loops if len(loops) == len(logits) - 1 else None)


def recompute_generate(
    model,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int,
    schedule: Sequence[float] | None = None,
    num_loops: int | None = None,
    stop_strings: Sequence[str] = DEFAULT_STOP_STRINGS,
    early_stop: bool = True,
) -> list[GenerationResult]:
    """Same contract as ``greedy_generate``, without a cache: every step re-runs the
    whole (padded) sequence. Quadratically slower; the reference it is checked against."""
    return _generate(model, tokenizer, prompts, max_new_tokens, schedule, num_loops, stop_strings, early_stop, False)


@torch.inference_mode()
def _generate(
    model,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int,
    schedule: Sequence[float] | None,
    num_loops: int | None,
    stop_strings: Sequence[str],
    early_stop: bool,
    use_cache: bool,
    new_cache: Callable[[], Cache] | None = None,
) -> list[GenerationResult]:
    if not prompts:
        return []
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    eos_id = tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    encoded = [tokenizer.encode(p, add_special_tokens=False) for p in prompts]
    if any(not ids for ids in encoded):
        raise ValueError("an empty prompt has no last token to continue from")
    input_ids, attention_mask = left_pad(encoded, pad_id, model_device(model))
    # learned positions end at block_size; the padded width counts against it too
    limit = getattr(model.config, "block_size", None) or model.config.max_position_embeddings
    budget = min(max_new_tokens, limit - input_ids.shape[1] + 1)
    if budget < 1:
        raise ValueError(f"prompt of {input_ids.shape[1]} tokens leaves no room in block_size {limit}")
    loop_kwargs: dict = {"schedule": schedule, "num_loops": num_loops}
    cache = None
    if use_cache and new_cache is not None:  # another causal LM: its own loop, its own cache
        cache = new_cache()
        loop_kwargs = {}
    elif use_cache:  # the model keeps the (t, dt) conditioning on the cache: computed once per generation
        steps = len(resolve_schedule(schedule, num_loops, model.config.train_loops))
        cache = preallocated_cache(model, steps, input_ids.shape[1] + budget - 1)

    loops: list[list[float]] | None = None  # per prompt, the loops of each generated token fed back

    def next_logits(ids: torch.Tensor, mask: torch.Tensor, fed: list[int] | None = None) -> torch.Tensor:
        nonlocal loops
        out = model(ids, attention_mask=mask, cache=cache, use_cache=use_cache, logits_to_keep=1, **loop_kwargs)
        executed = getattr(out, "executed_loops", None)  # [rows]: the looped decoder reports them
        if fed is not None and use_cache and executed is not None:
            loops = loops if loops is not None else [[] for _ in prompts]
            for index, count in zip(fed, executed.tolist(), strict=True):
                loops[index].append(float(count))
        return out.logits[:, -1]

    outputs: list[list[int]] = [[] for _ in prompts]
    reasons = ["length"] * len(prompts)
    active = list(range(len(prompts)))  # original index of each batch row still decoding
    chosen: list[torch.Tensor] = []  # early_stop=False: tokens stay on the device until the end
    # a stop string ending in the newest token lies within its last len(bytes) tokens (>= 1 byte each)
    window = max((len(s.encode()) for s in stop_strings), default=0) + 1

    logits = next_logits(input_ids, attention_mask)
    for step in range(budget):
        tokens = logits.argmax(dim=-1)
        if not early_stop:
            chosen.append(tokens)
        else:
            keep = []
            for row, token in enumerate(tokens.tolist()):
                index = active[row]
                if token == eos_id:
                    reasons[index] = "eos"
                    continue
                outputs[index].append(token)
                if stop_strings and cut_at_stop(tokenizer.decode(outputs[index][-window:]), stop_strings)[1]:
                    reasons[index] = "stop"
                    continue
                keep.append(row)
            if not keep:
                break
            if len(keep) < len(active):  # finished rows leave the batch (and the cache)
                rows = torch.tensor(keep, device=tokens.device)
                tokens, attention_mask, input_ids = tokens[rows], attention_mask[rows], input_ids[rows]
                if cache is not None:
                    cache.batch_select_indices(rows)
                active = [active[row] for row in keep]
        if step == budget - 1:
            break  # the last token needs no forward pass after it
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(active), 1)], dim=1)
        if use_cache:
            logits = next_logits(tokens[:, None], attention_mask, fed=active)
        else:
            input_ids = torch.cat([input_ids, tokens[:, None]], dim=1)
            logits = next_logits(input_ids, attention_mask)

    if not early_stop:
        generated = torch.stack(chosen, dim=1).tolist()
        return [
            GenerationResult(tokenizer.decode(ids), ids, len(encoded[i]), "length", None if loops is None else loops[i])
            for i, ids in enumerate(generated)
        ]
    results = []
    for i, ids in enumerate(outputs):
        text, _ = cut_at_stop(tokenizer.decode(ids), stop_strings)
        results.append(GenerationResult(text, ids, len(encoded[i]), reasons[i], None if loops is None else loops[i]))
    return results
