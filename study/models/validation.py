"""Validate a local LoopFormer checkpoint folder before anything loads it.

``from_pretrained`` reports a broken ``config.json`` or a corrupt safetensors file as
a traceback from deep inside transformers or the safetensors runtime, and some
values (``train_loops: 2.5``) it silently coerces. These checks read only the config
and the safetensors *headers* (not the GBs of tensor data) and raise
``CheckpointError`` naming the file and the field.
"""

from __future__ import annotations

import codecs
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from study.errors import CheckpointError

HEADER_LIMIT = 100 * 1024 * 1024  # the safetensors format's own cap on the JSON header
DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip
POSITIVE_INT_FIELDS = ("block_size", "vocab_size", "n_layer", "n_head", "n_embd", "intermediate_dim", "train_loops")
TOKEN_ID_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id")


def _error(message: str) -> Exception:
    return CheckpointError(message)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``, or a one-line error naming the file (and line)."""
    raw = path.read_bytes()
    if raw.startswith(codecs.BOM_UTF8):
        raise _error(f"{path}: starts with a byte-order mark (save it as UTF-8 without BOM)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise _error(f"{path}:{line}: not UTF-8 text") from None
    if not text.strip():
        raise _error(f"{path}: empty (expected a JSON object)")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise _error(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from None
    if not isinstance(data, dict):
        raise _error(f"{path}: expected a JSON object, found a {type(data).__name__}")
    return data


def validate_model_config(path: Path, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """The config dict of a LoopFormer ``config.json``, every field the model reads
    checked for type and range (``defaults``, the config class's own, fill absent fields,
    as the model does; ``study.models.loopformer.read_checkpoint_config`` passes them)."""
    data = read_json_object(path)
    values = dict(defaults) | data
    for name in POSITIVE_INT_FIELDS:
        value = values[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise _error(f"{path}: {name} must be a positive integer, got {_short(value)}")
    if values["n_embd"] % values["n_head"]:
        raise _error(f"{path}: n_embd ({values['n_embd']}) is not divisible by n_head ({values['n_head']})")
    dropout = values["dropout"]
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0 <= dropout < 1:
        raise _error(f"{path}: dropout must be a number in [0, 1), got {_short(dropout)}")
    if not isinstance(values["bias"], bool):
        raise _error(f"{path}: bias must be true or false, got {_short(values['bias'])}")
    spread = values["initializer_range"]
    if isinstance(spread, bool) or not isinstance(spread, int | float) or not (math.isfinite(spread) and spread > 0):
        raise _error(f"{path}: initializer_range must be a positive number, got {_short(spread)}")
    for name in TOKEN_ID_FIELDS:
        value = values.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < values["vocab_size"]:
            raise _error(
                f"{path}: {name} must be a token id in [0, vocab_size {values['vocab_size']}), got {_short(value)}"
            )
    return data


def validate_safetensors(path: Path) -> None:
    """Check a safetensors file's header against its size: 8-byte length, a JSON object
    of tensors whose dtype, shape and byte ranges exactly tile the data that follows."""
    size = path.stat().st_size
    if size < 8:
        raise _error(f"{path}: {size} bytes, too short for a safetensors file (empty or truncated)")
    with path.open("rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        if length > min(size - 8, HEADER_LIMIT):
            raise _error(
                f"{path}: header claims {length} bytes but the file has {size}: truncated or not a safetensors file"
            )
        raw = handle.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _error(f"{path}: header is not JSON: not a safetensors file, or corrupt") from None
    if not isinstance(header, dict):
        raise _error(f"{path}: header is not a JSON object: not a safetensors file, or corrupt")
    data_bytes = size - 8 - length
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (start, stop) = entry["dtype"], entry["shape"], entry["data_offsets"]
            ok = (
                dtype in DTYPE_BYTES
                and all(isinstance(n, int) and n >= 0 for n in shape)
                and isinstance(start, int)
                and isinstance(stop, int)
                and 0 <= start <= stop
                and stop - start == math.prod(shape) * DTYPE_BYTES[dtype]
            )
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise _error(f"{path}: tensor {_short(name)} has an impossible header entry: corrupt file")
        end = max(end, stop)
    if end != data_bytes:
        state = "truncated" if end > data_bytes else "has trailing bytes"
        raise _error(f"{path}: the header describes {end} bytes of tensors, the file holds {data_bytes}: {state}")


def validate_weights(folder: Path) -> None:
    """Every safetensors file of a folder (a sharded index's shards included)."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json_object(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise _error(f"{index}: no weight_map object")
        for shard in sorted(set(map(str, weight_map.values()))):
            if not (folder / shard).is_file():
                raise _error(f"{index}: names shard {shard}, which is missing")
    for path in sorted(folder.glob("*.safetensors")):
        validate_safetensors(path)
