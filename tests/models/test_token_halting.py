"""Per-token halting in decoding (looped decoder, ``cache_strategy="per_loop"``): each
generated token stops its own loop by the halting rule; a later token reads an exited
token's missing passes from its last computed pass; tau = 0 is fixed-depth decoding."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from study.looping.policies import HaltingWindow, LoopedWindow
from study.models.backbones import bind
from study.models.looped_decoder import LoopedDecoder, loop_decoder
from study.tokenizer import load_tokenizer
from tests.looping.test_per_loop import per_loop_spec, random_decoder

LOOPS = 4
WINDOWS = {"llama": (1, 3), "qwen3": (2, 4)}
PREFILL = 4


@pytest.fixture(scope="module", params=["llama", "qwen3"])
def family(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def model(family: str):
    return random_decoder(family)


@pytest.fixture(scope="module")
def ids(model) -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    return torch.randint(0, model.config.vocab_size, (2, PREFILL + 9), generator=generator)  # [B, T]


def spec_of(family: str, strategy: str = "euler"):
    return per_loop_spec(WINDOWS[family], LOOPS, strategy, "block")


@torch.no_grad()
def decode(looped: LoopedDecoder, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, DynamicCache]:
    """Prefill PREFILL tokens, then one token per call: (logits [B, T, V], loops [B, T - PREFILL], cache)."""
    cache = DynamicCache(config=looped.config)
    out = looped(ids[:, :PREFILL], cache=cache)
    logits, loops = [out.logits], []
    for t in range(PREFILL, ids.shape[1]):
        out = looped(ids[:, t : t + 1], cache=cache)
        logits.append(out.logits)
        loops.append(out.executed_loops)
    return torch.cat(logits, dim=1), torch.stack(loops, dim=1), cache


def halting_decoder(model, spec, rule: str, tau: float) -> LoopedDecoder:
    return bind(model, HaltingWindow(spec, rule, tau)).looped


def mixed_tau(model, spec, ids: torch.Tensor, rule: str) -> tuple[float, torch.Tensor]:
    """A tau at which some generated tokens stop early and others run on, and their loops."""
    for tau in torch.logspace(-4, 1, 26).tolist():
        loops = decode(halting_decoder(model, spec, rule, tau), ids)[1]
        if loops.min() < LOOPS and len(set(loops.flatten().tolist())) > 1:
            return tau, loops
    raise AssertionError(f"no tau splits the tokens by {rule}")


@pytest.mark.parametrize("rule", ["residual", "kl"])
def test_tau_zero_is_fixed_depth_decoding_exactly(model, ids: torch.Tensor, family: str, rule: str) -> None:
    spec = spec_of(family)
    fixed_logits, fixed_loops, _ = decode(loop_decoder(model, spec), ids)
    logits, loops, _ = decode(halting_decoder(model, spec, rule, 0.0), ids)
    assert torch.equal(logits, fixed_logits)
    assert torch.equal(loops, fixed_loops) and loops.eq(LOOPS).all()


def test_tau_zero_generates_the_fixed_depth_tokens_and_records_their_loops() -> None:
    tokenizer = load_tokenizer(None)
    model = random_decoder("llama", vocab_size=len(tokenizer))
    spec = spec_of("llama")
    prompts = ["Question: 2 + 3 =", "The loop"]
    fixed = bind(model, LoopedWindow(spec)).generate(tokenizer, prompts, 6, stop_strings=(), early_stop=False)
    for rule in ("residual", "kl"):
        halting = bind(model, HaltingWindow(spec, rule, 0.0)).generate(
            tokenizer, prompts, 6, stop_strings=(), early_stop=False
        )
        assert [r.token_ids for r in halting] == [r.token_ids for r in fixed]
        assert [r.token_loops for r in halting] == [[float(LOOPS)] * 5] * 2  # 6 tokens: 5 fed back
    stopping = bind(model, HaltingWindow(spec, "kl", 1.0)).generate(
        tokenizer, prompts, 6, stop_strings=(), early_stop=False
    )
    assert all(r.token_loops is not None and min(r.token_loops) < LOOPS for r in stopping)


@pytest.mark.parametrize("rule", ["residual", "kl"])
def test_exited_tokens_leave_their_last_pass_in_the_slots_they_skipped(
    model, ids: torch.Tensor, family: str, rule: str
) -> None:
    spec = spec_of(family)
    tau, loops = mixed_tau(model, spec, ids, rule)
    looped = halting_decoder(model, spec, rule, tau)
    _, _, cache = decode(looped, ids)
    a, b = WINDOWS[family]
    n_layers, width = model.config.num_hidden_layers, b - a + 1

    def slot(i: int, j: int):
        return cache.layers[i if j == 0 else n_layers + (j - 1) * width + (i - a)]

    assert {layer.get_seq_length() for layer in cache.layers} == {ids.shape[1]}  # every slot has every token
    for i in range(a, b + 1):
        for r in range(ids.shape[0]):
            for t, passes in enumerate(loops[r].long().tolist()):
                position = PREFILL + t
                last = slot(i, passes - 1)
                for j in range(passes, LOOPS):  # the passes it skipped read its last computed one
                    assert torch.equal(slot(i, j).keys[r, :, position], last.keys[r, :, position])
                    assert torch.equal(slot(i, j).values[r, :, position], last.values[r, :, position])
                if passes > 1:  # its own passes are its own (the check above is not vacuous)
                    assert not torch.equal(slot(i, passes - 2).keys[r, :, position], last.keys[r, :, position])


def test_a_token_halts_alone_whatever_its_batch_mates_do(model, ids: torch.Tensor, family: str) -> None:
    spec = spec_of(family)
    tau, loops = mixed_tau(model, spec, ids, "kl")
    looped = halting_decoder(model, spec, "kl", tau)
    logits, _, _ = decode(looped, ids)
    for r in range(ids.shape[0]):
        alone_logits, alone_loops, _ = decode(looped, ids[r : r + 1])
        assert torch.equal(alone_loops[0], loops[r])
        torch.testing.assert_close(alone_logits[0], logits[r], rtol=1e-4, atol=1e-5)


def test_per_token_halting_decodes_one_token_per_call(model, ids: torch.Tensor, family: str) -> None:
    looped = halting_decoder(model, spec_of(family), "kl", 0.01)
    cache = DynamicCache(config=looped.config)
    with torch.no_grad():
        looped(ids[:, :PREFILL], cache=cache)
        with pytest.raises(ValueError, match="one token per call, got 2"):
            looped(ids[:, PREFILL : PREFILL + 2], cache=cache)
