"""Shared by the sweep tests: a tiny random LoopFormer and a RunContext around it.

The model uses GPT-2's vocabulary size so the vendored GPT-2 tokenizer drives it,
and its adaLN weights are randomised (``_init_weights`` zeroes them, which would
make every loop count the identity and the tests blind to the schedule).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from study.config import (
    DataConfig,
    ExactMatchConfig,
    LatencyConfig,
    ModelConfig,
    NLLConfig,
    SFTConfig,
    StudyConfig,
)
from study.models.loopformer import LoopFormerConfig, LoopFormerForCausalLM
from study.pipeline import RunContext
from study.tokenizer import load_tokenizer


class ScriptedModel(torch.nn.Module):
    """Emits a fixed token script whatever the input: the next token is the script
    entry at (tokens seen so far - prompt length), read from the attention mask."""

    def __init__(self, script: list[int], prompt_length: int, vocab: int = 50304) -> None:
        super().__init__()
        self.script, self.prompt_length, self.vocab = script, prompt_length, vocab
        self.weight = torch.nn.Parameter(torch.zeros(1))
        config = {"model_type": "loopformer", "block_size": 1024, "n_layer": 1, "train_loops": 1}
        self.config = type("Config", (), config)()  # a LoopFormer's, as bind tells backbones apart
        # the decoder asks the backbone for the loop conditioning once per generation
        self.gpt = type("Backbone", (), {"loop_modulations": staticmethod(lambda schedule, num_loops: [])})()

    def forward(self, input_ids, attention_mask=None, logits_to_keep=0, **kwargs):
        position = attention_mask.shape[1] - self.prompt_length
        logits = torch.zeros(input_ids.shape[0], 1, self.vocab)
        logits[:, 0, self.script[min(position, len(self.script) - 1)]] = 1.0
        return type("Out", (), {"logits": logits})()


@contextmanager
def one_thread() -> Iterator[None]:
    """Tiny models on a shared 2-core machine run far faster on one thread (no OpenMP
    barriers fighting other processes); restores the previous count afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def tiny_model(seed: int = 0, block_size: int = 512, train_loops: int = 8) -> LoopFormerForCausalLM:
    """Random weights scaled so the blocks, not the (tied) token embedding, decide the
    next token: at the default init greedy decoding just repeats the last prompt token,
    which would make every generation test pass vacuously."""
    torch.manual_seed(seed)
    config = LoopFormerConfig(
        block_size=block_size,
        vocab_size=50304,
        n_layer=2,
        n_head=2,
        n_embd=32,
        intermediate_dim=64,
        train_loops=train_loops,
    )
    model = LoopFormerForCausalLM(config)
    with torch.no_grad():
        for block in model.gpt.transformer.h.blocks:
            block.adaLN_modulation[1].weight.normal_(0.0, 0.5)
            block.adaLN_modulation[1].bias.normal_(0.0, 0.5)
            for linear in (block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj):
                linear.weight.normal_(0.0, 0.5)
        # a larger embedding spreads the logits, so greedy argmax has no near-ties
        model.gpt.transformer.wte.weight.mul_(10.0)
    return model.eval()


def gpt2_tokenizer():
    return load_tokenizer(None)


def make_context(
    tmp_path: Path,
    nll_loops: tuple[int, ...] = (1, 2),
    em_loops: tuple[int, ...] = (1, 2),
    latency_loops: tuple[int, ...] = (1, 2),
    sft_loops: tuple[int, ...] = (4,),
    replicates: tuple[int, ...] | None = None,
) -> RunContext:
    """A run directory with the tiny base in ``tmp_path/base`` and one perturbed
    copy per SFT model (``models/train<L>``, or ``train<L>-s<seed>`` with several
    ``replicates``), as the SFT stage would leave them."""
    base_dir = tmp_path / "base"
    tiny_model(seed=0).save_pretrained(base_dir)
    config = StudyConfig(
        name="test",
        seed=7,
        device="cpu",
        model=ModelConfig(source=str(base_dir), tokenizer="gpt2"),
        data=DataConfig(
            sft_examples=8, nll_test_examples=5, nll_heldout_examples=3, nll_seen_examples=3, em_examples=3
        ),
        sft=SFTConfig(train_loops=list(sft_loops)),
        **({} if replicates is None else {"replicates": list(replicates)}),
        nll=NLLConfig(inference_loops=list(nll_loops), batch_size=2, bootstrap_resamples=200),
        exact_match=ExactMatchConfig(inference_loops=list(em_loops), max_new_tokens=4, batch_size=2),
        latency=LatencyConfig(inference_loops=list(latency_loops), new_tokens=3, warmup=1, samples=2),
    )
    ctx = RunContext(config=config, run_dir=tmp_path / "run", device=torch.device("cpu"))
    for i, spec in enumerate(ctx.sft_specs()):
        tiny_model(seed=i + 1, train_loops=spec.train_loops).save_pretrained(ctx.model_dir(spec.name))
    return ctx
