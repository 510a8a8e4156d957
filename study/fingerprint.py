"""Content fingerprints of what a stage reads: model folders, tokenizers, data.

A stage is reused only while its config sections *and* these fingerprints are
unchanged, so overwriting a checkpoint or a data file in place (same path, same size)
reruns what read it. File contents are hashed (sha256) at most once per process:
the digest is cached under (path, size, mtime_ns), so the GBs of a released
checkpoint are read once per run however many stages ask.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

# the files a LoopFormer folder is loaded from (weights, config, tokenizer); a README
# or a licence beside them changes no number
MODEL_FILE_PATTERNS = ("config.json", "generation_config.json", "*.safetensors", "*.safetensors.index.json")
TOKENIZER_FILE_NAMES = (
    "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
    "added_tokens.json", "chat_template.jinja",
)  # fmt: skip
MISSING = "missing"
_CHUNK = 1 << 22

_digests: dict[tuple[str, int, int], str] = {}


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes, computed once per (path, size, mtime_ns) in this process."""
    path = Path(path).resolve()
    status = path.stat()
    key = (str(path), status.st_size, status.st_mtime_ns)
    cached = _digests.get(key)
    if cached is None:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            while block := handle.read(_CHUNK):
                digest.update(block)
        cached = _digests[key] = digest.hexdigest()
    return cached


def _files(folder: Path, patterns: tuple[str, ...]) -> list[Path]:
    found = {p for pattern in patterns for p in folder.glob(pattern) if p.is_file()}
    return sorted(found, key=lambda p: p.name)


def folder_fingerprint(folder: Path, patterns: tuple[str, ...]) -> dict[str, str] | str:
    """{file name: sha256} of the matching files of a folder, or ``"missing"``."""
    folder = Path(folder)
    if not folder.is_dir():
        return MISSING
    return {p.name: file_digest(p) for p in _files(folder, patterns)} or MISSING


def model_fingerprint(source: str, revision: str | None = None, resolved_commit: str | None = None) -> Any:
    """A local folder: its weights, config and tokenizer files by content. A hub id: the
    repo and the commit its revision resolved to (hub commits name their contents)."""
    if Path(source).is_dir():
        return folder_fingerprint(Path(source), MODEL_FILE_PATTERNS + TOKENIZER_FILE_NAMES)
    return {"hub": source, "revision": revision, "commit": resolved_commit}


def tokenizer_fingerprint(source: str | Path, revision: str | None = None) -> Any:
    if Path(source).is_dir():
        return folder_fingerprint(Path(source), TOKENIZER_FILE_NAMES)
    return {"hub": str(source), "revision": revision}


def digest_of(value: Any) -> str:
    """A short stable hash of a JSON-able value (the key a sidecar file records)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def clear_cache() -> None:
    """Forget cached digests (tests that rewrite a file within one mtime tick)."""
    _digests.clear()


__all__ = [
    "MISSING",
    "clear_cache",
    "digest_of",
    "file_digest",
    "folder_fingerprint",
    "model_fingerprint",
    "tokenizer_fingerprint",
]
