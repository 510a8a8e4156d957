"""Training-free looping: the authors' logits, the KV rules, per-row halting, each strategy's formula."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, DynamicCache

import study.looping
from study.looping import STRATEGIES, Halting, LoopSpec, loop_decoder
from study.looping import strategies as S
from study.models.hf_compat import cache_kwargs
from study.models.looped_decoder import LoopedDecoder
from tests.conftest import shared_dir

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "tfloop-conformance"
SETTINGS = json.loads((FIXTURE / "settings.json").read_text())
EXPECTED = load_file(FIXTURE / "expected.safetensors")
IDS = EXPECTED["input_ids"]  # [2, 8]
PREFILL = 5  # decode settings: prefill IDS[:, :5], then one token at a time


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    # The tiny model's matmuls are microseconds: a thread pool only adds overhead.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model(attn: str = "eager"):
    return AutoModelForCausalLM.from_pretrained(FIXTURE, dtype=torch.float32, attn_implementation=attn).eval()


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@torch.no_grad()
def run_setting(looped: LoopedDecoder, decode: bool) -> torch.Tensor:
    """The fixture's logits for one setting: the whole input, or the 3 decode steps [2, 3, V]."""
    if not decode:
        return looped(IDS).logits
    cache = DynamicCache(config=looped.config)
    looped(IDS[:, :PREFILL], cache=cache)
    return torch.cat([looped(IDS[:, t : t + 1], cache=cache).logits for t in range(PREFILL, 8)], dim=1)


def count_layer_calls(model) -> tuple[list[int], list]:
    calls = [0] * model.config.num_hidden_layers
    handles = [
        layer.register_forward_pre_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
        for i, layer in enumerate(model.model.layers)
    ]
    return calls, handles


# ---- conformance with the authors' wrapper ------------------------------------------------


@pytest.mark.parametrize("entry", SETTINGS["settings"], ids=[e["id"] for e in SETTINGS["settings"]])
def test_conformance(model, entry: dict) -> None:
    looped = loop_decoder(model, LoopSpec.from_settings(entry))
    calls, handles = count_layer_calls(model)
    try:
        logits = run_setting(looped, entry["decode_steps"])
    finally:
        for handle in handles:
            handle.remove()
    error = (logits - EXPECTED["logits." + entry["id"]]).abs().max().item()
    assert error <= 1e-4, f"{entry['id']}: max-abs error {error:.3g}"
    assert calls == entry["layer_calls"]  # the same passes, not just close numbers


def test_conformance_with_sdpa_attention() -> None:
    model = tiny_model("sdpa")
    worst = 0.0
    for entry in SETTINGS["settings"]:
        logits = run_setting(loop_decoder(model, LoopSpec.from_settings(entry)), entry["decode_steps"])
        worst = max(worst, (logits - EXPECTED["logits." + entry["id"]]).abs().max().item())
    assert worst <= 1e-4, f"max-abs error over all settings with sdpa: {worst:.3g}"


def test_vendored_fixture_matches_shared() -> None:
    source = shared_dir() / "fixtures" / "tfloop-conformance"
    for path in sorted(FIXTURE.iterdir()):
        assert path.read_bytes() == (source / path.name).read_bytes(), path.name


# ---- the wrapper against the plain model ----------------------------------------------------


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_one_naive_loop_is_the_plain_model_bit_for_bit(attn: str) -> None:
    model = tiny_model(attn)
    # With a cache, the window's KV must come from its input ("first") to be the plain model's:
    # "last" (the reference's default) recomputes it from the loop's output even at K=1.
    looped = loop_decoder(model, LoopSpec((1, 4), 1, "naive", cache_strategy="first"))
    with torch.no_grad():
        assert torch.equal(looped(IDS).logits, model(IDS, use_cache=False).logits)
        assert torch.equal(loop_decoder(model, LoopSpec((1, 4), 1))(IDS).logits, model(IDS, use_cache=False).logits)
        plain_cache, looped_cache = DynamicCache(config=model.config), DynamicCache(config=model.config)
        for chunk in (IDS[:, :PREFILL], IDS[:, PREFILL : PREFILL + 1], IDS[:, PREFILL + 1 :]):
            expected = model(chunk, use_cache=True, **cache_kwargs(plain_cache)).logits
            assert torch.equal(looped(chunk, cache=looped_cache).logits, expected)


def test_wrapping_leaves_the_model_untouched(model) -> None:
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    with torch.no_grad():
        before = model(IDS, use_cache=False).logits
        looped = loop_decoder(model, LoopSpec((1, 4), 3, "anderson", mode="layer", decode_mode="full"))
        cache = DynamicCache(config=model.config)
        looped(IDS[:, :PREFILL], cache=cache)
        looped(IDS[:, PREFILL : PREFILL + 1], cache=cache)
        after = model(IDS, use_cache=False).logits
    assert torch.equal(before, after)
    assert all(torch.equal(state[name], tensor) for name, tensor in model.state_dict().items())
    assert all("forward" not in vars(module) for module in model.modules())  # nothing patched


def test_window_must_fit_the_model(model) -> None:
    with pytest.raises(ValueError, match="outside the model's 6 layers"):
        loop_decoder(model, LoopSpec((4, 6), 2))


def test_loop_decoder_is_importable_from_looping() -> None:
    from study.models.looped_decoder import loop_decoder as direct

    assert study.looping.loop_decoder is direct
    with pytest.raises(AttributeError):
        _ = study.looping.no_such_name


# ---- KV cache and decoding ------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        LoopSpec((1, 4), 3, "euler", decode_mode="full"),
        LoopSpec((2, 3), 2, "heavy_ball", mode="layer", cache_strategy="first", decode_mode="full"),
        LoopSpec((2, 3), 3, "layer_anchored_frozen", mode="layer", anchor_beta=0.5, decode_mode="full"),
        LoopSpec((0, 2), 2, "rk4", cache_strategy="none", decode_mode="first_n", decode_first_n=2),
    ],
    ids=lambda spec: spec.id,
)
def test_generate_equals_step_by_step_decoding(model, spec: LoopSpec) -> None:
    looped = loop_decoder(model, spec)
    prompt = IDS[:, :PREFILL]
    generated = looped.generate(prompt, max_new_tokens=6)
    assert generated.shape == (2, PREFILL + 6)
    tokens, cache = prompt, DynamicCache(config=model.config)
    with torch.no_grad():
        logits = looped(prompt, cache=cache).logits
        for _ in range(6):
            token = logits[:, -1].argmax(-1, keepdim=True)
            tokens = torch.cat([tokens, token], dim=1)
            logits = looped(token, cache=cache).logits
    assert torch.equal(generated, tokens)


def test_generate_with_one_naive_loop_is_transformers_greedy(model) -> None:
    looped = loop_decoder(model, LoopSpec((2, 3), 1, cache_strategy="first"))
    expected = model.generate(IDS[:, :PREFILL], max_new_tokens=6, do_sample=False)  # eos = pad = 1
    assert torch.equal(looped.generate(IDS[:, :PREFILL], max_new_tokens=6, eos_token_id=1), expected)


def test_generate_stops_rows_at_eos(model) -> None:
    looped = loop_decoder(model, LoopSpec((2, 3), 2, "euler"))
    free = looped.generate(IDS[:, :PREFILL], max_new_tokens=4)
    eos = int(free[0, PREFILL + 1])  # make row 0's second new token the end of its text
    stopped = looped.generate(IDS[:, :PREFILL], max_new_tokens=4, eos_token_id=eos)
    assert torch.equal(stopped[0, : PREFILL + 2], free[0, : PREFILL + 2])
    assert (stopped[0, PREFILL + 2 :] == eos).all()


def test_decode_first_n_loops_only_the_first_n_decode_calls(model) -> None:
    looped = loop_decoder(model, LoopSpec((2, 3), 3, "euler", decode_mode="first_n", decode_first_n=2))
    full = loop_decoder(model, LoopSpec((2, 3), 3, "euler", decode_mode="full"))
    executed, logits, full_logits = [], [], []
    with torch.no_grad():
        for wrapper, out in ((looped, logits), (full, full_logits)):
            cache = DynamicCache(config=model.config)
            wrapper(IDS[:, :4], cache=cache)
            for t in range(4, 8):
                step = wrapper(IDS[:, t : t + 1], cache=cache)
                out.append(step.logits)
                if wrapper is looped:
                    executed.append(step.executed_loops[0].item())
    assert executed == [3.0, 3.0, 1.0, 1.0]
    assert torch.equal(logits[0], full_logits[0]) and torch.equal(logits[1], full_logits[1])
    assert not torch.allclose(logits[2], full_logits[2])


@pytest.mark.parametrize("cache_strategy", ["first", "last", "none"])
def test_cache_holds_one_entry_per_token(model, cache_strategy: str) -> None:
    looped = loop_decoder(model, LoopSpec((2, 3), 3, "euler", cache_strategy=cache_strategy, decode_mode="full"))
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        looped(IDS[:, :PREFILL], cache=cache)
        for t in range(PREFILL, 8):
            looped(IDS[:, t : t + 1], cache=cache)
    window_length = 0 if cache_strategy == "none" else 8
    lengths = [cache.layers[i].get_seq_length() for i in range(6)]
    assert lengths == [8, 8, window_length, window_length, 8, 8]


# ---- per-row halting --------------------------------------------------------------------------


# (strategy, tau) where the rows of ROWS halt after different numbers of loops
HALTING_CASES = [("ema", 0.4), ("heavy_ball", 0.3), ("anderson", 0.4)]
ROWS = torch.randint(2, 96, (3, 10), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(("strategy", "tau"), HALTING_CASES)
def test_per_row_halting_gives_each_row_its_result_alone(model, strategy: str, tau: float) -> None:
    looped = loop_decoder(model, LoopSpec((1, 4), 6, strategy, halt_tau=tau))
    with torch.no_grad():
        batch = looped(ROWS)
        alone = [looped(ROWS[r : r + 1]) for r in range(len(ROWS))]
    assert len(set(batch.executed_loops.tolist())) > 1  # the rows really halt at different depths
    for r, single in enumerate(alone):
        assert batch.executed_loops[r] == single.executed_loops[0]
        torch.testing.assert_close(batch.logits[r], single.logits[0], rtol=0, atol=1e-5)


@pytest.mark.parametrize(("strategy", "tau"), HALTING_CASES)
def test_batch_scope_couples_the_rows(model, strategy: str, tau: float) -> None:
    spec = LoopSpec((1, 4), 6, strategy, halt_tau=tau, halt_scope="batch")
    looped = loop_decoder(model, spec)
    with torch.no_grad():
        batch = looped(ROWS)
        alone = [looped(ROWS[r : r + 1]) for r in range(len(ROWS))]
    assert len(set(batch.executed_loops.tolist())) == 1  # every row stops with the batch
    differs = [r for r, single in enumerate(alone) if single.executed_loops[0] != batch.executed_loops[r]]
    assert differs, "some row should run a different depth alone than in the batch"
    r = differs[0]
    assert not torch.allclose(batch.logits[r], alone[r].logits[0], atol=1e-4)


def test_per_row_halting_ignores_right_padding(model) -> None:
    looped = loop_decoder(model, LoopSpec((1, 4), 6, "heavy_ball", halt_tau=0.3))
    lengths = [10, 7, 4]
    mask = torch.tensor([[1] * n + [0] * (10 - n) for n in lengths])
    padded = torch.where(mask.bool(), ROWS, 0)
    with torch.no_grad():
        batch = looped(padded, attention_mask=mask)
        for r, n in enumerate(lengths):
            single = looped(ROWS[r : r + 1, :n])
            assert batch.executed_loops[r] == single.executed_loops[0]
            torch.testing.assert_close(batch.logits[r, :n], single.logits[0], rtol=0, atol=1e-5)


def test_layer_mode_reports_the_mean_over_layers(model) -> None:
    looped = loop_decoder(model, LoopSpec((2, 3), 4, "euler", mode="layer", halt_tau=0.15, halt_scope="batch"))
    with torch.no_grad():
        assert looped(IDS).executed_loops.tolist() == [1.0, 1.0]  # the fixture: each layer halts after one
        assert loop_decoder(model, LoopSpec((2, 3), 4, "euler", mode="layer"))(IDS).executed_loops.tolist() == [4, 4]


# ---- each strategy's rule on a contraction -------------------------------------------------------

C = torch.tensor([[1.0, -2.0, 0.5], [3.0, 0.25, -1.0]])  # [B=2, D=3]
FIXED = 2 * C  # the fixed point of g


def g(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x + C


X0 = torch.tensor([[0.0, 1.0, 2.0], [-1.0, 4.0, 0.5]], dtype=torch.float64).float()


def error_factor(rule, K: int, **hp) -> torch.Tensor:
    """(x_K - x*) / (x0 - x*): on the linear g every linear rule shrinks the error by one factor."""
    return (rule(g, X0, K, **hp) - FIXED) / (X0 - FIXED)


def close(actual: torch.Tensor, expected: float | torch.Tensor) -> None:
    torch.testing.assert_close(
        actual, torch.as_tensor(expected, dtype=actual.dtype).expand_as(actual), atol=1e-6, rtol=0
    )


@pytest.mark.parametrize("K", [1, 2, 3, 4])
def test_linear_rules_by_hand(K: int) -> None:
    # dx/dt = g(x) - x = -(x - x*) / 2 with step h = 1/K: each rule multiplies the error by a known factor
    z = -0.5 / K
    close(error_factor(S.naive, K), 0.5**K)
    close(error_factor(S.euler, K), (1 + z) ** K)
    close(error_factor(S.midpoint, K), (1 + z + z**2 / 2) ** K)
    close(error_factor(S.heun, K), (1 + z + z**2 / 2) ** K)
    close(error_factor(S.rk4, K), (1 + z + z**2 / 2 + z**3 / 6 + z**4 / 24) ** K)
    close(error_factor(S.ema, K, ema_alpha=0.3), (1 - 0.3 / 2) ** K)
    close(error_factor(S.residual_scaled, K), 1 - (1 - 0.5**K) / K)
    close(error_factor(S.block_anchored, K, anchor_beta=0.0), (1 + z) ** K)
    close(error_factor(S.per_layer_anchored, K, anchor_beta=0.0), (1 + z) ** K)
    close(error_factor(S.block_anchored, K, anchor_beta=0.25), 0.25 * 0.5 + 0.75 * (1 + z) ** K)


def test_damped_rules_by_hand() -> None:
    x1 = X0 + 0.5 * (g(X0) - X0)
    close(S.heavy_ball(g, X0, 2, ema_alpha=0.5, momentum_beta=0.3), x1 + 0.5 * (g(x1) - x1) + 0.3 * (x1 - X0))
    close(
        S.ema_sched(g, X0, 2, per_step_alphas=[0.6, 0.4]),
        0.4 * g(0.6 * g(X0) + 0.4 * X0) + 0.6 * (0.6 * g(X0) + 0.4 * X0),
    )
    y = 0.7 * g(X0) + 0.3 * X0
    close(S.input_anchor(g, X0, 2, ema_alpha=0.7), 0.7 * g(y) + 0.3 * X0)
    close(S.poly_blend(g, X0, 2, per_step_alphas=[0.5, 0.3, 0.2]), 0.5 * X0 + 0.3 * g(X0) + 0.2 * g(g(X0)))
    # two layers, two passes: on pass 2 each layer hands on the mean of its two outputs
    layer0_pass1 = g(X0)
    layer1_pass1 = g(layer0_pass1)
    layer0_mean = (layer0_pass1 + g(layer1_pass1)) / 2
    close(S.uniform([g, g], X0, 2), (layer1_pass1 + g(layer0_mean)) / 2)


def test_norm_stab_keeps_every_token_norm() -> None:
    out = S.norm_stab(g, X0, 1, ema_alpha=0.5)
    y = 0.5 * g(X0) + 0.5 * X0
    close(out, y * X0.norm(dim=-1, keepdim=True) / y.norm(dim=-1, keepdim=True))


def test_layer_anchored_frozen_by_hand() -> None:
    natural = g(X0)
    n_in, n_out = X0.norm(dim=-1, keepdim=True), natural.norm(dim=-1, keepdim=True)
    h = 0.5 * X0 + 0.5 * natural
    h = h * (n_in + n_out) / 2 / h.norm(dim=-1, keepdim=True)  # K=2: step 1 lands halfway between the norms
    h = 0.5 * h + 0.5 * g(h)  # the last step is not rescaled
    close(S.layer_anchored_frozen(g, X0, 2, anchor_beta=0.25, anchor_rescale=False), 0.25 * natural + 0.75 * h)
    rescaled = S.layer_anchored_frozen(g, X0, 2, anchor_beta=0.25, anchor_rescale=True)
    close(rescaled.norm(dim=-1), n_out.squeeze(-1))
    # the natural pass is its own function when given (the model's KV-writing pass)
    shifted = S.layer_anchored_frozen(g, X0, 1, anchor_beta=0.0, anchor_rescale=False, natural=lambda x: g(x) + 1)
    close(shifted, g(X0) + 1)


def test_anderson_by_hand() -> None:
    # Step 1 is damped Picard. Step 2 on the linear g, by hand: f1 = -e1/2, dF = e0/4 with e1 = e0/2,
    # so gamma = -1 and x2 = g(x1) - dF gamma = x* + e0/2 = x1. The reference's update mixes G with dF
    # where Walker-Ni Type-II Anderson uses dG = dX + dF (which would land on x* here): the fixture
    # pins the reference's update, so that is what runs.
    close(S.anderson(g, X0, 1, anderson_m=2, anderson_beta=0.5), 0.5 * X0 + 0.5 * g(X0))
    x2 = S.anderson(g, X0, 2, anderson_m=2, anderson_beta=1.0)
    torch.testing.assert_close(x2, g(X0), atol=1e-5, rtol=0)  # 1e-5: the 1e-6 Tikhonov term


def test_anderson_mixes_per_row_in_row_scope() -> None:
    slopes = torch.tensor([[0.5], [-0.3]])  # rows contract differently, so their best gammas differ

    def g_rows(x: torch.Tensor) -> torch.Tensor:
        return slopes * x + C

    both = S.anderson(g_rows, X0, 3, anderson_m=2, anderson_beta=0.5)
    for r in range(2):
        alone = S.anderson(lambda x, r=r: slopes[r] * x + C[r], X0[r : r + 1], 3, anderson_m=2, anderson_beta=0.5)
        torch.testing.assert_close(both[r : r + 1], alone, atol=1e-6, rtol=0)
    coupled = S.anderson(g_rows, X0, 3, anderson_m=2, anderson_beta=0.5, halt=Halting(scope="batch"))
    assert not torch.allclose(coupled, both, atol=1e-3)


def test_aitken_extrapolates_an_oscillating_contraction() -> None:
    def flip(x: torch.Tensor) -> torch.Tensor:
        return -0.5 * x + C

    fixed = C / 1.5
    close(S.aitken(flip, X0, 2), fixed)  # exact in one step on a linear map
    # on g the extrapolated move would exceed |g(x) - x| and is clipped to a plain step
    close(S.aitken(g, X0, 2), g(X0))


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_every_rule_keeps_a_fixed_point(name: str) -> None:
    alphas = {"ema_sched": [0.25] * 4, "poly_blend": [0.2] * 5}.get(name)
    spec = LoopSpec((0, 0), 4, name, STRATEGIES[name].modes[0], per_step_alphas=alphas)
    entry = STRATEGIES[name]
    x = entry.rule([g], FIXED, 4) if entry.over_layers else entry.rule(g, FIXED, 4, **spec.hyperparameters)
    close(x, FIXED)


# ---- the shared halting helper ----------------------------------------------------------------------


def test_halting_freezes_each_row_at_its_own_step() -> None:
    start = torch.stack([FIXED[0] + 1.0, FIXED[1] + 100.0])  # row 0 starts near its fixed point
    halt = Halting(0.05)
    both = S.ema(g, start, 30, ema_alpha=0.5, halt=halt)
    for r in range(2):
        alone_halt = Halting(0.05)
        alone = S.ema(lambda x, r=r: 0.5 * x + C[r], start[r : r + 1], 30, ema_alpha=0.5, halt=alone_halt)
        close(both[r : r + 1], alone)
        assert halt.executed[r] == alone_halt.executed[0]
    assert halt.executed[0] < halt.executed[1] < 30


def test_halting_in_batch_scope_stops_every_row_together() -> None:
    start = torch.stack([FIXED[0] + 1.0, FIXED[1] + 100.0])
    halt = Halting(0.05, scope="batch")
    S.ema(g, start, 30, ema_alpha=0.5, halt=halt)
    assert halt.executed[0] == halt.executed[1] < 30


def test_aitken_counts_two_loops_per_step() -> None:
    halt = Halting()
    S.aitken(g, X0, 4, halt=halt)
    assert halt.executed.tolist() == [4, 4]


# ---- LoopSpec -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"strategy": "newton"}, "unknown strategy 'newton'"),
        ({"window": (5, 2)}, "0 <= a <= b"),
        ({"window": (-1, 2)}, "0 <= a <= b"),
        ({"loops": 0}, "loops must be an integer >= 1"),
        ({"strategy": "aitken", "loops": 3}, "loops must be even"),
        ({"strategy": "poly_blend", "per_step_alphas": [0.5, 0.5]}, "length 4"),
        ({"strategy": "ema_sched"}, "length 3 with loops=3, got none"),
        ({"strategy": "naive", "ema_alpha": 0.7}, "naive does not use ema_alpha"),
        ({"strategy": "rk4", "halt_tau": 0.1}, "rk4 cannot halt early"),
        ({"strategy": "euler", "halt_tau": -1.0}, "halt_tau must be a positive number"),
        ({"mode": "tile"}, "mode must be one of block, layer"),
        ({"strategy": "uniform", "mode": "layer"}, "uniform runs in block mode only"),
        ({"strategy": "layer_anchored_frozen"}, "runs in layer mode only"),
        ({"cache_strategy": "middle"}, "cache_strategy must be one of"),
        ({"decode_mode": "first_n"}, "decode_first_n=0 needs decode_mode='first_n'"),
        ({"halt_scope": "token"}, "halt_scope must be one of row, batch"),
        ({"strategy": "anderson", "anderson_m": 0}, "anderson_m must be an integer >= 1"),
    ],
)
def test_spec_validation(kwargs: dict, message: str) -> None:
    arguments = {"window": (2, 3), "loops": 3, **kwargs}
    with pytest.raises(ValueError, match=message) as raised:
        LoopSpec(**arguments)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("entry", SETTINGS["settings"], ids=[e["id"] for e in SETTINGS["settings"]])
def test_from_settings_round_trip(entry: dict) -> None:
    spec = LoopSpec.from_settings(entry)
    assert spec.halt_scope == "batch"
    assert spec.to_settings() == {key: entry[key] for key in spec.to_settings()}


def test_spec_ids() -> None:
    assert LoopSpec((12, 15), 3, "euler").id == "euler-w12-15-K3"
    assert LoopSpec((12, 15), 3, "euler", mode="layer").id == "euler-w12-15-K3-layer"
    assert LoopSpec((12, 15), 3, "ema").id == "ema-w12-15-K3"  # defaults are not spelled out
    assert LoopSpec((12, 15), 3, "ema", ema_alpha=0.7, halt_tau=0.1).id == "ema-w12-15-K3-alpha0.7-halt0.1"
    spec = LoopSpec((2, 3), 2, "ema_sched", per_step_alphas=[0.6, 0.4], cache_strategy="first", decode_mode="full")
    assert spec.id == "ema_sched-w2-3-K2-alphas0.6,0.4-cache-first-decode-full"
    frozen = LoopSpec((2, 3), 3, "layer_anchored_frozen", "layer", anchor_beta=0.5, anchor_rescale=True)
    assert frozen.id == "layer_anchored_frozen-w2-3-K3-layer-beta0.5-rescale"
    prefill = [e for e in SETTINGS["settings"] if not e["decode_steps"]]
    assert len({LoopSpec.from_settings(e).id for e in prefill}) == len(prefill)


def test_spec_is_frozen_and_hashable() -> None:
    spec = LoopSpec([2, 3], 2, "poly_blend", per_step_alphas=[0.2, 0.3, 0.5])
    assert spec.window == (2, 3) and spec.per_step_alphas == (0.2, 0.3, 0.5)
    assert hash(spec) == hash(LoopSpec((2, 3), 2, "poly_blend", per_step_alphas=(0.2, 0.3, 0.5)))
    with pytest.raises(AttributeError):
        spec.loops = 3  # type: ignore[misc]
    assert math.isclose(sum(spec.hyperparameters["per_step_alphas"]), 1.0)
