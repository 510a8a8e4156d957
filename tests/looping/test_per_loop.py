"""cache_strategy="per_loop": cached decoding scores the same model as teacher forcing.

Random Llama and Qwen3 decoders of shapes other than the conformance fixture's: for
every position-wise strategy of the registry (so a new one is covered automatically),
block and layer mode, K = 1..4, prefill plus step decoding must give the teacher-forced
logits; strategies that read other positions must be refused."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

from study.config import ConfigError, load_config
from study.looping import STRATEGIES, LoopSpec, loop_decoder
from study.looping.policies import HaltingWindow, LoopedWindow
from study.models.backbones import bind
from study.models.entries.looped_decoder import looped_decoder_token_flops
from study.models.generation import greedy_generate, recompute_generate
from study.models.hf_compat import cache_kwargs
from study.models.looped_decoder import LoopedDecoder
from study.tokenizer import load_tokenizer

TOLERANCE = 1e-5  # max-abs logit difference, fp32
POSITION_WISE = [name for name, entry in STRATEGIES.items() if not entry.mixes_positions]
POSITION_MIXING = [name for name, entry in STRATEGIES.items() if entry.mixes_positions]
CHUNKS = (4, 2, 1, 1, 1)  # a prefill of 4 tokens, one decode call of 2, then one token at a time
WINDOWS = {"llama": (1, 3), "qwen3": (2, 4)}


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    # The tiny models' matmuls take microseconds: a thread pool only adds overhead.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_decoder(family: str, vocab_size: int = 128, seed: int = 0):
    """A random decoder whose window changes the logits when looped: the residual
    branches' output projections are scaled up from the tiny default init."""
    torch.manual_seed(seed)
    shared = dict(vocab_size=vocab_size, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    if family == "llama":  # eager attention, head dim 24
        config = LlamaConfig(hidden_size=96, intermediate_size=160, num_hidden_layers=5, **shared)
        model = LlamaForCausalLM(config)
        model.config._attn_implementation = "eager"
    else:  # Qwen3: q/k norms, explicit head dim 20, SDPA attention
        config = Qwen3Config(hidden_size=80, intermediate_size=144, num_hidden_layers=6, head_dim=20, **shared)
        model = Qwen3ForCausalLM(config)
        model.config._attn_implementation = "sdpa"
    with torch.no_grad():
        for layer in model.model.layers:
            for linear in (layer.self_attn.o_proj, layer.mlp.down_proj):
                linear.weight.normal_(0.0, 0.3)
    return model.eval()


@pytest.fixture(scope="module", params=["llama", "qwen3"])
def family(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def model(family: str):
    return random_decoder(family)


@pytest.fixture(scope="module")
def ids(model) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randint(0, model.config.vocab_size, (2, sum(CHUNKS)), generator=generator)  # [B, T]


def per_loop_spec(window: tuple[int, int], loops: int, strategy: str, mode: str, **overrides) -> LoopSpec:
    """A per_loop spec of ``strategy``, with the hyperparameters it needs at ``loops``."""
    hyperparameters = STRATEGIES[strategy].hyperparameters
    settings: dict = {}
    if strategy == "ema_sched":
        settings["per_step_alphas"] = [0.8 - 0.1 * k for k in range(loops)]
    if strategy == "poly_blend":
        settings["per_step_alphas"] = [1.0 / (loops + 1)] * (loops + 1)
    if "anchor_beta" in hyperparameters:
        settings["anchor_beta"] = 0.3
    if "anchor_rescale" in hyperparameters:
        settings["anchor_rescale"] = True
    settings = {"cache_strategy": "per_loop", "decode_mode": "full", **settings, **overrides}
    return LoopSpec(window, loops, strategy, mode=mode, **settings)


@torch.no_grad()
def decoded_logits(looped: LoopedDecoder, ids: torch.Tensor) -> tuple[torch.Tensor, DynamicCache]:
    """Logits [B, T, V] of ``ids`` fed in ``CHUNKS`` through one cache, and the cache."""
    cache = DynamicCache(config=looped.config)
    logits, start = [], 0
    for size in CHUNKS:
        logits.append(looped(ids[:, start : start + size], cache=cache).logits)
        start += size
    return torch.cat(logits, dim=1), cache


def decoding_error(model, ids: torch.Tensor, spec: LoopSpec) -> float:
    """Max-abs difference between teacher-forced and cached-decoding logits."""
    looped = loop_decoder(model, spec)
    with torch.no_grad():
        forced = looped(ids).logits  # [B, T, V]
    return (decoded_logits(looped, ids)[0] - forced).abs().max().item()


def loop_counts(strategy: str) -> list[int]:
    return [k for k in (1, 2, 3, 4) if strategy != "aitken" or k % 2 == 0]  # aitken: two passes a step


@pytest.mark.parametrize("strategy", POSITION_WISE)
def test_step_decoding_equals_teacher_forcing(family: str, model, ids: torch.Tensor, strategy: str) -> None:
    errors = {
        (mode, loops): decoding_error(model, ids, per_loop_spec(WINDOWS[family], loops, strategy, mode))
        for mode in STRATEGIES[strategy].modes
        for loops in loop_counts(strategy)
    }
    worst = max(errors, key=errors.get)
    assert errors[worst] <= TOLERANCE, f"{strategy} {worst}: max-abs {errors[worst]:.3g}"


def test_the_reference_caches_do_not_equal_teacher_forcing(family: str, model, ids: torch.Tensor) -> None:
    """What per_loop fixes: with one KV per window layer, decoding scores another model
    (so the models above are deep enough for the comparison to mean something)."""
    for cache_strategy in ("first", "last"):
        spec = per_loop_spec(WINDOWS[family], 3, "euler", "block", cache_strategy=cache_strategy)
        assert decoding_error(model, ids, spec) > 1e-3


def test_one_naive_loop_is_the_plain_model(model, ids: torch.Tensor, family: str) -> None:
    looped = loop_decoder(model, per_loop_spec(WINDOWS[family], 1, "naive", "block"))
    plain_looped = loop_decoder(model, LoopSpec((0, model.config.num_hidden_layers - 1), 1, "naive"))
    with torch.no_grad():
        plain = model(ids, use_cache=False).logits
        assert torch.equal(looped(ids).logits, plain)
        cache = DynamicCache(config=model.config)
        plain_steps, start = [], 0
        for size in CHUNKS:
            chunk = ids[:, start : start + size]
            plain_steps.append(model(chunk, use_cache=True, **cache_kwargs(cache)).logits)
            start += size
    decoded, per_loop_cache = decoded_logits(looped, ids)
    assert torch.equal(decoded, torch.cat(plain_steps, dim=1))
    assert len(per_loop_cache.layers) == model.config.num_hidden_layers  # K = 1: no extra slots
    assert plain_looped.spec.cache_strategy == "last"  # (the reference default is untouched)


def test_every_pass_keeps_its_own_slot(model, ids: torch.Tensor, family: str) -> None:
    a, b = WINDOWS[family]
    n_layers, width = model.config.num_hidden_layers, b - a + 1
    for strategy, mode, passes in (("euler", "block", 3), ("rk4", "layer", 12)):  # rk4: 4 passes a step
        _, cache = decoded_logits(loop_decoder(model, per_loop_spec((a, b), 3, strategy, mode)), ids)
        assert len(cache.layers) == n_layers + (passes - 1) * width
        assert {layer.get_seq_length() for layer in cache.layers} == {ids.shape[1]}


# ---- refusals -------------------------------------------------------------------------------


def test_registry_has_position_mixing_strategies() -> None:
    assert "anderson" in POSITION_MIXING and "naive" in POSITION_WISE


@pytest.mark.parametrize("strategy", POSITION_MIXING)
def test_position_mixing_strategies_are_refused(strategy: str) -> None:
    mode = STRATEGIES[strategy].modes[0]
    with pytest.raises(ValueError, match=f"strategy {strategy} mixes positions") as raised:
        per_loop_spec((1, 3), 2, strategy, mode)
    assert "\n" not in str(raised.value)
    per_loop_spec((1, 3), 2, strategy, mode, cache_strategy="last")  # the reference caches still take it


@pytest.mark.parametrize("strategy", POSITION_MIXING)
def test_position_mixing_strategies_are_not_causal(model, ids: torch.Tensor, family: str, strategy: str) -> None:
    """Why they are refused: changing the last token moves the earlier positions' logits."""
    spec = per_loop_spec(WINDOWS[family], 3, strategy, STRATEGIES[strategy].modes[0], cache_strategy="last")
    looped, changed = loop_decoder(model, spec), ids.clone()
    changed[:, -1] = (changed[:, -1] + 1) % model.config.vocab_size
    with torch.no_grad():
        moved = (looped(ids).logits[:, :-1] - looped(changed).logits[:, :-1]).abs().max().item()
    assert moved > 1e-4


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"halt_tau": 0.1}, "halting reads a whole row's norms"),
        ({"decode_mode": "bypass"}, "per_loop needs decode_mode='full'"),
        ({"decode_mode": "first_n", "decode_first_n": 2}, "per_loop needs decode_mode='full'"),
    ],
)
def test_per_loop_refuses_halting_and_partial_decoding(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message) as raised:
        per_loop_spec((1, 3), 3, "euler", "block", **overrides)
    assert "\n" not in str(raised.value)


def test_policy_id_names_it_and_settings_round_trip() -> None:
    spec = per_loop_spec((12, 15), 3, "euler", "block")
    assert spec.id == "euler-w12-15-K3-cache-per_loop-decode-full"
    assert LoopedWindow(spec).id == spec.id
    settings = spec.to_settings()
    assert settings["cache_strategy"] == "per_loop"
    assert LoopSpec.from_settings(settings) == dataclasses.replace(spec, halt_scope="batch")


# ---- the project's generation path ---------------------------------------------------------


def test_greedy_generation_follows_teacher_forcing() -> None:
    tokenizer = load_tokenizer(None)  # the vendored GPT-2 tokenizer
    model = random_decoder("llama", vocab_size=len(tokenizer))
    spec = per_loop_spec((1, 3), 3, "heun", "layer")
    runner = bind(model, LoopedWindow(spec))
    prompts = ["Question: 2 + 3 =", "The loop"]
    generated = runner.generate(tokenizer, prompts, max_new_tokens=6, stop_strings=(), early_stop=False)
    looped = loop_decoder(model, spec)
    for prompt, result in zip(prompts, generated, strict=True):
        prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
        sequence = torch.tensor([prompt_ids + result.token_ids[:-1]])
        with torch.no_grad():
            forced = looped(sequence).logits[0, len(prompt_ids) - 1 :].argmax(-1)  # [new]
        assert forced.tolist() == result.token_ids
    # the batch is left-padded: the cached path equals re-running the whole sequence each step
    recomputed = recompute_generate(runner.causal_lm, tokenizer, prompts, 6, stop_strings=(), early_stop=False)
    lm = runner.causal_lm
    cached = greedy_generate(lm, tokenizer, prompts, 6, stop_strings=(), early_stop=False, new_cache=DynamicCache)
    assert recomputed == cached
    assert [r.token_ids for r in recomputed] == [r.token_ids for r in generated]


def test_rows_leaving_the_batch_take_their_slots_with_them() -> None:
    """greedy_generate drops finished rows from the cache: every pass's slot must follow."""
    tokenizer = load_tokenizer(None)
    model = random_decoder("qwen3", vocab_size=len(tokenizer), seed=2)
    lm = bind(model, LoopedWindow(per_loop_spec((2, 4), 3, "rk4", "block"))).causal_lm
    prompts = ["Question: 2 + 3 =", "The loop"]
    free = greedy_generate(lm, tokenizer, prompts, 8, stop_strings=(), new_cache=DynamicCache)  # as the runner does
    text_of_row_1 = tokenizer.decode(free[1].token_ids)
    stop = next(text for t in free[0].token_ids[1:] if (text := tokenizer.decode([t])).strip() not in text_of_row_1)
    stopped = greedy_generate(lm, tokenizer, prompts, 8, stop_strings=(stop.strip(),), new_cache=DynamicCache)
    assert stopped[0].finish_reason == "stop" and len(stopped[0].token_ids) < len(free[0].token_ids)
    assert stopped[1].token_ids == free[1].token_ids


# ---- the smol study's configs ----------------------------------------------------------------


@pytest.mark.parametrize("version", ["smol", "smol-smoke"])
def test_smol_configs_generate_with_the_teacher_forced_model(version: str) -> None:
    config = load_config(version)
    spec = config.loop_family().policy(2).spec
    assert (spec.cache_strategy, spec.decode_mode) == ("per_loop", "full")
    with pytest.raises(ConfigError, match="strategy anderson mixes positions"):
        load_config(version, ["looping.strategy=anderson"])


def test_halting_policies_score_and_generate_with_per_loop(model, ids: torch.Tensor, family: str) -> None:
    """The adaptive stage's halting rules teacher-force (no KV, so per_loop changes nothing
    there) and decode token by token (tests/models/test_token_halting.py): the prompt is
    read at full depth."""
    spec = per_loop_spec(WINDOWS[family], 3, "euler", "block")
    runner = bind(model, HaltingWindow(spec, "kl", 0.01))
    with torch.no_grad():
        hidden, executed = runner.hidden(ids, prompt_lengths=torch.tensor([4, 6]))
        assert hidden.shape[:2] == ids.shape and executed.shape == (2,)
        prefill = runner.causal_lm(ids[:, :4], use_cache=True)
        fixed = bind(model, LoopedWindow(spec)).causal_lm(ids[:, :4], use_cache=True)
    assert torch.equal(prefill.logits, fixed.logits) and prefill.executed_loops.eq(3).all()


def test_per_loop_costs_no_kv_writing_pass() -> None:
    config = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152)  # fmt: skip
    flops = {
        cache: looped_decoder_token_flops(
            config, LoopedWindow(per_loop_spec((12, 15), 4, "euler", "block", cache_strategy=cache)), 100.0
        )
        for cache in ("none", "last", "per_loop")
    }
    assert flops["per_loop"] == flops["none"] < flops["last"]
