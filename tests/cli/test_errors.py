"""Bad input: one line naming the culprit, exit code 2, no traceback, nothing lost."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import run_study
from study.models.loopformer import LoopFormerConfig, LoopFormerForCausalLM
from study.tasks.gsm8k import BUNDLED_DIR
from study.tokenizer import load_tokenizer
from tests.conftest import FIXTURE_DIR
from tests.support.cli import fails, files_of

SMOKE = ["--version", "smoke", "--seed", "2026"]


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("nll.inference_loops=[]", "nll.inference_loops"),
        ("nll.inference_loops=[0]", "nll.inference_loops.0"),
        ("latency.inference_loops=[-4]", "latency.inference_loops.0"),
        ("sft.train_loops=[2.5]", "sft.train_loops.0"),
        ("exact_match.inference_loops=[0, 8]", "exact_match.inference_loops.0"),
        ("nll.typo=3", "nll.typo: unknown key"),
        ("sft.epochs=two", "sft.epochs"),
        ("sft.lora.rank.x=1", "--set sft.lora.rank.x=1: sft.lora.rank is not a config section"),
        ("sft.lerning_rate=1e-4", "sft.lerning_rate: unknown key (did you mean sft.learning_rate?)"),
        ("nll.inference_loops=8", "write a list, e.g. --set nll.inference_loops=[2,4,6,8,10,12,16]"),
        ("data.nll_test_examples=5000", "data.nll_test_examples: asked for 5000"),
    ],
)
def test_bad_config_values(capsys, existing_run: Path, override: str, named: str) -> None:
    before = files_of(existing_run)
    fails(capsys, [*SMOKE, "--output-dir", str(existing_run), "--set", override], named)
    assert files_of(existing_run) == before


def test_unknown_version(capsys, tmp_path: Path) -> None:
    fails(capsys, ["--version", "v99", "--output-dir", str(tmp_path / "x")], "--version", "v99")
    assert not (tmp_path / "x").exists()


def test_config_file_with_unknown_key(capsys, tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text((run_study.Path("configs/smoke.yaml").read_text()).replace("seed: 2026", "seed: 2026\nsede: 1"))
    fails(capsys, ["--version", str(path), "--output-dir", str(tmp_path / "x")], "mine.yaml", "sede: unknown key")


def test_output_dir_of_another_config_is_refused_then_forced(capsys, existing_run: Path) -> None:
    before = files_of(existing_run)
    argv = [*SMOKE, "--output-dir", str(existing_run), "--set", "name=other"]
    fails(capsys, argv, "--output-dir", "another config", "--force")
    assert files_of(existing_run) == before
    # --force keeps the earlier run beside the new one, which then runs (its checks pass)
    assert run_study.main([*argv, "--force", "--stages", "check"]) == 0
    assert (existing_run / "stages" / "check.json").is_file()
    aside = [p for p in existing_run.parent.iterdir() if p.name.startswith("run.replaced-")]
    assert len(aside) == 1 and files_of(aside[0]) == before


def test_non_empty_folder_without_manifest_is_refused(capsys, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    fails(capsys, [*SMOKE, "--output-dir", str(tmp_path)], "--output-dir", "no manifest.json")
    assert (tmp_path / "notes.txt").read_text() == "mine"


def _gsm8k_dir(tmp_path: Path, test_lines: list[str] | None) -> Path:
    folder = tmp_path / "gsm8k"
    folder.mkdir()
    shutil.copy(BUNDLED_DIR / "train.jsonl", folder / "train.jsonl")
    if test_lines is not None:
        (folder / "test.jsonl").write_text("".join(line + "\n" for line in test_lines))
    return folder


@pytest.mark.parametrize(
    ("lines", "named"),
    [
        (None, "test.jsonl: GSM8K test file not found"),
        (['{"question": "q", "answer": "#### 1"}', "{oops"], "test.jsonl:2: not valid JSON"),
        (['{"question": "q", "answer": "no final"}'], "test.jsonl:1: 'answer' has no '#### <number>'"),
    ],
)
def test_bad_gsm8kfiles_of(capsys, tmp_path: Path, lines, named: str) -> None:
    folder = _gsm8k_dir(tmp_path, lines)
    run_dir = tmp_path / "run"
    fails(capsys, [*SMOKE, "--output-dir", str(run_dir), "--set", f"data.directory={folder}"], named)
    assert not run_dir.exists()


def _checkpoint(tmp_path: Path, edit=None, *, config_edit=None, pickle_only: bool = False) -> Path:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    config = json.loads((FIXTURE_DIR / "config.json").read_text())
    if config_edit:
        config = config_edit(config)
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    weights = load_file(FIXTURE_DIR / "model.safetensors")
    if edit:
        edit(weights)
    if pickle_only:
        torch.save(weights, folder / "pytorch_model.bin")
    else:
        save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


@pytest.mark.parametrize(
    ("kind", "named"),
    [
        ("no_config", "config.json: missing"),
        ("other_type", "model_type is 'llama'"),
        ("missing", "missing tensors ['gpt.transformer.wpe.weight']"),
        ("extra", "unexpected tensors ['gpt.bonus.weight']"),
        ("misshaped", "gpt.transformer.norm_f.weight (16,) vs model (32,)"),
        ("pickle", "pytorch_model.bin"),
    ],
)
def test_bad_checkpoints(capsys, tmp_path: Path, kind: str, named: str) -> None:
    folder = {
        "no_config": lambda: _checkpoint(tmp_path, config_edit=lambda c: None),
        "other_type": lambda: _checkpoint(tmp_path, config_edit=lambda c: {**c, "model_type": "llama"}),
        "missing": lambda: _checkpoint(tmp_path, lambda w: w.pop("gpt.transformer.wpe.weight")),
        "extra": lambda: _checkpoint(tmp_path, lambda w: w.update({"gpt.bonus.weight": torch.ones(1)})),
        "misshaped": lambda: _checkpoint(
            tmp_path, lambda w: w.update({"gpt.transformer.norm_f.weight": torch.ones(16)})
        ),
        "pickle": lambda: _checkpoint(tmp_path, pickle_only=True),
    }[kind]()
    run_dir = tmp_path / "run"
    fails(capsys, [*SMOKE, "--output-dir", str(run_dir), "--model", str(folder)], named)
    assert not (run_dir / "results" / "nll.csv").exists()


def test_tokenizer_that_does_not_fit_the_model(capsys, tmp_path: Path) -> None:
    folder = _checkpoint(tmp_path)  # vocab 97, GPT-2's tokenizer has 50257 tokens
    fails(
        capsys,
        [*SMOKE, "--output-dir", str(tmp_path / "run"), "--model", str(folder), "--set", "model.tokenizer=gpt2"],
        "tokenizer has 50257 tokens; the model's embedding has 97 rows",
        "Nothing was trained",
    )
    assert not (tmp_path / "run" / "models").exists()


def test_missing_model_folder(capsys, tmp_path: Path) -> None:
    argv = [*SMOKE, "--output-dir", str(tmp_path / "r"), "--model", str(tmp_path / "nope")]
    fails(capsys, argv, "model.source: ", "is neither a local folder nor a hub id")


def test_no_hub_fails_fast_with_what_to_do(capsys, tmp_path: Path) -> None:
    err = fails(capsys, ["--version", "v17", "--output-dir", str(tmp_path / "r")], "hub")
    assert "--model" in err or "data.source=bundled" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(("target", "code"), [("fsync", errno.ENOSPC), ("mkstemp", errno.EROFS)])
def test_full_or_read_only_output_dir(capsys, monkeypatch, existing_run: Path, target: str, code: int) -> None:
    import study.io

    before = files_of(existing_run)

    def broken(*args, **kwargs):
        raise OSError(code, "No space left on device" if code == errno.ENOSPC else "Read-only file system")

    monkeypatch.setattr(study.io.os if target == "fsync" else study.io.tempfile, target, broken)
    fails(capsys, [*SMOKE, "--output-dir", str(existing_run)], str(existing_run))
    monkeypatch.undo()
    assert files_of(existing_run) == before  # atomic writes: the old manifest and results are intact
    assert not [p for p in existing_run.rglob("*.tmp")]


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="unknown version"):
        run_study.main(["--version", "v99", "--debug"])


def test_random_base_is_refused_by_the_gate_unless_skipped(capsys, tmp_path: Path) -> None:
    """The published failure mode: a base whose NLL is at the uniform guess ln|V|."""
    torch.manual_seed(0)
    config = LoopFormerConfig(block_size=512, vocab_size=50304, n_layer=3, n_head=2, n_embd=16, intermediate_dim=32)
    folder = tmp_path / "random-base"
    LoopFormerForCausalLM(config).save_pretrained(folder)
    load_tokenizer().save_pretrained(folder)
    argv = [*SMOKE, "--output-dir", str(tmp_path / "run"), "--model", str(folder), "--stages", "check"]
    fails(capsys, argv, "base NLL", "ln(50304) = 10.826", "weights not loaded", "--skip-checks")
    assert run_study.main([*argv, "--skip-checks"]) == 0
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    checks = json.loads((tmp_path / "run" / "results" / "checks.json").read_text())
    assert manifest["checks_skipped"] is True and checks["passed"] is False and checks["skipped"] is True


def test_sweep_stage_without_sft_is_refused(capsys, tmp_path: Path) -> None:
    fails(capsys, [*SMOKE, "--output-dir", str(tmp_path / "r"), "--stages", "nll"], "--stages nll", "add sft")
    assert not (tmp_path / "r").exists()


def test_compare_two_runs_from_the_command_line(capsys, tmp_path: Path) -> None:
    from tests.support.fake_run import make_fake_run

    first, second = make_fake_run(tmp_path / "v16-seed2026"), make_fake_run(tmp_path / "v17-seed2026")
    assert run_study.main(["compare", str(first), str(second), "--out", str(tmp_path / "cmp")]) == 0
    assert (tmp_path / "cmp" / "compare.md").is_file() and (tmp_path / "cmp" / "compare.csv").is_file()
    fails(capsys, ["compare", str(first), str(tmp_path / "nothing")], "nothing", "not a run directory")
