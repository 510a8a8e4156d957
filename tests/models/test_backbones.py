"""The backbone registry (``study.models.backbones``): every entry loads, binds, runs,
costs, trains and names its depth on a tiny model of its own, and refuses another's."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from study.config import AdaptiveConfig, sft_model_name
from study.errors import CheckpointError
from study.looping.policies import (
    HaltingWindow,
    RungLadder,
    StepSchedule,
    UniformLoops,
    WindowFamily,
    WindowLadder,
)
from study.models.backbone import Backbone, PolicyRunner
from study.models.backbones import BACKBONES, BackboneError, bind, get_backbone
from study.models.entries.looped_decoder import HaltingWindowRunner, LoopedDecoderRunner, WindowLadderRunner
from study.models.entries.loopformer import LadderRunner, LoopFormerRunner
from study.models.loopformer import LoopFormerForCausalLM
from study.pipeline import EMBEDDED_DIR
from tests.support.helpers_looped import tiny_llama

STUDY_MODELS = Path(__file__).resolve().parents[2] / "study" / "models"
CPU = torch.device("cpu")
WINDOW = WindowFamily(window=(2, 3), strategy="euler")


@pytest.fixture(scope="module")
def loopformer() -> LoopFormerForCausalLM:
    return BACKBONES["loopformer"].load(str(EMBEDDED_DIR), None, CPU)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("llama")
    tiny_llama(0).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def llama(llama_dir: Path) -> nn.Module:
    return BACKBONES["looped_decoder"].load(str(llama_dir), None, CPU)


def test_registry_names_both_backbones() -> None:
    assert list(BACKBONES) == ["loopformer", "looped_decoder"]
    for name, entry in BACKBONES.items():
        assert isinstance(entry, Backbone) and entry.name == name and get_backbone(name) is entry
        for policy_type, runner in entry.runners.items():  # each runner is for a policy of its own backbone
            assert policy_type.backbone == name and issubclass(runner, PolicyRunner)
    with pytest.raises(BackboneError, match="unknown backbone 'gpt2'"):
        get_backbone("gpt2")


def test_loopformer_entry_loads_runs_costs_and_names_its_depth(loopformer) -> None:
    entry = BACKBONES["loopformer"]
    assert isinstance(loopformer, LoopFormerForCausalLM) and not loopformer.training
    assert entry.accepts(loopformer) and entry.depth_symbol == "M"
    assert entry.training_depth(str(EMBEDDED_DIR)) == 8
    entry.check_checkpoint(str(EMBEDDED_DIR))
    ids = torch.randint(0, loopformer.config.vocab_size, (2, 5))
    for policy, runner_type in ((UniformLoops(2), LoopFormerRunner), (StepSchedule((0.5, 0.5)), LoopFormerRunner)):
        runner = bind(loopformer, policy)
        assert type(runner) is runner_type and runner.context_limit == 512
        hidden, executed = runner.hidden(ids)
        assert hidden.shape == (2, 5, loopformer.config.n_embd) and executed.tolist() == [2.0, 2.0]
        assert runner.head(hidden[:, -1]).shape == (2, loopformer.config.vocab_size)
    ladder = bind(loopformer, RungLadder((1, 2), 0.0))
    assert type(ladder) is LadderRunner
    _, cost = ladder.hidden(ids, prompt_lengths=torch.tensor([3, 5]))
    assert cost.tolist() == [3.0, 3.0]  # tau 0 climbs every rung: 1 + 2 loops
    # FLOPs: M * n_layer * (weight matmuls + attention over the context) + the LM head
    c = loopformer.config
    per_block = 2 * (4 * c.n_embd**2 + 2 * c.n_embd * c.intermediate_dim) + 4 * 10.0 * c.n_embd
    assert entry.token_flops(c, UniformLoops(4), 10.0) == 4 * c.n_layer * per_block + 2 * c.n_embd * c.vocab_size
    assert entry.depth_axis(None) == "inference loops (test-time depth)"
    assert any(name.endswith(".attn.c_attn") for name in entry.module_names() or ())  # LoRA targets match these


def test_loopformer_entry_checks_and_trains_at_its_depth(tmp_path: Path) -> None:
    entry = BACKBONES["loopformer"]
    bad = tmp_path / "bad"
    bad.mkdir()
    config = json.loads((EMBEDDED_DIR / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**config, "train_loops": 2.5}))
    with pytest.raises(CheckpointError, match="train_loops must be a positive integer"):
        entry.training_depth(str(bad))
    with pytest.raises(CheckpointError, match="train_loops"):
        entry.check_checkpoint(str(bad))
    with pytest.raises(CheckpointError, match="cannot load checkpoint"):
        entry.load(str(tmp_path / "absent"), None, CPU)
    from trl import SFTTrainer

    assert entry.sft_trainer(UniformLoops(4)) is SFTTrainer
    model = LoopFormerForCausalLM.from_pretrained(EMBEDDED_DIR)
    entry.set_train_depth(model, 4)  # trl calls the model without loop arguments: the config carries M
    assert model.config.train_loops == 4
    adaptive = AdaptiveConfig(taus=[0.0, 0.1], ladder=[2, 4])
    assert [p.id for p in entry.halting_policies(None, adaptive)] == ["ladder-2-4-kl0", "ladder-2-4-kl0.1"]


def test_looped_decoder_entry_loads_runs_costs_and_names_its_depth(llama, llama_dir: Path) -> None:
    entry = BACKBONES["looped_decoder"]
    assert entry.accepts(llama) and entry.depth_symbol == "K" and entry.training_depth(str(llama_dir)) == 1
    entry.check_checkpoint(str(llama_dir))
    ids = torch.randint(0, 1000, (2, 5))
    runner = bind(llama, WINDOW.policy(3))
    assert type(runner) is LoopedDecoderRunner and runner.context_limit == 512
    hidden, executed = runner.hidden(ids)
    assert hidden.shape == (2, 5, 32) and executed.tolist() == [3.0, 3.0]
    halting = bind(llama, HaltingWindow(WINDOW.policy(3).spec, "kl", 0.0))
    assert type(halting) is HaltingWindowRunner
    assert halting.hidden(ids, prompt_lengths=torch.tensor([3, 5]))[1].tolist() == [3.0, 3.0]  # tau 0: K_max
    ladder = bind(llama, WindowLadder((1, 3), 0.0, WINDOW.policy(3).spec))
    assert type(ladder) is WindowLadderRunner and ladder.context_limit == 512
    ladder_hidden, cost = ladder.hidden(ids, prompt_lengths=torch.tensor([3, 5]))
    assert cost.tolist() == [4.0, 4.0] and torch.equal(ladder_hidden, hidden)  # tau 0: K = 3 at 1 + 3 loops
    # FLOPs: 4 layers outside the window once, the 2-layer window K times plus its KV-writing pass
    c = llama.config
    layer = 2 * (2 * 32 * 32 + 2 * 32 * 16) + 2 * 3 * 32 * 64 + 4 * 10.0 * 32
    head = 2 * 32 * c.vocab_size
    assert entry.token_flops(c, WINDOW.policy(3), 10.0) == (4 + (3 + 1) * 2) * layer + head
    assert entry.token_flops(c, WINDOW.policy(1), 10.0) < entry.token_flops(c, WINDOW.policy(3), 10.0)
    # a ladder decodes at most at its top rung: counted there, like a halting window at its K_max
    assert entry.token_flops(c, WindowLadder((1, 3), 0.0, WINDOW.policy(3).spec), 10.0) == entry.token_flops(
        c, WINDOW.policy(3), 10.0
    )
    assert entry.depth_axis(None) == "inference loops (test-time depth)"
    assert entry.module_names() is None  # no LoRA: the looped decoder trains every weight


def test_looped_decoder_entry_trains_through_the_loop(llama) -> None:
    from trl import SFTTrainer

    entry = BACKBONES["looped_decoder"]
    trainer = entry.sft_trainer(WINDOW.policy(2))
    assert issubclass(trainer, SFTTrainer) and trainer is not SFTTrainer
    before = llama.config.to_dict()
    entry.set_train_depth(llama, 2)  # the depth lives in loop_policy.json, never in the weights' config
    assert llama.config.to_dict() == before
    adaptive = AdaptiveConfig(taus=[0.5], k_max=4, rules=["residual", "kl"])
    assert [p.id for p in entry.halting_policies(WINDOW, adaptive)] == [
        "euler-w2-3-K4-decode-full-residual0.5",
        "euler-w2-3-K4-decode-full-kl0.5",
    ]
    both = AdaptiveConfig(taus=[0.0, 0.5], k_max=4, ladder=[1, 2, 4], rules=["kl"])
    assert [p.id for p in entry.halting_policies(WINDOW, both)] == [
        "euler-w2-3-K4-decode-full-kl0", "euler-w2-3-K4-decode-full-kl0.5",
        "ladder-1-2-4-euler-w2-3-decode-full-kl0", "ladder-1-2-4-euler-w2-3-decode-full-kl0.5",
    ]  # fmt: skip
    ladder_only = entry.halting_policies(WINDOW, AdaptiveConfig(taus=[0.1], ladder=[1, 3]))
    assert ladder_only == [WindowLadder((1, 3), 0.1, WINDOW.policy(3).spec)]
    with pytest.raises(BackboneError, match="cannot load a causal LM"):
        entry.load("/nonexistent/folder", None, CPU)


@pytest.mark.parametrize(
    ("model_name", "policy", "message"),
    [
        ("llama", UniformLoops(2), "policy M2 runs on LoopFormer, not on LlamaForCausalLM"),
        ("llama", RungLadder((1, 2), 0.1), "runs on LoopFormer, not on LlamaForCausalLM"),
        ("loopformer", WINDOW.policy(2), "runs on a looped pretrained decoder, not on LoopFormerForCausalLM"),
        ("loopformer", HaltingWindow(WINDOW.policy(2).spec, "kl", 0.1), "runs on a looped pretrained decoder"),
        ("loopformer", WindowLadder((1, 2), 0.1, WINDOW.policy(2).spec), "runs on a looped pretrained decoder"),
    ],
)
def test_bind_refuses_a_policy_of_the_other_backbone(request, model_name: str, policy, message: str) -> None:
    model = request.getfixturevalue(model_name)
    with pytest.raises(BackboneError, match=message):
        bind(model, policy)


def test_bind_refuses_a_policy_no_entry_runs(loopformer) -> None:
    class Unknown(UniformLoops):  # a policy type no runner is registered for
        pass

    with pytest.raises(BackboneError, match="no backbone runs policy"):
        bind(loopformer, Unknown(2))


def test_sft_model_name_names_every_sft_model() -> None:
    assert sft_model_name(8) == "train8"


def _imports(path: Path) -> set[str]:
    """Every ``study.models`` module ``path`` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("study.models"):
            found |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("study.models")}
    return found


def test_models_have_no_import_cycle() -> None:
    """No two modules of ``study.models`` reach each other through imports (lazy ones too)."""
    modules = {}
    for path in STUDY_MODELS.rglob("*.py"):
        parts = path.relative_to(STUDY_MODELS.parent.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {name: _imports(path) & set(modules) - {name} for name, path in modules.items()}

    def reachable(start: str) -> set[str]:
        seen, todo = set(), list(graph[start])
        while todo:
            name = todo.pop()
            if name not in seen:
                seen.add(name)
                todo += graph[name]
        return seen

    cycles = sorted(name for name in graph if name in reachable(name))
    assert not cycles, f"import cycles through {cycles}"
