"""Fixtures of the lm-eval tests: a tiny random Llama folder that HFLM and ``loopdepth``
both load (the vendored GPT-2 tokenizer beside it), and lm-eval's offline settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# nothing may come from the hub: tasks read the offline copies, models local folders
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"


def make_tiny_llama(folder: Path, seed: int = 0) -> Path:
    """4 layers of width 32, weights scaled up so that looping layers 1-2 moves the logits."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from study.tokenizer import load_tokenizer

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=50257, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, bos_token_id=50256, eos_token_id=50256,
        tie_word_embeddings=True,
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for layer in model.model.layers:
            for linear in (layer.self_attn.o_proj, layer.mlp.down_proj):
                linear.weight.normal_(0.0, 0.3)
    model.save_pretrained(folder)
    load_tokenizer(None).save_pretrained(folder)  # GPT-2's, vendored in study/assets
    return folder


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))
