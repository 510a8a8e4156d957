"""study.report.compare: Table 1 and the NLL overlay across runs."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from study import report
from tests.support.fake_run import make_fake_run

from .helpers import PNG_MAGIC


def test_compare_writes_table_and_overlay(tmp_path: Path) -> None:
    first = make_fake_run(tmp_path / "v16-seed2026", name="v16")
    second = make_fake_run(tmp_path / "v17-seed7", name="v17", seed=7, nll_shift=0.05)
    out = tmp_path / "compare"
    path = report.compare([first, second], out)
    assert path == out / "compare.md"
    table = pd.read_csv(out / "compare.csv")
    assert len(table) == 6 and set(table["run"]) == {"v16-seed2026", "v17-seed7"}
    assert {"best_test_loops", "best_test_nll", "p_best_is_train_loops", "train_test_match"} <= set(table.columns)
    for model in ("base", "train8", "train4"):
        rows = table[table["model"] == model].set_index("run")
        shift = rows.loc["v17-seed7", "best_test_nll"] - rows.loc["v16-seed2026", "best_test_nll"]
        assert shift == pytest.approx(0.05, abs=0.02)
    assert (out / "compare_nll_vs_loops.png").read_bytes().startswith(PNG_MAGIC)
    assert (out / "compare_nll_vs_loops.pdf").is_file()
    text = path.read_text()
    assert "v16-seed2026" in text and "v17-seed7" in text and "](compare_nll_vs_loops.png)" in text
