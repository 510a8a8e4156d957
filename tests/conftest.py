"""Shared test fixtures. Tests use the project's vendored copies; ``shared_dir`` is
the one way a test may look at ``../shared`` (and it skips when that is absent)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.helpers_sweep import one_thread

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURE_DIR = Path(__file__).parent / "fixtures" / "loopformer-conformance"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def shared_dir() -> Path:
    """``../shared`` beside the repository, or skip the calling test with the reason."""
    path = REPO_ROOT.parent / "shared"
    if not path.is_dir():
        pytest.skip(f"{path} is absent: it only exists in the project's own workspace")
    return path


@pytest.fixture
def conformance_dir() -> Path:
    return FIXTURE_DIR


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    """Every test module runs torch on one thread: the tests' models are tiny, and on a
    shared 2-core machine a thread pool only adds barriers (the previous count is restored)."""
    with one_thread():
        yield
