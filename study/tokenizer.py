"""Tokenizers, loaded offline from files: a checkpoint's own, or the vendored GPT-2 BPE."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer, GPT2Tokenizer, PreTrainedTokenizerBase

GPT2_DIR = Path(__file__).parent / "assets" / "gpt2"
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer_config.json")


def has_tokenizer(folder: Path) -> bool:
    return any((folder / name).is_file() for name in TOKENIZER_FILES)


def load_tokenizer(source: str | Path | None = None, revision: str | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer in ``source`` (a folder or hub id), or GPT-2's vendored BPE when
    ``source`` is None or "gpt2". Padding reuses EOS, as in GPT-2, and goes on the left,
    so ``model.generate(**tokenizer(prompts, padding=True, return_tensors="pt"))``
    continues every row from its own last token. Nothing here relies on it for scoring
    or training: the NLL scorer builds its own batches and trl's collator pads right
    explicitly."""
    if source is None or str(source) == "gpt2":
        tokenizer = GPT2Tokenizer.from_pretrained(GPT2_DIR)  # transformers 5: GPT2TokenizerFast is this class
    else:
        tokenizer = AutoTokenizer.from_pretrained(str(source), revision=revision)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer
