"""Cached batched greedy decoding agrees with the full forward, with itself one row at
a time, with the no-cache reference and with transformers' ``generate``."""

from __future__ import annotations

import pytest
import torch
from transformers.cache_utils import DynamicCache

from study.models.generation import (
    GenerationResult,
    cut_at_stop,
    greedy_generate,
    left_pad,
    preallocated_cache,
    recompute_generate,
)
from study.models.loopformer import resolve_schedule
from tests.support.helpers_sweep import ScriptedModel, gpt2_tokenizer, tiny_model

SCHEDULES = [{"num_loops": 1}, {"num_loops": 3}, {"num_loops": 8}, {"schedule": [0.5, 0.25, 0.25]}]
PROMPTS = [
    "Question: Tom has 3 apples and buys 4 more. How many apples does he have?\nAnswer:",
    "Question: What is 2 + 2?\nAnswer:",
    "Question: A train travels 60 miles per hour for 2.5 hours. How far does it go in total?\nAnswer:",
]


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=0, block_size=128)


@pytest.fixture(scope="module")
def tokenizer():
    return gpt2_tokenizer()


def test_loops_matter(model):
    ids = torch.randint(0, 50000, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        one = model(ids, num_loops=1, use_cache=False).logits
        three = model(ids, num_loops=3, use_cache=False).logits
    assert (one - three).abs().max() > 1e-2  # otherwise the schedule tests below prove nothing


@pytest.mark.parametrize("preallocated", [False, True], ids=["dynamic", "preallocated"])
@pytest.mark.parametrize("loops", SCHEDULES, ids=lambda s: str(next(iter(s.values()))))
def test_cached_incremental_logits_match_full_forward(model, loops, preallocated):
    generator = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 50000, (2, 20), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # the second row is left-padded
    steps = len(resolve_schedule(loops.get("schedule"), loops.get("num_loops"), 8))
    with torch.inference_mode():
        full = model(ids, attention_mask=mask, use_cache=False, **loops).logits
        cache = preallocated_cache(model, steps, capacity=20) if preallocated else DynamicCache()
        prefill = model(ids[:, :8], attention_mask=mask[:, :8], cache=cache, use_cache=True, **loops)
        steps = [prefill.logits]
        for t in range(8, 20):
            out = model(ids[:, t : t + 1], attention_mask=mask[:, : t + 1], cache=cache, use_cache=True, **loops)
            steps.append(out.logits)
    incremental = torch.cat(steps, dim=1)
    real = mask.bool()  # padded positions' outputs are never read
    assert (incremental - full)[real].abs().max().item() <= 1e-5


def test_left_pad():
    ids, mask = left_pad([[5, 6, 7], [9]], pad_id=0, device=torch.device("cpu"))
    assert ids.tolist() == [[5, 6, 7], [0, 0, 9]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


@pytest.mark.parametrize("loops", [{"num_loops": 3}, {"schedule": [0.5, 0.25, 0.25]}], ids=["3", "schedule"])
def test_batched_equals_one_at_a_time(model, tokenizer, loops):
    batched = greedy_generate(model, tokenizer, PROMPTS, max_new_tokens=8, stop_strings=(), **loops)
    alone = [greedy_generate(model, tokenizer, [p], max_new_tokens=8, stop_strings=(), **loops)[0] for p in PROMPTS]
    assert [r.token_ids for r in batched] == [r.token_ids for r in alone]
    assert [r.text for r in batched] == [r.text for r in alone]
    assert all(len(r.token_ids) == 8 or r.finish_reason == "eos" for r in batched)


def test_rows_leaving_the_batch_do_not_disturb_the_others(model, tokenizer):
    free = greedy_generate(model, tokenizer, PROMPTS, max_new_tokens=8, stop_strings=(), num_loops=3)
    # a stop string only the second row produces: it leaves the batch early, the others go on
    others = free[0].text + free[2].text
    stop = next(text for token in free[1].token_ids if (text := tokenizer.decode([token])) not in others)
    batched = greedy_generate(model, tokenizer, PROMPTS, max_new_tokens=8, stop_strings=(stop,), num_loops=3)
    alone = [greedy_generate(model, tokenizer, [p], 8, stop_strings=(stop,), num_loops=3)[0] for p in PROMPTS]
    assert batched == alone
    assert recompute_generate(model, tokenizer, PROMPTS, 8, stop_strings=(stop,), num_loops=3) == batched
    assert batched[1].finish_reason == "stop" and len(batched[1].token_ids) < 8
    assert "length" in {r.finish_reason for r in batched}  # and at least one row kept decoding


@pytest.mark.parametrize("loops", [{"num_loops": 2}, {"schedule": [0.25, 0.75]}], ids=["2", "schedule"])
def test_cached_equals_recompute(model, tokenizer, loops):
    cached = greedy_generate(model, tokenizer, PROMPTS, max_new_tokens=6, early_stop=False, **loops)
    recomputed = recompute_generate(model, tokenizer, PROMPTS, max_new_tokens=6, early_stop=False, **loops)
    assert [r.token_ids for r in cached] == [r.token_ids for r in recomputed]
    assert all(len(r.token_ids) == 6 for r in cached)


def hf_generate(model, tokenizer, prompts, max_new_tokens, stop_strings=(), **loops) -> list[list[int]]:
    """transformers' ``generate`` the way its users call it: the tokenizer pads the batch
    (on the left, as ``load_tokenizer`` sets it). Each row is cut at its first EOS, which
    is also the padding ``generate`` appends after a row has stopped."""
    batch = tokenizer(prompts, padding=True, return_tensors="pt")
    extra = {"stop_strings": list(stop_strings), "tokenizer": tokenizer} if stop_strings else {}
    out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, **extra, **loops)
    rows = out[:, batch["input_ids"].shape[1] :].tolist()
    return [row[: row.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in row else row for row in rows]


@pytest.mark.parametrize("loops", [{"num_loops": 4}, {"schedule": [0.5, 0.25, 0.25]}], ids=["4", "schedule"])
def test_hf_generate_matches_single_and_left_padded_batches(model, tokenizer, loops):
    assert tokenizer.padding_side == "left"
    ours = greedy_generate(model, tokenizer, PROMPTS, max_new_tokens=6, stop_strings=(), **loops)
    assert hf_generate(model, tokenizer, PROMPTS, 6, **loops) == [r.token_ids for r in ours]
    for prompt, result in zip(PROMPTS, ours, strict=True):
        assert hf_generate(model, tokenizer, [prompt], 6, **loops) == [result.token_ids]


def test_hf_generate_matches_with_stop_strings(model, tokenizer):
    free = greedy_generate(model, tokenizer, PROMPTS, max_new_tokens=8, stop_strings=(), num_loops=3)
    others = free[0].text + free[2].text
    stop = next(text for token in free[1].token_ids[2:] if (text := tokenizer.decode([token])) not in others)
    ours = greedy_generate(model, tokenizer, PROMPTS, max_new_tokens=8, stop_strings=(stop,), num_loops=3)
    assert ours[1].finish_reason == "stop" and len(ours[1].token_ids) < 8  # the stop string really cut row 1
    assert hf_generate(model, tokenizer, PROMPTS, 8, stop_strings=(stop,), num_loops=3) == [r.token_ids for r in ours]


def test_stops_at_stop_string_and_eos(tokenizer):
    prompt = "Question: 1+1?\nAnswer:"
    script = tokenizer.encode(" It is 2.\n\nQuestion: what is 3+3?")
    scripted = ScriptedModel(script, len(tokenizer.encode(prompt)))
    (result,) = greedy_generate(scripted, tokenizer, [prompt], max_new_tokens=50)
    assert result.text == " It is 2.\n\n"
    assert result.finish_reason == "stop"
    assert tokenizer.decode(result.token_ids).endswith("Question:")

    eos_script = [*tokenizer.encode(" 7"), tokenizer.eos_token_id, *tokenizer.encode(" more")]
    scripted = ScriptedModel(eos_script, len(tokenizer.encode(prompt)))
    (result,) = greedy_generate(scripted, tokenizer, [prompt], max_new_tokens=50)
    assert (result.text, result.finish_reason) == (" 7", "eos")
    # early_stop=False ignores both and spends exactly max_new_tokens
    (result,) = greedy_generate(scripted, tokenizer, [prompt], max_new_tokens=5, early_stop=False)
    assert len(result.token_ids) == 5 and isinstance(result, GenerationResult)


def test_cut_at_stop():
    assert cut_at_stop("a Question: b Question:", ["Question:"]) == ("a ", True)
    assert cut_at_stop("abc", ["Question:"]) == ("abc", False)
    assert cut_at_stop("x END y STOP", ["STOP", "END"]) == ("x ", True)


def test_block_size_caps_generation(tokenizer):
    small = tiny_model(seed=3, block_size=40)
    prompt = PROMPTS[0]
    (result,) = greedy_generate(small, tokenizer, [prompt], max_new_tokens=100, stop_strings=())
    assert len(tokenizer.encode(prompt)) + len(result.token_ids) - 1 <= 40


def test_generate_as_its_users_call_it(model, tokenizer):
    """``model.generate(**tok(prompt), num_loops=4)``: on transformers >= 5.24 generate hands
    the cache over as ``cache=``, before as ``past_key_values=``; both must decode greedily."""
    ours = greedy_generate(model, tokenizer, PROMPTS[:1], max_new_tokens=6, stop_strings=(), num_loops=4)
    encoded = tokenizer(PROMPTS[0], return_tensors="pt")
    out = model.generate(**encoded, max_new_tokens=6, do_sample=False, num_loops=4)
    assert out[0, encoded["input_ids"].shape[1] :].tolist() == ours[0].token_ids


def test_text_generation_pipeline_gives_greedy_generate_tokens(model, tokenizer):
    from transformers import pipeline

    generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
    ours = greedy_generate(model, tokenizer, PROMPTS, max_new_tokens=6, stop_strings=(), num_loops=4)
    for prompt, result in zip(PROMPTS, ours, strict=True):
        out = generator(prompt, max_new_tokens=6, do_sample=False, return_full_text=False, num_loops=4)
        assert out[0]["generated_text"] == tokenizer.decode(result.token_ids)
