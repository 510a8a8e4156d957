"""study.report.compare: Table 1 and the NLL overlay across runs."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from study import report
from study.errors import StudyError
from tests.support.cli import fails
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


def _set_manifest_model(run_dir: Path, **fields) -> None:
    path = run_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["model"].update(fields)
    path.write_text(json.dumps(manifest))


def test_compare_refuses_runs_of_different_tokenizers_or_backbones(tmp_path: Path, capsys) -> None:
    """nats/token of two vocabularies are not one scale: refused in one line, exit 2,
    nothing written; runs with the same recorded vocabulary compare whatever their source."""
    mini = make_fake_run(tmp_path / "mini-seed2026")
    released = make_fake_run(tmp_path / "v17-seed2026", name="v17", embedded=False)
    out = tmp_path / "compare"
    with pytest.raises(StudyError, match=r"differ in tokenizers: their nats per token are not comparable"):
        report.compare([mini, released], out)
    assert not out.exists()
    code = report.main(["compare", str(mini), str(released), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: compare: runs mini-seed2026") and "\n" not in err and len(err) < 300
    fails(capsys, ["compare", str(mini), str(released), "--out", str(out)], "differ in tokenizers")  # run_study.py
    assert not out.exists()

    # the manifest's tokenizer record decides when both runs have it: the same vocabulary compares
    record = {"class": "GPT2Tokenizer", "vocab_size": 50257, "sha256": "ab" * 32}
    for run in (mini, released):
        _set_manifest_model(run, tokenizer=record)
    assert report.compare([mini, released], out).is_file()
    _set_manifest_model(released, tokenizer={**record, "vocab_size": 49152, "sha256": "cd" * 32})
    with pytest.raises(StudyError, match=r"a 50257-token vocabulary .* a 49152-token vocabulary"):
        report.compare([mini, released], tmp_path / "other")

    smol = make_fake_run(tmp_path / "smol-seed2026", name="smol")
    _set_manifest_model(smol, backbone="looped_decoder")
    manifest = json.loads((smol / "manifest.json").read_text())
    del manifest["config"]  # the backbone as the manifest records it (a LoopFormer config would say otherwise)
    (smol / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StudyError, match=r"\(looped_decoder, .*differ in backbones"):
        report.compare([make_fake_run(tmp_path / "mini2"), smol], tmp_path / "third")
