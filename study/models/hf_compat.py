"""One name for the KV cache on both sides of transformers' rename.

transformers 5.24 renamed the cache argument of models, decoder layers and the mask
builders, and the field of model outputs, from ``past_key_values`` to ``cache``; the old
name warns until its removal in 5.40. pyproject allows releases on both sides of the
rename, so every call the project makes into transformers names the cache through
``cache_kwargs`` and reads it back through ``output_cache``: the current name where it
exists, the old one only where it is the only one.
"""

from __future__ import annotations

import inspect
from typing import Any, TypeVar

from transformers.cache_utils import Cache
from transformers.masking_utils import create_causal_mask

# The rename reached create_causal_mask, the decoder layers, the models and the output
# classes in the same release, so one probe of the mask builder decides for all of them.
CACHE_ARG: str = "cache" if "cache" in inspect.signature(create_causal_mask).parameters else "past_key_values"


CacheT = TypeVar("CacheT", bound=Cache)


def cache_kwargs(cache: Cache | None) -> dict[str, Any]:
    """``{name: cache}`` under the installed transformers' name for the cache argument
    (typed ``Any``: it is spread into constructors whose other fields have other types)."""
    return {CACHE_ARG: cache}


def output_cache(output: Any) -> Cache | None:
    """The cache a transformers model output carries, under whichever name it has."""
    return getattr(output, CACHE_ARG, None)


def take_cache(cache: CacheT | None, past_key_values: CacheT | None, where: str) -> CacheT | None:
    """The cache a forward was given under either name (``generate`` passes ``cache=``
    from 5.24 on and ``past_key_values=`` before); both at once is a caller's error."""
    if cache is not None and past_key_values is not None:
        raise TypeError(f"{where}() got both cache= and past_key_values=: pass the cache once, as cache=")
    return cache if cache is not None else past_key_values
