"""Issue #12, end-to-end half: a finished stage is reused only while everything it read
is unchanged, by content. One smoke run (on copies of the base and of GSM8K that the
tests then edit in place) is shared by the tests of this module, which run in order:
each edits one input and checks that exactly what read it is redone. Slow."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from study.tasks.gsm8k import BUNDLED_DIR
from tests.support.study_runner import REPO_ROOT, run_study

pytestmark = pytest.mark.slow
MINI_BASE = REPO_ROOT / "study" / "assets" / "mini-base"


class Run:
    def __init__(self, root: Path) -> None:
        self.base = root / "base"
        self.data = root / "gsm8k"
        self.dir = root / "run"
        shutil.copytree(MINI_BASE, self.base)
        shutil.copytree(BUNDLED_DIR, self.data)

    def args(self, *extra: str) -> list[str]:
        return [
            "--version", "smoke", "--seed", "2026", "--output-dir", str(self.dir), "--model", str(self.base),
            "--set", "model.label=tiny embedded LoopFormer (not the released model)",
            "--set", f"data.directory={self.data}", *extra,
        ]  # fmt: skip

    def study(self, *extra: str):
        return run_study(*self.args(*extra))

    def manifest(self) -> dict:
        return json.loads((self.dir / "manifest.json").read_text())


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Run:
    shared = Run(tmp_path_factory.mktemp("fingerprints"))
    result = shared.study()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return shared


def _perturb_in_place(path: Path, scale: float) -> None:
    """Same file name, same tensor names and shapes (so the same size): new values."""
    tensors = load_file(path)
    save_file({k: v * scale if v.is_floating_point() else v for k, v in tensors.items()}, path, {"format": "pt"})


def test_config_change_in_one_section_redoes_only_its_stages(run: Run) -> None:
    def cells(stage: str) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in (run.dir / "results" / "cells" / stage).glob("*.*")}

    nll_cells, latency_cells = cells("nll"), cells("latency")
    result = run.study("--set", "nll.bootstrap_resamples=100")
    assert result.returncode == 0, result.stderr[-2000:]
    for stage in ("check", "sft", "exact_match"):
        assert f"[{stage}] done already" in result.stdout, stage
    assert "[nll] running (changed: config)" in result.stdout
    assert "nll base-test-M2:" not in result.stdout  # the per-example cells were reused, only the bootstrap redone
    assert cells("nll") == nll_cells
    # latency's gold-NLL CIs use the nll bootstrap: it aggregates again from its timings, never re-timed
    assert "[latency] running (changed: config)" in result.stdout
    assert cells("latency") == latency_cells


def test_overwritten_sft_weights_are_written_again_by_sft(run: Run) -> None:
    """sft recorded the bytes of its models (issue 22): weights changed in place are the
    run's own output damaged, so sft writes them again and no cell that read them is redone."""
    weights = run.dir / "models" / "train4" / "model.safetensors"
    original = weights.read_bytes()
    _perturb_in_place(weights, 1.01)
    result = run.study("--stages", "nll")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "models/train4/model.safetensors changed since sft wrote it: rerunning sft" in result.stdout
    assert weights.read_bytes() == original
    assert "nll train4-test-M2:" not in result.stdout  # the same weights: no cell of theirs is redone


def test_overwritten_sft_weights_redo_only_that_models_cells(run: Run) -> None:
    """A run whose sft marker records no outputs (finished before issue 22): the changed
    weights are an input of nll like any other."""
    marker = run.dir / "stages" / "sft.json"
    marker.write_text(json.dumps({k: v for k, v in json.loads(marker.read_text()).items() if k != "outputs"}))
    cells = run.dir / "results" / "cells" / "nll"
    base_cells = {p.name: p.read_bytes() for p in cells.glob("base-*.csv")}
    _perturb_in_place(run.dir / "models" / "train4" / "model.safetensors", 1.01)
    result = run.study("--stages", "nll")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "[check] done already" in result.stdout  # the gate ran first, found done for these inputs
    assert "nll train4-test-M2:" in result.stdout and "nll base-test-M2:" not in result.stdout
    assert "nll train8-test-M2:" not in result.stdout
    assert {p.name: p.read_bytes() for p in cells.glob("base-*.csv")} == base_cells
    recorded = run.manifest()["stages"]["nll"]["inputs"]["train4"]["model"]["model.safetensors"]
    assert recorded == json.loads((cells / "train4.inputs.json").read_text())["model"]["model.safetensors"]


def test_changed_gold_answers_redo_the_stages_that_read_them(run: Run) -> None:
    path = run.data / "test.jsonl"
    lines = path.read_text().splitlines()
    edited = []
    for line in lines:  # every final answer + 1000: same path, same line count
        record = json.loads(line)
        head, final = record["answer"].rsplit("####", 1)
        record["answer"] = f"{head}#### {int(final.strip().replace(',', '')) + 1000}"
        edited.append(json.dumps(record))
    path.write_text("\n".join(edited) + "\n")
    before_sha = run.manifest()["stages"]["exact_match"]["inputs"]["data:test"]

    result = run.study("--stages", "exact_match")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "[check] running" in result.stdout and "[exact_match] running" in result.stdout
    generations = [json.loads(line) for line in (run.dir / "results" / "generations.jsonl").read_text().splitlines()]
    by_id = {i: json.loads(line) for i, line in enumerate(edited)}
    for record in generations:
        assert record["gold"] == by_id[record["example_id"]]["answer"].rsplit("#### ", 1)[1]
    stages = run.manifest()["stages"]
    assert stages["exact_match"]["inputs"]["data:test"] != before_sha
    assert stages["nll"]["inputs"]["data:test"] == before_sha  # nll did not rerun: its record still says so


def test_overwritten_base_weights_invalidate_sft_and_everything_after(run: Run) -> None:
    _perturb_in_place(run.base / "model.safetensors", 1.001)  # small: the base still passes the gate
    result = run.study("--stages", "nll")
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert "the sft stage has not run for this config and these inputs" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
