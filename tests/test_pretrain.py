"""The tiny embedded base: its elastic-depth recipe, its data, its determinism, and the
shipped checkpoint in study/assets/mini-base."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, PreTrainedTokenizerFast

import study.models  # noqa: F401  (registers the Auto classes)
from study.config import load_config
from study.models.loopformer import LoopFormerForCausalLM, resolve_schedule
from study.pipeline import EMBEDDED_DIR
from study.pretrain import (
    IGNORE,
    SFT_EXAMPLES,
    SFT_SEED,
    PretrainConfig,
    build_model,
    elastic_loss,
    nll_per_token,
    pad_batch,
    pretrain,
    pretraining_examples,
    run_route,
    sample_short_route,
    save,
)
from study.tasks.gsm8k import Dataset, load_gsm8k, sft_subset
from study.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return load_gsm8k("bundled")


def tiny_config(**overrides) -> PretrainConfig:
    settings = dict(
        vocab_size=300,
        n_embd=32,
        n_head=2,
        intermediate_dim=64,
        steps=3,
        batch_size=4,
        warmup_steps=1,
        max_train_examples=48,
        eval_examples=4,
        eval_loops=(8,),
        threads=1,
    )
    settings.update(overrides)
    return PretrainConfig(**settings)


def test_short_route_is_a_composition_of_eighths() -> None:
    rng = random.Random(0)
    lengths = set()
    for _ in range(3000):
        route = sample_short_route(rng, 8)
        eighths = [step * 8 for step in route]
        assert 1 <= len(route) <= 7
        assert all(e == int(e) and e >= 1 for e in eighths), route
        assert sum(eighths) == 8 and math.fsum(route) == 1.0
        assert resolve_schedule(route, None, 8) == route  # the model accepts it as is
        lengths.add(len(route))
    assert lengths == set(range(1, 8))  # every shorter length occurs, never the full 8


def test_elastic_loss_is_ce_plus_weighted_short_ce_and_stop_grad_mse() -> None:
    torch.manual_seed(0)
    batch, length, vocab, width = 2, 6, 11, 4
    labels = torch.randint(0, vocab, (batch, length))
    labels[1, 4:] = IGNORE  # a padded tail
    full_logits, short_logits = (torch.randn(batch, length, vocab, requires_grad=True) for _ in range(2))
    full_hidden, short_hidden = (torch.randn(batch, length, width, requires_grad=True) for _ in range(2))

    parts = elastic_loss(full_logits, full_hidden, short_logits, short_hidden, labels)

    def ce(logits: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits[:, :-1].reshape(-1, vocab), labels[:, 1:].reshape(-1), ignore_index=IGNORE)

    real = labels != IGNORE
    mse = ((short_hidden - full_hidden) ** 2).mean(-1)[real].mean()
    torch.testing.assert_close(parts.ce_full, ce(full_logits))
    torch.testing.assert_close(parts.ce_short, ce(short_logits))
    torch.testing.assert_close(parts.mse, mse)
    torch.testing.assert_close(parts.total, ce(full_logits) + 0.1 * ce(short_logits) + 0.1 * mse)

    parts.total.backward()
    assert full_hidden.grad is None  # stop-grad: the MSE never moves the full route
    expected = torch.autograd.grad(
        0.1 * ((short_hidden - full_hidden.detach()) ** 2).mean(-1)[real].mean(), short_hidden
    )
    torch.testing.assert_close(short_hidden.grad, expected[0])
    assert short_hidden.grad[1, 4:].abs().sum() == 0  # padded positions carry no signal


def test_full_route_ce_is_the_models_own_loss_at_eight_loops() -> None:
    torch.manual_seed(0)
    model = build_model(tiny_config()).eval()
    input_ids, labels = pad_batch([[5, 9, 2, 7, 0], [3, 4, 0]], pad_id=0)
    logits, hidden = run_route(model, input_ids, [1 / 8] * 8)
    parts = elastic_loss(logits, hidden, *run_route(model, input_ids, [0.5, 0.5]), labels)
    with torch.no_grad():
        reference = model(input_ids, labels=labels, num_loops=8)
    torch.testing.assert_close(logits, reference.logits)
    torch.testing.assert_close(parts.ce_full, reference.loss)
    assert model.lm_head.weight is model.gpt.transformer.wte.weight  # tied, as saved


def test_three_steps_twice_give_bit_identical_weights(dataset: Dataset, tmp_path: Path) -> None:
    config = tiny_config()
    before = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    first = pretrain(config, dataset, verbose=False)
    second = pretrain(config, dataset, verbose=False)
    assert first.tokenizer.backend_tokenizer.to_str() == second.tokenizer.backend_tokenizer.to_str()
    a, b = first.model.state_dict(), second.model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "weights differ between identical runs"
    assert first.log == second.log and first.test_nll == second.test_nll
    torch.manual_seed(config.seed)
    initial = build_model(config).state_dict()
    assert not all(torch.equal(a[k], initial[k]) for k in a)  # the three steps did train
    assert (torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()) == before  # restored

    save(first, tmp_path / "ckpt", "python -m study.pretrain --out ckpt --steps 3")
    loaded = LoopFormerForCausalLM.from_pretrained(tmp_path / "ckpt").state_dict()
    assert all(torch.equal(loaded[k], a[k]) for k in a)
    assert AutoTokenizer.from_pretrained(tmp_path / "ckpt").get_vocab() == first.tokenizer.get_vocab()
    assert "not the released model" in (tmp_path / "ckpt" / "README.md").read_text()


def test_pretraining_data_excludes_the_sft_subset_and_the_test_split(dataset: Dataset) -> None:
    study_config = load_config("mini")  # the subset excluded is the one the default study fine-tunes on
    assert (study_config.seed, study_config.data.sft_examples) == (SFT_SEED, SFT_EXAMPLES)
    assert study_config.replicates == [SFT_SEED]  # one replicate: its SFT subset is the excluded one
    sft = sft_subset(dataset, SFT_SEED, SFT_EXAMPLES)
    examples = pretraining_examples(dataset)
    assert all(e.split == "train" for e in examples)
    assert {e.id for e in examples}.isdisjoint(sft)
    assert len(examples) == len(dataset.train) - len(sft)
    test_questions = {e.question for e in dataset.test}
    assert not any(e.question in test_questions for e in examples)


def test_shipped_checkpoint_loads_and_beats_a_uniform_guess(dataset: Dataset) -> None:
    assert (EMBEDDED_DIR / "model.safetensors").stat().st_size < 5_000_000
    model = LoopFormerForCausalLM.from_pretrained(EMBEDDED_DIR).eval()
    tokenizer = AutoTokenizer.from_pretrained(EMBEDDED_DIR)
    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    assert tokenizer.eos_token_id == tokenizer.bos_token_id == tokenizer.pad_token_id == 0
    assert len(tokenizer) == model.config.vocab_size and model.config.train_loops == 8
    text = "Question: Tom has 3 apples and buys 12 more. How many?\nAnswer: 3 + 12 = <<3+12=15>>15\n#### 15"
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text
    assert load_tokenizer(EMBEDDED_DIR).encode(text) == tokenizer.encode(text)  # the pipeline's loader agrees

    nll = nll_per_token(model, tokenizer, dataset.test[:32], num_loops=8)
    assert nll < 0.8 * math.log(model.config.vocab_size), f"NLL {nll:.3f} vs ln(vocab) {math.log(len(tokenizer)):.3f}"
