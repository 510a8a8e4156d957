from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.cli import make_existing_run


@pytest.fixture
def existing_run(tmp_path: Path) -> Path:
    return make_existing_run(tmp_path)
