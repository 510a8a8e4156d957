"""Issue #12, fast half: every corrupt input is one line naming the file or field (exit 2,
nothing written), NaN never becomes a number, the gate cannot be bypassed, a second run
on one directory is refused, torn SFT checkpoints and full disks are survivable, and
results files respect the umask. The end-to-end half is ``test_robustness_e2e.py``."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import run_study
from study.io import atomic_write_text
from study.models.loopformer import LoopFormerConfig, LoopFormerForCausalLM
from study.pipeline import StudyError
from study.stats import paired_depth_bootstrap, ratio_ci
from study.tasks.gsm8k import BUNDLED_DIR
from study.tokenizer import load_tokenizer
from tests.support.cli import fails, files_of
from tests.support.study_runner import REPO_ROOT, study_command

SMOKE = ["--version", "smoke", "--seed", "2026"]
MINI_BASE = REPO_ROOT / "study" / "assets" / "mini-base"


@pytest.fixture
def base_copy(tmp_path: Path) -> Path:
    """A copy of the embedded mini base (a real, gate-passing checkpoint) to corrupt."""
    folder = tmp_path / "mini-base"
    shutil.copytree(MINI_BASE, folder)
    return folder


# ---- NaN and numbers out of range ------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("sft.learning_rate=.inf", "sft.learning_rate"),
        ("sft.learning_rate=.nan", "sft.learning_rate"),
        ("checks.max_nll_fraction_of_uniform=.nan", "checks.max_nll_fraction_of_uniform"),
        ("nll.confidence=.nan", "nll.confidence"),
        ("sft.lora={dropout: .nan}", "sft.lora.dropout"),
    ],
)
def test_non_finite_config_numbers_are_refused(capsys, existing_run: Path, override: str, named: str) -> None:
    before = files_of(existing_run)
    fails(capsys, [*SMOKE, "--output-dir", str(existing_run), "--set", override], named)
    assert files_of(existing_run) == before


@pytest.mark.parametrize("seed", [str(2**32), str(2**64)])
def test_seed_outside_32_bits_is_refused(capsys, tmp_path: Path, seed: str) -> None:
    fails(capsys, ["--version", "smoke", "--seed", seed, "--output-dir", str(tmp_path / "r")], "seed")
    assert not (tmp_path / "r").exists()


def test_cross_field_config_error_names_fields_not_the_whole_config(capsys, tmp_path: Path) -> None:
    err = fails(
        capsys,
        [*SMOKE, "--output-dir", str(tmp_path / "r"), "--set", "data.nll_seen_examples=100"],
        "data.nll_seen_examples (100)",
    )
    assert "{" not in err  # no section dict dumped into the line


def test_statistics_refuse_nan_instead_of_picking_an_argmin() -> None:
    nll = np.array([[np.nan, np.nan, np.nan], [np.nan, np.nan, np.nan]])
    tokens = np.array([3, 4, 5])
    with pytest.raises(StudyError, match="NaN or infinite"):
        paired_depth_bootstrap(nll, tokens, 50, 0.95, 0)
    with pytest.raises(StudyError, match="NaN or infinite"):
        paired_depth_bootstrap(np.array([[1.0, 2.0, 3.0], [1.0, np.inf, 3.0]]), tokens, 50, 0.95, 0)
    with pytest.raises(StudyError, match="NaN or infinite"):
        ratio_ci([1.0, np.nan, 2.0], [3, 4, 5], 50, 0.95, 0)


def test_latency_and_exact_match_statistics_refuse_non_numbers() -> None:
    from study.stages.latency import fit_row
    from study.stats import wilson_interval

    with pytest.raises(StudyError, match="NaN"):
        fit_row("base", [2, 4, 8], [0.1, float("nan"), 0.3])
    with pytest.raises(StudyError, match="not a proportion"):
        wilson_interval(0, 0)


def _sft_context(tmp_path: Path, **sft):
    from tests.stages.test_sft import _context

    return _context(tmp_path, **sft)


def test_sft_stops_with_one_line_when_the_loss_becomes_non_finite(tmp_path: Path) -> None:
    from study.stages.sft import train_one
    from tests.support.helpers_sweep import one_thread

    ctx = _sft_context(tmp_path, learning_rate=1e30, grad_accum=1, save_steps=100)
    with one_thread(), pytest.raises(StudyError) as caught:
        train_one(ctx, ctx.sft_spec(2))
    message = str(caught.value)
    assert "diverged" in message and "sft.learning_rate" in message and "\n" not in message, message
    assert not ctx.model_dir("train2").exists()


@pytest.mark.parametrize("loss", [float("nan"), float("inf")])
def test_non_finite_loss_callback_stops_at_the_first_bad_log(loss: float) -> None:
    from transformers import TrainerControl, TrainerState

    from study.stages.sft import _stop_on_non_finite_loss

    callback = _stop_on_non_finite_loss("train8", 5e-6)
    state, control = TrainerState(global_step=3), TrainerControl()
    callback.on_log(None, state, control, logs={"loss": 2.5})  # finite: training goes on
    with pytest.raises(StudyError, match=r"train8: the training loss became .* at step 3"):
        callback.on_log(None, state, control, logs={"loss": loss})


# ---- full disk and torn checkpoints in SFT ----------------------------------------------------


def test_full_disk_during_sft_checkpointing_is_one_line_and_resumable(tmp_path: Path, monkeypatch) -> None:
    from study.stages import sft as sft_stage
    from tests.support.helpers_sweep import one_thread

    ctx = _sft_context(tmp_path, save_steps=1)

    def full(*args, **kwargs):  # what torch's zip writer raises when the disk is full
        raise RuntimeError(
            "[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file data/0: "
            "file write failed"
        )

    monkeypatch.setattr(torch, "save", full)
    with one_thread(), pytest.raises(StudyError) as caught:
        sft_stage.train_one(ctx, ctx.sft_spec(2))
    message = str(caught.value)
    assert "free disk space" in message and "\n" not in message and len(message) < 300, message
    monkeypatch.undo()
    with one_thread():  # space freed: the half-written checkpoint is discarded and training completes
        sft_stage.train_one(ctx, ctx.sft_spec(2))
    assert (ctx.model_dir("train2") / "model.safetensors").is_file()


def test_full_disk_while_writing_the_trainer_state_is_one_line(tmp_path: Path, monkeypatch) -> None:
    from transformers.trainer_callback import TrainerState

    from study.stages import sft as sft_stage
    from tests.support.helpers_sweep import one_thread

    ctx = _sft_context(tmp_path, save_steps=1)

    def full(self, json_path):
        raise OSError(errno.ENOSPC, "No space left on device", json_path)

    monkeypatch.setattr(TrainerState, "save_to_json", full)
    with one_thread(), pytest.raises(StudyError, match="No space left on device"):
        sft_stage.train_one(ctx, ctx.sft_spec(2))


@pytest.mark.parametrize(
    ("tear", "reason"),
    [
        (lambda c: (c / "trainer_state.json").write_text(""), "trainer_state.json is empty or torn"),
        (lambda c: (c / "trainer_state.json").write_text('{"global_step": 4, "log_hi'), "empty or torn"),
        (lambda c: (c / "model.safetensors").write_bytes(b"\x10\x00"), "model.safetensors is truncated"),
    ],
)
def test_torn_checkpoint_is_skipped_for_the_previous_complete_one(tmp_path: Path, tear, reason: str) -> None:
    from study.stages.sft import last_complete_checkpoint

    folder = tmp_path / "sft"
    for step in (2, 4):
        checkpoint = folder / f"checkpoint-{step}"
        checkpoint.mkdir(parents=True)
        (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        save_file({"w": torch.ones(2)}, checkpoint / "model.safetensors")
    tear(folder / "checkpoint-4")
    said: list[str] = []
    assert last_complete_checkpoint(folder, log=said.append) == folder / "checkpoint-2"
    assert len(said) == 1 and "checkpoint-4" in said[0] and reason in said[0], said
    assert not (folder / "checkpoint-4").exists()


# ---- permissions ----------------------------------------------------------------------------


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_atomic_writes_respect_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    previous = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "result.csv", "a,b\n")
    finally:
        os.umask(previous)
    assert (tmp_path / "result.csv").stat().st_mode & 0o777 == mode


# ---- corrupt checkpoints, configs, tokenizers -----------------------------------------------


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _absurd_header(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes((2**62).to_bytes(8, "little") + data[8:])


def _bad_offsets(path: Path) -> None:
    data = path.read_bytes()
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    name = next(k for k in header if k != "__metadata__")
    header[name]["data_offsets"][1] += 4  # claims more bytes than its shape needs
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + length :])


@pytest.mark.parametrize(
    ("corrupt", "named"),
    [
        (_truncate, "model.safetensors: the header describes"),
        (lambda p: p.write_bytes(b""), "model.safetensors: 0 bytes"),
        (lambda p: p.write_bytes(os.urandom(4096)), "model.safetensors"),
        (_absurd_header, "model.safetensors: header claims"),
        (_bad_offsets, "impossible header entry"),
    ],
    ids=["truncated", "zero-byte", "garbage", "absurd-header", "bad-offsets"],
)
def test_corrupt_safetensors_is_one_line(capsys, tmp_path: Path, base_copy: Path, corrupt, named: str) -> None:
    corrupt(base_copy / "model.safetensors")
    run_dir = tmp_path / "run"
    fails(capsys, [*SMOKE, "--output-dir", str(run_dir), "--model", str(base_copy)], named)
    assert not run_dir.exists()


def _edit_config(folder: Path, edit) -> None:
    path = folder / "config.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("write", "named"),
    [
        (lambda f: _edit_config(f, lambda c: c.update(n_embd="64")), "n_embd must be a positive integer, got '64'"),
        (lambda f: _edit_config(f, lambda c: c.update(n_head=5)), "not divisible by n_head (5)"),
        (lambda f: _edit_config(f, lambda c: c.update(vocab_size=-3)), "vocab_size must be a positive integer"),
        (lambda f: _edit_config(f, lambda c: c.update(train_loops=2.5)), "train_loops must be a positive integer"),
        (lambda f: _edit_config(f, lambda c: c.update(train_loops="8")), "train_loops"),
        (lambda f: _edit_config(f, lambda c: c.update(dropout=2)), "dropout"),
        (lambda f: _edit_config(f, lambda c: c.update(eos_token_id=10**9)), "eos_token_id"),
        (lambda f: (f / "config.json").write_text("[1, 2]"), "expected a JSON object, found a list"),
        (lambda f: (f / "config.json").write_text(""), "config.json: empty"),
        (lambda f: (f / "config.json").write_text('{"model_type": '), "config.json:1: not valid JSON"),
        (
            lambda f: (f / "config.json").write_bytes(b"\xef\xbb\xbf" + (f / "config.json").read_bytes()),
            "byte-order mark",
        ),
    ],
    ids=[
        "string-width",
        "heads",
        "negative",
        "fractional-loops",
        "string-loops",
        "dropout",
        "eos",
        "list",
        "empty",
        "torn",
        "bom",
    ],
)
def test_bad_model_config_is_one_line_before_anything_is_written(
    capsys, tmp_path: Path, base_copy: Path, write, named: str
) -> None:
    write(base_copy)
    run_dir = tmp_path / "run"
    fails(capsys, [*SMOKE, "--output-dir", str(run_dir), "--model", str(base_copy)], "config.json", named)
    assert not run_dir.exists()


def test_bad_model_config_leaves_an_existing_run_untouched(capsys, existing_run: Path, base_copy: Path) -> None:
    _edit_config(base_copy, lambda c: c.update(n_head=5))
    before = files_of(existing_run)
    fails(capsys, [*SMOKE, "--output-dir", str(existing_run), "--model", str(base_copy)], "n_head")
    assert files_of(existing_run) == before


@pytest.mark.parametrize("via", ["model-folder", "set-tokenizer"])
def test_broken_tokenizer_json_is_one_line(capsys, tmp_path: Path, base_copy: Path, via: str) -> None:
    if via == "model-folder":
        (base_copy / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "Nope"')
        argv = ["--model", str(base_copy)]
        named = "model.source"
    else:
        folder = tmp_path / "tok"
        folder.mkdir()
        (folder / "tokenizer.json").write_bytes(b"\x00garbage")
        (folder / "tokenizer_config.json").write_text("{}")
        argv = ["--set", f"model.tokenizer={folder}"]
        named = "model.tokenizer"
    run_dir = tmp_path / "run"
    fails(capsys, [*SMOKE, "--output-dir", str(run_dir), *argv], named, "tokenizer")
    assert not run_dir.exists()


# ---- data and config files --------------------------------------------------------------------


def _gsm8k_dir(tmp_path: Path, test_bytes: bytes) -> Path:
    folder = tmp_path / "gsm8k"
    folder.mkdir()
    shutil.copy(BUNDLED_DIR / "train.jsonl", folder / "train.jsonl")
    (folder / "test.jsonl").write_bytes(test_bytes)
    return folder


@pytest.mark.parametrize(
    ("content", "named"),
    [
        (b'{"question": "q", "answer": "#### 1"}\n{"question": "\xff"}\n', "test.jsonl:2: not UTF-8"),
        (b"", "test.jsonl: empty"),
        (b"\n\n", "test.jsonl: empty"),
    ],
    ids=["undecodable", "empty", "blank-lines"],
)  # fmt: skip
def test_undecodable_or_empty_data_file_is_named(capsys, tmp_path: Path, content: bytes, named: str) -> None:
    folder = _gsm8k_dir(tmp_path, content)
    run_dir = tmp_path / "run"
    fails(capsys, [*SMOKE, "--output-dir", str(run_dir), "--set", f"data.directory={folder}"], named)
    assert not run_dir.exists()


def test_undecodable_config_file_is_named_with_its_line(capsys, tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    text = (REPO_ROOT / "configs" / "smoke.yaml").read_bytes()
    lines = text.split(b"\n")
    lines[2] = lines[2] + b" \xff"
    path.write_bytes(b"\n".join(lines))
    fails(capsys, ["--version", str(path), "--output-dir", str(tmp_path / "x")], "mine.yaml:3: not UTF-8")
    assert not (tmp_path / "x").exists()


# ---- other user errors --------------------------------------------------------------------------


def test_lora_target_that_matches_nothing_is_refused_before_writing(capsys, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    fails(
        capsys,
        [*SMOKE, "--output-dir", str(run_dir), "--set", "sft.lora={target_modules: [c_attn, q_proj]}"],
        "sft.lora.target_modules",
        "q_proj",
    )
    assert not run_dir.exists()


def test_run_name_too_long_for_the_file_system(capsys, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    fails(capsys, [*SMOKE, "--set", "name=" + "n" * 300], "name", "file system")
    assert not (tmp_path / "runs").exists()
    fails(capsys, [*SMOKE, "--output-dir", str(tmp_path / ("d" * 260))], "--output-dir", "file system")


@pytest.mark.parametrize(
    ("content", "named"),
    [(b"{oops", "not valid JSON"), (b"", "empty"), (b"[1, 2]", "found a list"), (b'{"config": 3}', "'config'")],
    ids=["garbage", "empty", "list", "config-not-object"],
)
def test_run_dir_with_a_broken_manifest(capsys, existing_run: Path, content: bytes, named: str) -> None:
    (existing_run / "manifest.json").write_bytes(content)
    before = files_of(existing_run)
    fails(capsys, [*SMOKE, "--output-dir", str(existing_run)], "manifest.json", named, "--force")
    assert files_of(existing_run) == before
    fails(capsys, ["compare", str(existing_run), str(existing_run), "--out", str(existing_run.parent / "c")], named)
    assert not (existing_run.parent / "c").exists()


def test_ctrl_c_during_imports_ends_quietly(tmp_path: Path) -> None:
    process = subprocess.Popen(
        study_command(*SMOKE, "--output-dir", str(tmp_path / "run")),
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.0)  # torch and transformers take seconds to import
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert not (tmp_path / "run").exists()


# ---- the gate ---------------------------------------------------------------------------------


def _random_base(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    config = LoopFormerConfig(block_size=512, vocab_size=50304, n_layer=3, n_head=2, n_embd=16, intermediate_dim=32)
    folder = tmp_path / "random-base"
    LoopFormerForCausalLM(config).save_pretrained(folder)
    load_tokenizer().save_pretrained(folder)
    return folder


def test_stages_that_use_the_base_run_the_gate_first(capsys, tmp_path: Path) -> None:
    folder = _random_base(tmp_path)
    run_dir = tmp_path / "run"
    argv = [*SMOKE, "--output-dir", str(run_dir), "--model", str(folder)]
    fails(capsys, [*argv, "--stages", "sft"], "sanity checks failed", "base NLL")
    assert not (run_dir / "models").exists() and not (run_dir / "sft").exists()
    # a failure recorded under --skip-checks still stops a later run without it
    assert run_study.main([*argv, "--stages", "check", "--skip-checks"]) == 0
    capsys.readouterr()
    fails(capsys, [*argv, "--stages", "sft"], "sanity checks failed")
    assert not (run_dir / "models").exists()


# ---- the run lock -----------------------------------------------------------------------------


HOLD = """
import sys, time
from pathlib import Path
from study.lock import RunLock
RunLock(Path(sys.argv[1])).acquire()
print("held", flush=True)
time.sleep(120)
"""


def test_second_run_on_a_locked_directory_is_refused_and_a_dead_holder_taken_over(capsys, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "held"
        err = fails(capsys, [*SMOKE, "--output-dir", str(run_dir), "--stages", "check"], "in use by another run")
        assert f"pid {holder.pid}" in err and "started" in err
        assert not run_dir.exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the holder died without releasing: its lock is free and the next run takes it over
    assert run_study.main([*SMOKE, "--output-dir", str(run_dir), "--stages", "check"]) == 0
    out = capsys.readouterr().out
    assert f"took over the lock of an earlier run of {run_dir} (pid {holder.pid}" in out
