"""Training-free looping of a pretrained Llama/Qwen3-family decoder, as an inference wrapper.

``loop_decoder(model, spec)`` returns a module that runs ``model``'s own layers in a
different order: layers 0..a-1 once, the window a..b looped by ``spec.strategy``, then
layers b+1..N-1, the final norm and the LM head. Nothing in ``model`` is modified, so
the model keeps computing its own logits bit-identically beside the wrapper.

The forward mirrors ``LlamaModel.forward`` of transformers 5.x (embeddings, rotary
embeddings, ``create_causal_mask``, decoder-layer calls), so with K=1 and ``naive``
the wrapper's logits equal the model's bit for bit. KV semantics follow the reference
wrapper (see ``LoopSpec``); loop-body passes that must see the cached past append
their KV to the layer's ``DynamicCache`` layer and crop it off again at once.

Under ``cache_strategy="per_loop"`` every pass of a window layer has its own cache
layer ("slot"): pass 0 uses the layer's own index, so K = 1 is the plain model's
cache; pass j >= 1 of window layer i uses index N + (j - 1) * W + (i - a) (N layers,
window width W), appended after the model's layers. Prefill and each decode call
write pass j's keys and values into slot j, and pass j attends to slot j, which is
what teacher forcing computes for every position at once.

Without a cache, layers 0..a-1 compute the same states whatever the window's loops,
strategy or cache strategy: ``prefix(input_ids)`` runs them once and
``forward_from_prefix(prefix)`` runs the rest, so a sweep over K shares them
(``study.scoring.score_continuations_group``); the two together are ``base_forward``
op for op, hence bit for bit.

Per-token halting in decoding (per_loop with a halting policy's rule, ``HaltingWindow``):
the prefill reads the prompt at full depth (every slot holds every prompt token), then
each decode call's token stops its own loop once the rule's signal on that token falls
below tau (its state stays the one of that step while batch mates run on). A token that
stopped after p of the K passes has no pass of its own in slots p..K-1: those slots get
its last computed pass's keys and values (slot p - 1), so a later token's pass j >= p
attends to the exited token's last computed pass (the rule recurrent-depth models use
for exited tokens). With tau = 0 no token stops early and decoding is fixed-depth
decoding exactly. The loops each call ran per row come back with its output
(``executed_loops``) and per generated token in ``GenerationResult.token_loops``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from study.looping.spec import LoopSpec
from study.looping.strategies import STRATEGIES, Halting, Pass
from study.models.hf_compat import cache_kwargs, output_cache, take_cache

if TYPE_CHECKING:
    from study.models.adaptive import SignalRecorder


@dataclass
class LoopedModelOutput(BaseModelOutputWithPast):
    executed_loops: Tensor | None = None  # [B] float: loops each row ran (see LoopSpec)


@dataclass
class LoopedCausalLMOutput(CausalLMOutputWithPast):
    executed_loops: Tensor | None = None  # [B] float


@dataclass
class PrefixStates:
    """The hidden states of a batch after the layers before the window (no cache), and
    what those layers were called with (masks, positions, rotary embeddings): computed
    once by ``LoopedDecoder.prefix`` and shared by every K of a sweep."""

    hidden: Tensor  # [B, T, H]: the output of layers 0..a-1 (the embeddings when a = 0)
    calls: _LayerCalls  # cache None: the same for every spec of the model
    model: nn.Module  # the causal LM whose layers computed it

    @property
    def window_start(self) -> int:
        return self.calls.window.start


class LoopedDecoder(nn.Module):
    """A causal LM whose layer window is looped; built by ``loop_decoder``."""

    model: Any  # a Llama/Qwen3-family causal LM of any class: its parts are read by name (see loop_decoder)

    def __init__(self, model: nn.Module, spec: LoopSpec) -> None:
        super().__init__()
        config: Any = model.config
        n_layers = config.num_hidden_layers
        a, b = spec.window
        if b >= n_layers:
            raise ValueError(f"window {spec.window} is outside the model's {n_layers} layers (0..{n_layers - 1})")
        if any(kind != "full_attention" for kind in getattr(config, "layer_types", None) or ()):
            raise ValueError("models with sliding-window layers are not supported (every layer must be full attention)")
        self.model = model
        self.spec = spec
        self.strategy = STRATEGIES[spec.strategy]
        self.window = range(a, b + 1)
        # Does the window keep KV? Not under cache_strategy "none", unless the strategy's
        # natural pass writes it itself (layer_anchored_frozen ignores cache_strategy but per_loop).
        self.window_keeps_kv = spec.cache_strategy != "none" or self.strategy.writes_cache
        self.per_loop = spec.cache_strategy == "per_loop"  # one KV slot per pass (see the module docstring)
        # The cache layer whose length is the number of past tokens: one that always keeps KV.
        outside = [i for i in range(n_layers) if i not in self.window]
        if not self.window_keeps_kv and not outside:
            raise ValueError("cache_strategy 'none' needs a layer outside the window to hold the cache")
        self.kv_layer = 0 if self.window_keeps_kv else outside[0]
        self._decode_calls = 0  # decode calls since the last prefill (for decode_mode first_n)
        # builds the halting rule of each loop from the row mask; a per-input halting policy
        # (study.models.adaptive) replaces it with its own rule
        self.make_halting = lambda token_mask: Halting(spec.halt_tau, spec.halt_scope, token_mask)

    @property
    def config(self):
        return self.model.config

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        cache: DynamicCache | None = None,
        use_cache: bool | None = None,
        past_key_values: DynamicCache | None = None,
    ) -> LoopedCausalLMOutput:
        """Logits [B, T, V] of ``input_ids`` [B, T] (and the cache when one is used). The
        cache is ``cache=``, or ``past_key_values=`` as transformers before 5.24 named it."""
        out = self.base_forward(input_ids, attention_mask, take_cache(cache, past_key_values, "forward"), use_cache)
        return LoopedCausalLMOutput(
            logits=self.model.lm_head(out.last_hidden_state),
            executed_loops=out.executed_loops,
            **cache_kwargs(output_cache(out)),
        )

    @torch.inference_mode()
    def generate(self, input_ids: Tensor, max_new_tokens: int, eos_token_id: int | None = None) -> Tensor:
        """Greedy decoding with the KV cache: ``input_ids`` [B, T] (rows of equal length,
        no padding) -> [B, T + new]. A row that emits ``eos_token_id`` is padded with it
        from then on; decoding stops early once every row has. Decode calls loop as
        ``spec.decode_mode`` says."""
        cache = DynamicCache(config=self.config)
        logits = self(input_ids, cache=cache).logits  # [B, T, V]
        tokens = input_ids
        finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for step in range(max_new_tokens):
            token = logits[:, -1].argmax(-1)  # [B]
            if eos_token_id is not None:
                token = token.masked_fill(finished, eos_token_id)
                finished |= token == eos_token_id
            tokens = torch.cat([tokens, token[:, None]], dim=1)
            if step == max_new_tokens - 1 or bool(finished.all()):
                break
            logits = self(token[:, None], cache=cache).logits
        return tokens

    def base_forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        cache: DynamicCache | None = None,
        use_cache: bool | None = None,
    ) -> LoopedModelOutput:
        """Final-norm hidden states [B, T, H]: ``forward`` without the LM head.

        ``attention_mask`` [B, past + T] marks real tokens (1) and right padding (0);
        positions count from the first column, as in the plain model's forward.
        ``use_cache`` defaults to whether ``cache`` was given; with it and no cache, a
        new ``DynamicCache`` is returned in the output."""
        if use_cache is None:
            use_cache = cache is not None
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        calls, embeds = self._layer_calls(input_ids, attention_mask, cache)
        x = self._layers_before_window(calls, embeds)
        return self._window_and_after(x, calls, attention_mask, cache if use_cache else None)

    def prefix(self, input_ids: Tensor) -> PrefixStates:
        """The layers before the window on ``input_ids`` [B, T], without a cache or an
        attention mask (teacher-forced scoring of a right-padded batch): what every
        policy with this window start shares. ``forward_from_prefix`` finishes it;
        together they compute ``base_forward(input_ids)`` op for op."""
        calls, embeds = self._layer_calls(input_ids, None, None)
        return PrefixStates(self._layers_before_window(calls, embeds), calls, self.model)

    def forward_from_prefix(self, prefix: PrefixStates) -> LoopedModelOutput:
        """``base_forward`` of the batch ``prefix`` was computed on, from its states after
        the layers before the window: this spec's window, the layers after it, the norm.
        ``prefix`` may come from another ``LoopedDecoder`` of the same model and window
        start (its loops, strategy or cache strategy may differ: without a cache the
        layers before the window do not depend on them)."""
        if prefix.model is not self.model or prefix.window_start != self.window.start:
            raise ValueError(
                f"prefix states of layers 0..{prefix.window_start - 1} of another model or window start "
                f"(this decoder loops layers {self.window.start}..{self.window.stop - 1})"
            )
        # the calls this decoder would build itself: without a cache, only the window differs
        calls = replace(prefix.calls, window=self.window, stashed=[], passes={})
        return self._window_and_after(prefix.hidden, calls, None, None)

    def trajectory(self, input_ids: Tensor, recorder: SignalRecorder) -> Iterator[Tensor]:
        """Teacher-forced (no cache, no mask: right padding), the final-norm hidden states
        [B, T, H] a row gets by stopping after each step of the window's loop: the window
        is iterated once, ``recorder`` keeping every step's state, and the layers after
        the window run on each. A row a halting rule freezes at step k keeps step k's
        state while its batch mates go on, so these are its states under every rule."""
        inner = self.model.model
        calls, embeds = self._layer_calls(input_ids, None, None)
        x = self._layers_before_window(calls, embeds)
        make_halting = self.make_halting
        self.make_halting = lambda token_mask: recorder
        try:
            self._loop(x, calls, None)
        finally:
            self.make_halting = make_halting
        for state in recorder.states:
            for i in range(self.window.stop, self.config.num_hidden_layers):
                state = calls.layer(i, state)
            yield inner.norm(state)

    def _layer_calls(
        self, input_ids: Tensor, attention_mask: Tensor | None, cache: DynamicCache | None
    ) -> tuple[_LayerCalls, Tensor]:
        """The layer calls of one forward on ``input_ids`` [B, T], and the embeddings [B, T, H]."""
        inner = self.model.model
        embeds = inner.embed_tokens(input_ids)  # [B, T, H]
        length = input_ids.shape[1]
        past = cache.get_seq_length(self.kv_layer) if cache is not None else 0
        position_ids = torch.arange(past, past + length, device=input_ids.device).unsqueeze(0)  # [1, T]
        mask = create_causal_mask(
            config=self.config,
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            layer_idx=self.kv_layer,
            **cache_kwargs(cache),
        )
        window_kv = cache is not None and self.window_keeps_kv
        window_mask = mask
        if past > 0 and not window_kv:  # a window without KV attends within the new tokens only
            window_mask = create_causal_mask(
                config=self.config,
                inputs_embeds=embeds,
                attention_mask=None if attention_mask is None else attention_mask[:, -length:],
                position_ids=position_ids,
                **cache_kwargs(None),
            )
        calls = _LayerCalls(
            layers=inner.layers,
            cache=cache,
            mask=mask,
            window_mask=window_mask,
            window_kv=window_kv,
            position_ids=position_ids,
            position_embeddings=inner.rotary_emb(embeds, position_ids=position_ids),
            past=past,
            length=length,
            per_loop=window_kv and self.per_loop,
            window=self.window,
        )
        return calls, embeds

    def _layers_before_window(self, calls: _LayerCalls, embeds: Tensor) -> Tensor:
        x = embeds  # [B, T, H]
        for i in range(self.window.start):
            x = calls.layer(i, x)
        return x

    def _window_and_after(
        self, x: Tensor, calls: _LayerCalls, attention_mask: Tensor | None, cache: DynamicCache | None
    ) -> LoopedModelOutput:
        """The window (looped or bypassed) on x [B, T, H], the layers after it and the final
        norm; ``cache``: the one to return in the output (None: none)."""
        if calls.past == 0:
            self._decode_calls = 0  # a prefill: decode_mode first_n counts decode calls from here
        else:
            self._decode_calls += 1
        if calls.past > 0 and not self._loops_decode_call():
            for i in self.window:  # bypass: the window runs once, as in the plain model
                x = calls.layer(i, x, in_window=True)
            executed = torch.ones(x.shape[0], device=x.device)
        else:
            token_mask = None if attention_mask is None else attention_mask[:, -calls.length :]  # [B, T]
            x, executed = self._loop(x, calls, token_mask)
        for i in range(self.window.stop, self.config.num_hidden_layers):
            x = calls.layer(i, x)
        return LoopedModelOutput(
            last_hidden_state=self.model.model.norm(x), executed_loops=executed, **cache_kwargs(cache)
        )

    def _loops_decode_call(self) -> bool:
        mode = self.spec.decode_mode
        return mode == "full" or (mode == "first_n" and self._decode_calls <= self.spec.decode_first_n)

    def _loop(self, x0: Tensor, calls: _LayerCalls, token_mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """The looped window on x0 [B, T, H] -> (its output [B, T, H], executed loops [B])."""
        spec, strategy, hp = self.spec, self.strategy, self.spec.hyperparameters
        every_loop = torch.full((x0.shape[0],), float(spec.loops), device=x0.device)

        def run(g: Pass, x: Tensor, layers: range, **extra: Pass) -> tuple[Tensor, Tensor]:
            if not strategy.halts:
                return strategy.rule(g, x, spec.loops, **hp, **extra), every_loop
            halt = self.make_halting(token_mask)
            per_token = calls.per_loop and halt.tau is not None  # a halting policy decoding (study.models.adaptive)
            if per_token and calls.past == 0:  # the prompt is read at full depth: every slot holds it
                halt, per_token = Halting(None, "row", token_mask), False
            elif per_token and calls.length != 1:
                raise ValueError(f"per-token halting under per_loop decodes one token per call, got {calls.length}")
            y = strategy.rule(g, x, spec.loops, **hp, halt=halt)
            assert halt.executed is not None  # the rule's loops have counted themselves
            if per_token:
                calls.fill_exited(layers, halt.executed, spec.loops)
            return y, halt.executed.float()

        if strategy.over_layers:
            x, executed = strategy.rule([calls.body(i) for i in self.window], x0, spec.loops), every_loop
        elif spec.mode == "block":
            passes = [calls.body(i) for i in self.window]

            def g(x: Tensor) -> Tensor:  # one pass of the whole window
                for p in passes:
                    x = p(x)
                return x

            x, executed = run(g, x0, self.window)
        else:  # layer mode: each window layer loops on its own, then hands over to the next
            x, counts = x0, []
            for i in self.window:
                extra = {"natural": calls.natural(i)} if strategy.writes_cache else {}
                x, count = run(calls.body(i), x, range(i, i + 1), **extra)
                counts.append(count)
            calls.restore_natural_kv()
            executed = torch.stack(counts).mean(0)
        if calls.window_kv and not strategy.writes_cache and not calls.per_loop:
            # One more pass writes the window's KV, from its input or from the loop's output.
            h = x0 if spec.cache_strategy == "first" else x
            for i in self.window:
                h = calls.layer(i, h)
        return x, executed


@dataclass
class _LayerCalls:
    """Decoder-layer calls of one forward, with what they share and the window's KV rules."""

    layers: nn.ModuleList
    cache: DynamicCache | None
    mask: Tensor | None  # causal (+ padding) mask over past + T keys; None lets SDPA use is_causal
    window_mask: Tensor | None  # mask for window passes that read no KV
    window_kv: bool  # the window's layers keep KV in ``cache``
    position_ids: Tensor  # [1, T]
    position_embeddings: tuple[Tensor, Tensor]  # rotary (cos, sin), [1, T, head_dim] each
    past: int  # tokens already in the cache
    length: int  # T, the new tokens
    per_loop: bool = False  # every pass of a window layer reads and writes its own KV slot
    window: range = range(0)  # the looped layers a..b
    stashed: list[tuple[int, Tensor, Tensor]] = field(default_factory=list)  # (layer, keys, values)
    passes: dict[int, int] = field(default_factory=dict)  # window layer -> passes run in this forward

    def layer(self, i: int, x: Tensor, in_window: bool = False, write_kv: bool | None = None) -> Tensor:
        """Layer i on x [B, T, H]; by default it writes KV where its layer keeps KV."""
        keeps_kv = self.cache is not None and (self.window_kv or not in_window)
        write_kv = keeps_kv if write_kv is None else write_kv
        return self.layers[i](
            x,
            attention_mask=self.window_mask if in_window and not write_kv else self.mask,
            position_ids=self.position_ids,
            use_cache=write_kv,
            **cache_kwargs(self.cache if write_kv else None),
            position_embeddings=self.position_embeddings,
        )

    def body(self, i: int) -> Pass:
        """Loop-body pass of window layer i: it attends to the cached past (if any) and to
        its own tokens, and leaves no KV behind. Without a past nothing needs the cache.
        Under per_loop each call is instead the layer's next pass, in its own slot."""
        if self.per_loop:
            return lambda x: self.slot_pass(i, x)
        if not (self.window_kv and self.past > 0):
            return lambda x: self.layer(i, x, in_window=True, write_kv=False)

        def attend_past(x: Tensor) -> Tensor:
            y = self.layer(i, x, in_window=True, write_kv=True)
            self._cache_layer(i).crop(-self.length)  # drop this pass's own entries again
            return y

        return attend_past

    def natural(self, i: int) -> Pass:
        """The natural pass of window layer i (layer_anchored_frozen), which writes the
        layer's KV. During decode the entries are set aside so the body passes that follow
        see only the past and their own tokens; ``restore_natural_kv`` puts them back."""
        if not self.window_kv or self.per_loop:  # per_loop: the natural pass is pass 0, with its slot
            return self.body(i)

        def write(x: Tensor) -> Tensor:
            y = self.layer(i, x, in_window=True, write_kv=True)
            if self.past > 0:
                layer_cache = self._cache_layer(i)
                assert layer_cache.keys is not None and layer_cache.values is not None  # just written
                keys = layer_cache.keys[..., -self.length :, :]  # [B, kv_heads, T, head_dim]
                values = layer_cache.values[..., -self.length :, :]
                self.stashed.append((i, keys, values))
                layer_cache.crop(-self.length)
            return y

        return write

    def slot_pass(self, i: int, x: Tensor) -> Tensor:
        """The next pass j of window layer i on x [B, T, H], reading and writing slot j:
        the tokens' pass-j KV is appended there and the pass attends to all of it."""
        j = self.passes.get(i, 0)
        self.passes[i] = j + 1
        if j == 0:  # the layer's own cache layer
            return self.layer(i, x, in_window=True, write_kv=True)
        slot = self.slot(i, j)
        assert self.cache is not None  # per_loop slots exist only with a cache
        layers = self.cache.layers
        while len(layers) <= slot:  # first use of this pass (a lazily grown cache may lack layers > b too)
            layers.append(DynamicLayer())
        # The attention writes to cache.layers[its own index]: seat slot j there for this call.
        layers[i], layers[slot] = layers[slot], layers[i]
        try:
            return self.layer(i, x, in_window=True, write_kv=True)
        finally:
            layers[i], layers[slot] = layers[slot], layers[i]

    def slot(self, i: int, j: int) -> int:
        """The cache layer of pass j of window layer i (per_loop; see the module docstring)."""
        return i if j == 0 else len(self.layers) + (j - 1) * len(self.window) + (i - self.window.start)

    def fill_exited(self, layers: range, passes: Tensor, slots: int) -> None:
        """Per-token halting under per_loop, after a decode call of one token per row: a
        token that stopped after p of the ``slots`` passes has no keys and values of its
        own in slots p.. (or, where batch mates ran on, those of passes over its frozen
        state). Each is set to its last computed pass's (slot p - 1), so a later token's
        pass j >= p attends to that token's last computed pass. ``passes`` [B]: per row."""
        assert self.cache is not None
        for i in layers:
            ran = self.passes.get(i, 0)  # slots this call wrote, for every row
            last = [self._cache_layer(self.slot(i, j)) for j in range(ran)]
            for j in range(1, slots):
                exited = passes <= j  # [B] rows whose pass j was not theirs
                if j < ran and not bool(exited.any()):
                    continue
                target = self._cache_layer(self.slot(i, j)) if j < ran else None
                keys, values = self._last_pass_kv(last, passes, j, target)
                if target is None:  # the loop stopped before pass j: its slot (the prefill's) grows by this token
                    self._cache_layer(self.slot(i, j)).update(keys, values)
                else:
                    assert target.keys is not None and target.values is not None
                    target.keys[..., -self.length :, :] = keys
                    target.values[..., -self.length :, :] = values

    def _last_pass_kv(
        self, written: list[DynamicLayer], passes: Tensor, j: int, target: DynamicLayer | None
    ) -> tuple[Tensor, Tensor]:
        """Slot j's entries of this call's tokens [B, kv_heads, T, head_dim] (keys, values):
        each row's own pass j where it ran it, else its last computed pass."""
        source = (passes.clamp(max=j + 1) - 1).tolist()  # the pass whose KV each row keeps in slot j
        keys, values = [], []
        for r, k in enumerate(source):
            layer = target if target is not None and k == j else written[k]
            assert layer.keys is not None and layer.values is not None
            keys.append(layer.keys[r : r + 1, :, -self.length :, :])
            values.append(layer.values[r : r + 1, :, -self.length :, :])
        return torch.cat(keys), torch.cat(values)

    def _cache_layer(self, i: int) -> DynamicLayer:
        """Layer i of the cache, which the window's KV rules only touch when there is one."""
        assert self.cache is not None
        return cast(DynamicLayer, self.cache.layers[i])

    def restore_natural_kv(self) -> None:
        for i, keys, values in self.stashed:
            self._cache_layer(i).update(keys, values)
        self.stashed.clear()


def loop_decoder(model: nn.Module, spec: LoopSpec) -> LoopedDecoder:
    """Wrap a Llama/Qwen3-family ``AutoModelForCausalLM`` (``model.model.layers``,
    ``.rotary_emb``, ``.norm``, ``model.lm_head``) so that ``spec.window`` is looped."""
    return LoopedDecoder(model, spec)
