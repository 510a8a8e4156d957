"""A tiny random Llama (GPT-2 vocabulary, so the vendored GPT-2 tokenizer drives it) and
a RunContext of a looped-decoder study around it, for the fast tests of the smol path."""

from __future__ import annotations

from pathlib import Path

import torch

from study.config import (
    DataConfig,
    ExactMatchConfig,
    LatencyConfig,
    LoopingConfig,
    ModelConfig,
    NLLConfig,
    SFTConfig,
    StudyConfig,
    sft_model_name,
)
from study.pipeline import RunContext
from study.tokenizer import load_tokenizer


def tiny_llama(seed: int = 0):
    """6 layers of width 32 with random weights large enough that looping a window
    changes the logits (at the default init every K would give nearly the same NLL)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=50257, hidden_size=32, intermediate_size=64, num_hidden_layers=6, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, bos_token_id=50256, eos_token_id=50256,
        tie_word_embeddings=True,
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for layer in model.model.layers:
            for linear in (layer.self_attn.o_proj, layer.mlp.down_proj):
                linear.weight.normal_(0.0, 0.3)
    return model.eval()


def looped_context(
    tmp_path: Path,
    nll_loops: tuple[int, ...] = (1, 2),
    sft_loops: tuple[int, ...] = (2,),
    strategy: str = "euler",
) -> RunContext:
    """A looped-decoder run directory: the tiny base in ``tmp_path/base`` (tokenizer beside
    it) and, as the SFT stage would leave them, perturbed copies in ``models/train<K>``."""
    base_dir = tmp_path / "base"
    tiny_llama(0).save_pretrained(base_dir)
    tokenizer = load_tokenizer(None)
    tokenizer.save_pretrained(base_dir)
    config = StudyConfig(
        name="looped-test",
        seed=7,
        device="cpu",
        model=ModelConfig(source=str(base_dir), backbone="looped_decoder", tokenizer="auto"),
        looping=LoopingConfig(window=[2, 3], strategy=strategy),
        data=DataConfig(
            sft_examples=4, nll_test_examples=3, nll_heldout_examples=2, nll_seen_examples=2, em_examples=2
        ),
        sft=SFTConfig(train_loops=list(sft_loops), epochs=1, grad_accum=2, max_length=96, save_steps=100),
        nll=NLLConfig(inference_loops=list(nll_loops), batch_size=2, bootstrap_resamples=100),
        exact_match=ExactMatchConfig(inference_loops=list(nll_loops), max_new_tokens=3, batch_size=2),
        latency=LatencyConfig(inference_loops=list(nll_loops), new_tokens=2, warmup=0, samples=1),
    )
    ctx = RunContext(config=config, run_dir=tmp_path / "run", device=torch.device("cpu"))
    for i, loops in enumerate(sft_loops):
        folder = ctx.model_dir(sft_model_name(loops))
        tiny_llama(i + 1).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return ctx
