"""``sweep_dtype: bfloat16``: the sweeps run in bf16, close to fp32 and never mixed with it.

The NLL of a tiny looped Llama in bf16 is within a small margin of fp32 but not equal
to it; cells computed in one dtype are discarded, not reused, when the config switches
to the other, and switching back reproduces the fp32 bytes. SFT never sees the option."""

from __future__ import annotations

import pytest
import torch

from study.config import ConfigError, load_config
from study.io import read_csv
from study.models.backbone import cast_weights
from study.pipeline import RunContext
from study.stages import nll as nll_stage
from study.stages import stage_named
from study.stages.keys import model_output_key, refresh_model_outputs, stage_hash
from tests.support.helpers_looped import looped_context, tiny_llama
from tests.support.helpers_sweep import one_thread


def with_dtype(ctx: RunContext, dtype: str) -> RunContext:
    config = ctx.config.model_copy(update={"sweep_dtype": dtype})
    return RunContext(config=config, run_dir=ctx.run_dir, device=ctx.device)


def run_nll(ctx: RunContext) -> tuple[list[str], dict[tuple[str, str, str, str], float]]:
    """(models whose cells were discarded, NLL per token by (model, split, policy, example))."""
    discarded = refresh_model_outputs(ctx, stage_named("nll"))
    nll_stage.run(ctx)
    rows = read_csv(ctx.results_path("nll.csv"))
    per_token = {
        (r["model"], r["split"], r["policy"], r["example_id"]): float(r["nll_sum"]) / int(r["answer_tokens"])
        for r in rows
    }
    return discarded, per_token


def test_bf16_nll_is_close_to_fp32_and_cells_are_never_reused_across_dtypes(tmp_path) -> None:
    fp32_ctx = looped_context(tmp_path, nll_loops=(1, 3))
    with one_thread():
        assert run_nll(fp32_ctx)[0] == []  # a first run has nothing to discard
        fp32_bytes = fp32_ctx.results_path("nll.csv").read_bytes()
        _, fp32 = run_nll(fp32_ctx)
        assert fp32_ctx.results_path("nll.csv").read_bytes() == fp32_bytes  # same dtype: cells reused
        discarded, bf16 = run_nll(with_dtype(fp32_ctx, "bfloat16"))
        assert discarded == ["base", "train2"]  # the fp32 cells are not bf16 results
        assert bf16.keys() == fp32.keys()
        differences = [abs(bf16[key] - fp32[key]) for key in fp32]
        assert max(differences) > 0  # really computed in bf16
        assert max(differences) < 0.05 * max(fp32.values())  # and close: bf16 keeps 8 bits of mantissa
        discarded, again = run_nll(fp32_ctx)
        assert discarded == ["base", "train2"] and again == fp32  # nor the bf16 cells fp32 results
    assert fp32_ctx.results_path("nll.csv").read_bytes() == fp32_bytes


def test_sweep_dtype_is_part_of_the_sweeps_identity_and_not_of_sft(tmp_path) -> None:
    a, b = load_config("smoke"), load_config("smoke", ["sweep_dtype=bfloat16"])
    for name in ("nll", "adaptive", "exact_match", "latency"):
        assert stage_hash(a, stage_named(name)) != stage_hash(b, stage_named(name)), name
    assert stage_hash(a, stage_named("sft")) == stage_hash(b, stage_named("sft"))
    assert a.identity_hash() != b.identity_hash()
    ctx = looped_context(tmp_path)
    sft, nll = stage_named("sft"), stage_named("nll")
    spec = ctx.sft_spec(2)
    assert "sweep_dtype" not in model_output_key(ctx, sft, spec)  # an SFT model is reused whatever the sweeps do
    assert model_output_key(ctx, nll, spec)["sweep_dtype"] == "float32"
    assert model_output_key(with_dtype(ctx, "bfloat16"), nll, spec)["sweep_dtype"] == "bfloat16"


def test_sft_refuses_bfloat16_and_the_sweep_dtype_is_checked() -> None:
    with pytest.raises(ConfigError, match=r"sft\.dtype: Input should be 'float32'"):
        load_config("smoke", ["sft.dtype=bfloat16"])
    with pytest.raises(ConfigError, match=r"sweep_dtype: Input should be 'float32' or 'bfloat16'"):
        load_config("smoke", ["sweep_dtype=float16"])


def test_the_sweep_model_is_cast_and_the_sft_model_is_not(tmp_path) -> None:
    ctx = with_dtype(looped_context(tmp_path), "bfloat16")
    swept, trained = ctx.load_sweep_model(ctx.base_spec), ctx.load_model(ctx.base_spec)
    assert {p.dtype for p in swept.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in trained.parameters()} == {torch.float32}
    # the rotary frequencies stay fp32 (in bf16 every position's angle would drift)
    assert {b.dtype for b in swept.buffers()} == {torch.float32}
    assert swept.lm_head.weight is swept.model.embed_tokens.weight  # still tied


def test_cast_weights_keeps_tied_weights_tied() -> None:
    model = cast_weights(tiny_llama(0), torch.bfloat16)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.lm_head.weight.dtype == torch.bfloat16


def test_the_report_says_when_the_sweeps_ran_in_bf16(tmp_path) -> None:
    from study import report
    from study.io import atomic_write_json, read_json
    from tests.support.fake_run import make_fake_run

    run_dir = make_fake_run(tmp_path / "fake")
    assert "Sweeps in" not in report.render_report(report.load_results(run_dir), {})  # fp32: nothing to say
    manifest = read_json(run_dir / "manifest.json")
    manifest["config"]["sweep_dtype"] = "bfloat16"
    atomic_write_json(run_dir / "manifest.json", manifest)
    text = report.render_report(report.load_results(run_dir), {})
    assert "- **Sweeps in bfloat16** (`sweep_dtype`; SFT in float32): a fast look" in text
