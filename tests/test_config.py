"""Config versions load and validate; every bad value is one line naming its key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from study.config import CONFIG_DIR, ConfigError, load_config, sft_model_name


@pytest.mark.parametrize("version", ["v16", "v17", "mini", "smoke"])
def test_versions_load(version: str) -> None:
    config = load_config(version)
    assert config.name == version
    assert config.sft.train_loops == [8, 4]


def test_published_configurations() -> None:
    v17, v16 = load_config("v17"), load_config("v16")
    assert v17.model.source == "armenjeddi/LoopFormer-3block-8iterations" and v17.data.source == "hub"
    assert (v17.seed, v17.data.nll_test_examples, v17.data.nll_seen_examples) == (2026, 300, 300)
    assert v17.data.nll_heldout_examples == 300 and v17.replicates == [2026]
    assert v16.data.nll_test_examples == 200
    assert v17.nll.inference_loops == [2, 4, 6, 8, 10, 12, 16] and v17.exact_match.inference_loops == [2, 8, 16]
    s = v17.sft
    assert (s.epochs, s.batch_size, s.grad_accum, s.learning_rate, s.max_length) == (2, 1, 8, 5e-6, 256)
    assert s.dtype == "float32" and s.deterministic and v17.data.sft_examples == 512


def test_overrides_and_seed() -> None:
    config = load_config("smoke", ["nll.batch_size=2", "sft.lora={r: 4, alpha: 8}"], seed=7)
    assert config.nll.batch_size == 2 and config.sft.lora.r == 4 and config.seed == 7


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("nll.inference_loops=[]", "nll.inference_loops"),
        ("nll.inference_loops=[0, 2]", "nll.inference_loops.0"),
        ("nll.inference_loops=[-2]", "nll.inference_loops.0"),
        ("sft.train_loops=[2.5]", "sft.train_loops.0"),
        ("sft.train_loops=['4']", "sft.train_loops.0"),
        ("exact_match.inference_loops=[0]", "exact_match.inference_loops.0"),
        ("nll.bogus=1", "nll.bogus: unknown key"),
        ("sft.learning_rate=-1.0", "sft.learning_rate"),
        ("data.nll_seen_examples=1000", "nll_seen_examples (1000) exceeds data.sft_examples"),
        ("data.nll_train_examples=8", "nll_train_examples is gone: use nll_heldout_examples"),
        ("replicates=[2026, 2026]", "replicates has repeated seeds: [2026, 2026]"),
        ("replicates=[]", "replicates: List should have at least 1 item"),
        ("replicates=[-1]", "replicates.0"),
        ("replicates=2026", "replicates: Input should be a valid list"),
        ("nll.batch_size.x=1", "nll.batch_size is not a config section"),
        ("nll", "expected key=value"),
    ],
)
def test_bad_values_name_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config("smoke", [override])
    message = str(raised.value)
    assert key in message and "\n" not in message


def test_replicates_default_to_the_run_seed_and_name_the_sft_models() -> None:
    one = load_config("smoke", seed=7)
    assert one.replicates == [7]  # one replicate, at the run's seed: the names carry no seed
    assert [(m.name, m.label, m.train_loops, m.seed) for m in one.sft_models()] == [
        ("train8", "Train8", 8, 7), ("train4", "Train4", 4, 7),
    ]  # fmt: skip
    several = load_config("smoke", ["replicates=[2026, 2027]"], seed=7)
    assert several.seed == 7 and several.replicates == [2026, 2027]  # --seed is the run seed, not a training seed
    assert [(m.name, m.label, m.seed) for m in several.sft_models()] == [
        ("train8-s2026", "Train8 (seed 2026)", 2026), ("train8-s2027", "Train8 (seed 2027)", 2027),
        ("train4-s2026", "Train4 (seed 2026)", 2026), ("train4-s2027", "Train4 (seed 2027)", 2027),
    ]  # fmt: skip
    assert sft_model_name(4, 2027) == "train4-s2027" and sft_model_name(4) == "train4"


def test_the_shipped_configs_meet_the_studys_sizes() -> None:
    smol, smoke = load_config("smol"), load_config("smol-smoke")
    d, s = smol.data, smol.sft
    assert d.nll_test_examples >= 300 and d.nll_heldout_examples >= 100 and d.nll_seen_examples <= 30
    assert len(smol.replicates) >= 3 and len(smoke.replicates) == 2
    assert d.sft_examples * s.epochs // (s.batch_size * s.grad_accum) >= 100  # optimizer steps per model
    for name in ("smoke", "mini", "v16", "v17"):  # their runtime does not grow
        assert len(load_config(name).replicates) == 1


def test_unknown_version_lists_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown version 'v99'.*mini"):
        load_config("v99")


def test_config_file_path_and_its_errors(tmp_path: Path) -> None:
    text = (CONFIG_DIR / "smoke.yaml").read_text()
    good = tmp_path / "mine.yaml"
    good.write_text(text.replace("name: smoke", "name: mine"))
    assert load_config(str(good)).name == "mine"
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("  epochs: 1", "  epochs: 1\n  epoch: 3"))
    with pytest.raises(ConfigError, match=r"bad\.yaml: sft\.epoch: unknown key"):
        load_config(str(bad))
    typed = tmp_path / "typed.yaml"
    typed.write_text(text.replace("  epochs: 1", "  epochs: one"))
    with pytest.raises(ConfigError, match=r"typed\.yaml: sft\.epochs: .*integer"):
        load_config(str(typed))
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "absent.yaml"))


def test_stage_hashes_ignore_unrelated_sections() -> None:
    from study.stages import stage_named
    from study.stages.keys import stage_hash

    sft, nll, latency = stage_named("sft"), stage_named("nll"), stage_named("latency")
    a = load_config("smoke")
    b = load_config("smoke", ["latency.samples=5"])
    assert stage_hash(a, sft) == stage_hash(b, sft) and stage_hash(a, nll) == stage_hash(b, nll)
    assert stage_hash(a, latency) != stage_hash(b, latency)
    assert a.identity_hash() == load_config("smoke", ["device=auto"]).identity_hash()


ROOT = Path(__file__).resolve().parent.parent


def _commands(text: str) -> list[list[str]]:
    """Every ``python run_study.py ...`` command in ``text`` (comments dropped), as argv."""
    import shlex

    found = []
    for match in re.finditer(r"python run_study\.py([^\n`#]*)", text):
        found.append(shlex.split(match.group(1)))
    return found


def _validate(argv: list[str]) -> None:
    import run_study

    if argv[:1] == ["compare"]:
        run_study.build_compare_parser().parse_args(argv[1:])
        return
    args = run_study.build_parser().parse_args(argv)
    load_config(args.version, args.overrides, seed=args.seed)


def test_every_example_in_help_and_readme_is_a_valid_command() -> None:
    """The examples of ``run_study.py --help`` (and of the README) parse and their config
    loads with their overrides: an example naming a key that moved fails here."""
    import run_study

    help_text = run_study.build_parser().format_help()
    commands = _commands(help_text)
    assert len(commands) >= 5 and any(argv[:1] == ["compare"] for argv in commands)
    overrides = re.findall(r"--set\s+([a-z_]+\.[\w.]+=\S+?)[,)]?(?=\s)", help_text)
    assert "data.nll_test_examples=4" in overrides and "nll.inference_loops=[2,8]" in overrides
    readme = ROOT / "README.md"
    if readme.is_file():
        text = readme.read_text(encoding="utf-8")
        commands += _commands(text)
        overrides += re.findall(r"--set ([a-z_]+\.[\w.]+=[^\s`]+)", text)
    for argv in commands:
        _validate(argv)
    for override in overrides:
        load_config("smoke", [override])


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("sft.lerning_rate=1e-4", "sft.lerning_rate: unknown key (did you mean sft.learning_rate?)"),
        ("sede=1", "sede: unknown key (did you mean seed?)"),
        ("data.nll_tst_examples=4", "(did you mean data.nll_test_examples?)"),
        ("nll.zzz=1", "nll.zzz: unknown key"),  # nothing close: no guess
        ("nll.inference_loops=8", "valid list (got 8); write a list, e.g. --set nll.inference_loops=[2,4,6,8"),
        ("sft.lora.target_modules=c_attn", "e.g. --set sft.lora.target_modules=[c_attn,c_proj,c_fc]"),
    ],
)
def test_errors_suggest_the_closest_key_and_the_list_syntax(override: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config("smoke", [override])
    message = str(caught.value)
    assert expected in message and len(message) < 300 and "\n" not in message
    if "zzz" in override:
        assert "did you mean" not in message


def test_list_error_in_a_file_shows_the_yaml_syntax(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    smoke = (CONFIG_DIR / "smoke.yaml").read_text()
    path.write_text(smoke.replace("inference_loops: [2, 4, 8]", "inference_loops: 8", 1))
    with pytest.raises(ConfigError, match=r"nll\.inference_loops: .*write a list, e\.g\. inference_loops: \[2, 4, 6"):
        load_config(str(path))
