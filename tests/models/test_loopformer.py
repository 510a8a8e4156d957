"""LoopFormer: the authors' logits, the released layout, schedules, safe loading."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM

import study.models  # noqa: F401  (registers the Auto classes)
from study.models.loopformer import CheckpointError, LoopFormerConfig, LoopFormerForCausalLM, resolve_schedule
from study.tokenizer import load_tokenizer
from tests.conftest import shared_dir

# max-abs logit error against the authors' implementation, measured on this CPU (torch 2.13):
# sdpa 1.04e-6, eager 1.16e-6 (logits reach 0.58, so ~16 float32 ulps); the bound leaves room
# for other CPUs' kernels, not for a wrong model (a wrong op is off by 1e-3 or more)
CONFORMANCE_TOLERANCE = {"sdpa": 1.5e-6, "eager": 1.5e-6}


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_conformance_with_the_authors_logits(conformance_dir: Path, attn_implementation: str) -> None:
    model = LoopFormerForCausalLM.from_pretrained(conformance_dir, attn_implementation=attn_implementation).eval()
    assert model.config._attn_implementation == attn_implementation
    expected = load_file(conformance_dir / "expected.safetensors")
    schedules = json.loads((conformance_dir / "schedules.json").read_text())
    assert len(schedules) >= 8
    with torch.no_grad():
        for name, schedule in schedules.items():
            logits = model(expected["input_ids"], schedule=schedule).logits
            error = (logits - expected[f"logits.{name}"]).abs().max().item()
            assert error <= CONFORMANCE_TOLERANCE[attn_implementation], f"schedule {name}: max-abs error {error}"


def test_attention_implementation_is_the_one_asked_for(conformance_dir: Path, monkeypatch) -> None:
    """The registry decides: a model loaded as eager never calls sdpa, and vice versa."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from study.models import loopformer

    calls: list[str] = []
    real_sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]
    monkeypatch.setitem(
        ALL_ATTENTION_FUNCTIONS._global_mapping, "sdpa", lambda *a, **k: (calls.append("sdpa"), real_sdpa(*a, **k))[1]
    )
    real_eager = loopformer.eager_attention_forward
    monkeypatch.setattr(
        loopformer, "eager_attention_forward", lambda *a, **k: (calls.append("eager"), real_eager(*a, **k))[1]
    )
    ids = torch.tensor([[3, 1, 4, 1, 5]])
    for implementation in ("eager", "sdpa"):
        calls.clear()
        model = LoopFormerForCausalLM.from_pretrained(conformance_dir, attn_implementation=implementation).eval()
        with torch.no_grad():
            model(ids, num_loops=2)
        assert set(calls) == {implementation} and len(calls) == 2 * model.config.n_layer


def test_misspelt_keyword_is_refused(conformance_dir: Path) -> None:
    model = LoopFormerForCausalLM.from_pretrained(conformance_dir).eval()
    ids = torch.tensor([[3, 1, 4, 1, 5]])
    with pytest.raises(TypeError, match="num_loop"):
        model(ids, num_loop=4)
    with pytest.raises(TypeError, match="loops"):
        model.gpt(ids, loops=4)
    with pytest.raises(ValueError, match="output_attentions"):
        model(ids, output_attentions=True)  # accepted name, but nothing to return


def test_keywords_transformers_passes_are_accepted(conformance_dir: Path) -> None:
    model = LoopFormerForCausalLM.from_pretrained(conformance_dir).eval()
    ids = torch.tensor([[3, 1, 4, 1, 5]])
    with torch.no_grad():
        out = model(ids, num_loops=2, return_dict=True, output_attentions=False, position_ids=None)
        as_tuple = model(ids, num_loops=2, return_dict=False, use_cache=False)
        last_two = model(ids, num_loops=2, logits_to_keep=2).logits
        chosen = model(ids, num_loops=2, logits_to_keep=torch.tensor([0, 3])).logits
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], out.logits)
    # a matmul over fewer rows may round differently in the last bit
    assert torch.allclose(last_two, out.logits[:, -2:], atol=1e-6, rtol=0)
    assert torch.allclose(chosen, out.logits[:, [0, 3]], atol=1e-6, rtol=0)


def test_cache_refuses_another_schedule(conformance_dir: Path) -> None:
    from transformers.cache_utils import DynamicCache

    model = LoopFormerForCausalLM.from_pretrained(conformance_dir).eval()
    ids = torch.tensor([[3, 1, 4, 1, 5]])
    with torch.no_grad():
        cache = DynamicCache()
        model(ids, num_loops=4, cache=cache, use_cache=True)
        model(ids[:, :1], num_loops=4, cache=cache, use_cache=True)  # same depth: fine
        with pytest.raises(ValueError, match="filled at schedule"):
            model(ids[:, :1], num_loops=2, cache=cache, use_cache=True)
        with pytest.raises(ValueError, match="filled at schedule"):
            model(ids[:, :1], schedule=[0.5, 0.125, 0.125, 0.25], cache=cache, use_cache=True)


def test_cached_decoding_reuses_the_loop_conditioning(conformance_dir: Path) -> None:
    """Without gradients the adaLN outputs are computed once per cache, not per token."""
    from transformers.cache_utils import DynamicCache

    model = LoopFormerForCausalLM.from_pretrained(conformance_dir).eval()
    calls = []
    model.gpt.time_embedder.register_forward_hook(lambda *args: calls.append(1))
    ids = torch.tensor([[3, 1, 4, 1, 5]])
    with torch.no_grad():
        cache = DynamicCache()
        model(ids, num_loops=4, cache=cache, use_cache=True)
        model(ids[:, :1], num_loops=4, cache=cache, use_cache=True)
        model(ids[:, :1], num_loops=4, cache=cache, use_cache=True)
    assert len(calls) == 4  # once per step of the first forward only


def test_num_loops_is_the_uniform_schedule(conformance_dir: Path) -> None:
    model = LoopFormerForCausalLM.from_pretrained(conformance_dir).eval()
    ids = load_file(conformance_dir / "expected.safetensors")["input_ids"]
    with torch.no_grad():
        by_loops = model(ids, num_loops=4).logits
        by_schedule = model(ids, schedule=[0.25] * 4).logits
        default = model(ids).logits  # config.train_loops
        explicit = model(ids, num_loops=model.config.train_loops).logits
        other = model(ids, num_loops=2).logits
    assert torch.equal(by_loops, by_schedule)
    assert torch.equal(default, explicit)
    assert not torch.allclose(by_loops, other)  # the loop count matters


def test_vendored_fixture_matches_shared() -> None:
    source = shared_dir() / "fixtures" / "loopformer-conformance"
    for name in ("config.json", "model.safetensors", "expected.safetensors", "schedules.json"):
        vendored = Path(__file__).resolve().parents[1] / "fixtures" / "loopformer-conformance" / name
        assert vendored.read_bytes() == (source / name).read_bytes(), name


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        ([], "empty"),
        ([0.5, 0.0, 0.5], "non-positive"),
        ([0.5, -0.25, 0.75], "non-positive"),
        ([0.5, 0.25], "sums to"),
        ([0.6, 0.6], "sums to"),
    ],
)
def test_bad_schedules_are_refused(schedule: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        resolve_schedule(schedule, None, 8)


@pytest.mark.parametrize("loops", [0, -1, 2.5, True])
def test_bad_loop_counts_are_refused(loops) -> None:
    with pytest.raises(ValueError, match="num_loops"):
        resolve_schedule(None, loops, 8)


def test_schedule_within_tolerance_is_accepted() -> None:
    assert resolve_schedule([1 / 3] * 3, None, 8) == [1 / 3] * 3
    assert resolve_schedule(None, None, 6) == [1 / 6] * 6


def test_forward_refuses_bad_schedule(conformance_dir: Path) -> None:
    model = LoopFormerForCausalLM.from_pretrained(conformance_dir)
    with pytest.raises(ValueError, match="sums to"):
        model(torch.tensor([[1, 2, 3]]), schedule=[0.5])


def test_released_config_loads_with_our_extra_fields(conformance_dir: Path) -> None:
    config = AutoConfig.from_pretrained(conformance_dir)
    assert isinstance(config, LoopFormerConfig)
    assert config.train_loops == 8  # absent from the released config: our default
    assert (config.n_layer, config.n_embd, config.intermediate_dim, config.bias) == (3, 32, 80, False)


def test_save_and_load_round_trip_exactly(conformance_dir: Path, tmp_path: Path) -> None:
    model = LoopFormerForCausalLM.from_pretrained(conformance_dir)
    model.config.train_loops = 4
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "model.safetensors")
    assert "lm_head.weight" not in saved  # tied to the embedding, as released
    assert all(key.startswith("gpt.") for key in saved)
    again = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert isinstance(again, LoopFormerForCausalLM)
    assert again.config.train_loops == 4
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert again.lm_head.weight.data_ptr() == again.gpt.transformer.wte.weight.data_ptr()


def test_sixteen_bit_weights_load_as_fp32(conformance_dir: Path, tmp_path: Path) -> None:
    shutil.copy(conformance_dir / "config.json", tmp_path / "config.json")
    weights = {k: v.to(torch.bfloat16) for k, v in load_file(conformance_dir / "model.safetensors").items()}
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    model = LoopFormerForCausalLM.from_pretrained(tmp_path)
    assert model.gpt.transformer.wte.weight.dtype == torch.float32


def _broken_copy(conformance_dir: Path, tmp_path: Path, edit) -> Path:
    shutil.copy(conformance_dir / "config.json", tmp_path / "config.json")
    weights = load_file(conformance_dir / "model.safetensors")
    edit(weights)
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    return tmp_path


def test_missing_tensor_is_refused_by_name(conformance_dir: Path, tmp_path: Path) -> None:
    folder = _broken_copy(conformance_dir, tmp_path, lambda w: w.pop("gpt.transformer.h.blocks.1.mlp.c_fc.weight"))
    with pytest.raises(CheckpointError, match=r"missing tensors .*blocks\.1\.mlp\.c_fc\.weight"):
        LoopFormerForCausalLM.from_pretrained(folder)


def test_renamed_tensor_is_refused_by_name(conformance_dir: Path, tmp_path: Path) -> None:
    def rename(weights):
        weights["gpt.transformer.norm_final.weight"] = weights.pop("gpt.transformer.norm_f.weight")

    folder = _broken_copy(conformance_dir, tmp_path, rename)
    with pytest.raises(CheckpointError) as raised:
        LoopFormerForCausalLM.from_pretrained(folder)
    assert "norm_f.weight" in str(raised.value) and "norm_final.weight" in str(raised.value)


def test_unexpected_tensor_is_refused_by_name(conformance_dir: Path, tmp_path: Path) -> None:
    folder = _broken_copy(conformance_dir, tmp_path, lambda w: w.update({"gpt.extra.weight": torch.zeros(2)}))
    with pytest.raises(CheckpointError, match=r"unexpected tensors .*gpt\.extra\.weight"):
        LoopFormerForCausalLM.from_pretrained(folder)


def test_misshaped_tensor_is_refused_by_name(conformance_dir: Path, tmp_path: Path) -> None:
    def reshape(weights):
        weights["gpt.transformer.h.blocks.0.attn.c_attn.weight"] = torch.zeros(90, 32)

    folder = _broken_copy(conformance_dir, tmp_path, reshape)
    with pytest.raises(CheckpointError, match=r"blocks\.0\.attn\.c_attn\.weight"):
        LoopFormerForCausalLM.from_pretrained(folder)


def test_folder_without_config_is_refused(conformance_dir: Path, tmp_path: Path) -> None:
    shutil.copy(conformance_dir / "model.safetensors", tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"config\.json"):
        LoopFormerForCausalLM.from_pretrained(tmp_path)


def test_other_model_type_is_refused(conformance_dir: Path, tmp_path: Path) -> None:
    shutil.copy(conformance_dir / "model.safetensors", tmp_path / "model.safetensors")
    config = json.loads((conformance_dir / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    with pytest.raises(CheckpointError, match="model_type is 'gpt2'"):
        LoopFormerForCausalLM.from_pretrained(tmp_path)


def test_pickle_only_checkpoint_is_refused(conformance_dir: Path, tmp_path: Path) -> None:
    shutil.copy(conformance_dir / "config.json", tmp_path / "config.json")
    torch.save(load_file(conformance_dir / "model.safetensors"), tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin.*pickle"):
        LoopFormerForCausalLM.from_pretrained(tmp_path)


def test_remote_code_is_refused(conformance_dir: Path) -> None:
    with pytest.raises(CheckpointError, match="trust_remote_code"):
        LoopFormerForCausalLM.from_pretrained(conformance_dir, trust_remote_code=True)


def test_loss_counts_only_labelled_tokens(conformance_dir: Path) -> None:
    model = LoopFormerForCausalLM.from_pretrained(conformance_dir).eval()
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    labels = torch.tensor([[-100, -100, 7, 8, 9]])
    with torch.no_grad():
        out = model(ids, labels=labels, num_loops=2)
        logp = out.logits.log_softmax(-1)
        # gradient accumulation: the Trainer passes the token count of the whole accumulated batch
        summed = model(ids, labels=labels, num_loops=2, num_items_in_batch=torch.tensor(6)).loss
    expected = -(logp[0, 1, 7] + logp[0, 2, 8] + logp[0, 3, 9]) / 3
    assert torch.allclose(out.loss, expected, atol=1e-6)
    assert torch.allclose(summed, expected * 3 / 6, atol=1e-6)


def test_trl_fused_head_and_trainer_keywords_train(conformance_dir: Path) -> None:
    """What trl's SFTTrainer sends (its fused LM head over ``base_model``, ``use_cache=False``,
    ``num_items_in_batch``) runs, back-propagates, and scores like the plain loss."""
    from trl.trainer.utils import add_fused_lm_head

    model = LoopFormerForCausalLM.from_pretrained(conformance_dir).train()
    model.config.train_loops = 2
    plain = model(torch.tensor([[5, 6, 7, 8, 9]]), labels=torch.tensor([[-100, -100, 7, 8, 9]])).loss
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    inputs = {
        "input_ids": torch.tensor([[5, 6, 7, 8, 9]]),
        "attention_mask": torch.ones(1, 5, dtype=torch.long),
        "labels": torch.tensor([[-100, -100, 7, 8, 9]]),
        "use_cache": False,
    }
    fused = model(**inputs, fused_lm_head=True, num_items_in_batch=torch.tensor(3))
    fused.loss.backward()
    assert torch.allclose(fused.loss, plain, atol=1e-5)
    assert model.gpt.transformer.h.blocks[0].adaLN_modulation[1].weight.grad is not None


def test_gpt2_tokenizer_is_vendored_and_offline() -> None:
    tokenizer = load_tokenizer()
    assert tokenizer.encode("Hello world") == [15496, 995]
    assert tokenizer.eos_token_id == 50256 and len(tokenizer) == 50257


def test_backbone_serves_trl_fused_head(conformance_dir: Path) -> None:
    """trl calls ``model.base_model`` with ids and mask only and applies the head itself."""
    model = LoopFormerForCausalLM.from_pretrained(conformance_dir).eval()
    model.config.train_loops = 4
    ids = torch.tensor([[3, 1, 4, 1, 5]])
    with torch.no_grad():
        hidden = model.base_model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
        logits = model.get_output_embeddings()(hidden.last_hidden_state)
        assert torch.allclose(logits, model(ids, num_loops=4).logits, atol=1e-6)
