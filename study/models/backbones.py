"""The backbone registry: ``BACKBONES`` maps ``model.backbone`` of a config to its entry.

A depth policy is run on a model by ``bind(model, policy)``: the policy's backbone's
entry gives the runner of the policy's type (``PolicyRunner``: ``hidden``, ``head``,
``generate``, ``prefill``, ``context_limit``). The rest of the study asks the entry of
its run (``RunContext.backbone``) instead of branching on which backbone it is.
``prefix_key(policy)`` says, before any model is loaded, which policies' runners share
their first layers (the sweep's cell groups, ``study.stages.sweep``).

What an entry provides (``study.models.backbone.Backbone``; one module under
``study.models.entries``, one line in ``BACKBONES`` below):

- ``name``: the config's ``model.backbone`` and its policies' ``backbone``;
- ``title``: how errors name it; ``depth_symbol``: the letter of its loop count (M, K);
- ``runners``: ``{policy type: PolicyRunner subclass}`` for every policy type it runs;
- ``accepts(model)``: whether a loaded model is one of its models (``bind`` refuses others);
- ``load(source, revision, device)``: a base or SFT checkpoint, fp32, eval mode;
- ``check_checkpoint(source)``: the checks before a run writes anything;
- ``training_depth(source)``: the loop count the base was (pre)trained at;
- ``token_flops(model_config, policy, context)``: analytic FLOPs per generated token;
- ``sft_trainer(policy)`` and ``set_train_depth(model, loops)``: how SFT trains at a depth;
- ``halting_policies(family, adaptive_section)``: the adaptive stage's policies;
- ``depth_axis(looping_section)``: the depth figures' x-axis label;
- ``module_names()`` (optional): module names ``sft.lora.target_modules`` must match.

A third backbone is one new entry module (``study.models.entries.<name>``) and one line
in ``BACKBONES``, plus what only the config and the policies can know: its policy types
and loop family in ``study.looping.policies`` (each with ``backbone = <name>``), its name
in ``ModelConfig.backbone`` and the config file of its study. No stage, nor the pipeline,
the validation or the report, changes.
"""

from __future__ import annotations

from collections.abc import Hashable

from torch import nn

from study.errors import BackboneError
from study.looping.policies import DepthPolicy
from study.models.backbone import Backbone, PolicyRunner
from study.models.entries.looped_decoder import LoopedDecoderBackbone
from study.models.entries.loopformer import LoopFormerBackbone

__all__ = ["BACKBONES", "Backbone", "BackboneError", "PolicyRunner", "bind", "get_backbone", "prefix_key"]

BACKBONES: dict[str, Backbone] = {entry.name: entry for entry in (LoopFormerBackbone(), LoopedDecoderBackbone())}


def get_backbone(name: str) -> Backbone:
    """The entry of ``name`` (a config's ``model.backbone``)."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise BackboneError(f"unknown backbone {name!r} (known: {', '.join(BACKBONES)})") from None


def prefix_key(policy: DepthPolicy) -> Hashable | None:
    """What the first layers of ``policy``'s runner depend on, or None when they share
    nothing with other policies: runners of one model with equal keys share their
    ``prefix`` of a batch (``PolicyRunner.prefix_key``). No model is needed."""
    backbone = BACKBONES.get(policy.backbone)
    runner = None if backbone is None else backbone.runners.get(type(policy))
    return None if runner is None else runner.prefix_key(policy)


def bind(model: nn.Module, policy: DepthPolicy) -> PolicyRunner:
    """``model`` run at ``policy``: the runner the policy's backbone gives for its type.
    Refuses a model of another backbone (e.g. a LoopFormer policy on a Llama)."""
    backbone = BACKBONES.get(policy.backbone)
    runner = None if backbone is None else backbone.runners.get(type(policy))
    if backbone is None or runner is None:
        raise BackboneError(f"no backbone runs policy {policy!r}")
    if not backbone.accepts(model):
        raise BackboneError(f"policy {policy.id} runs on {backbone.title}, not on {type(model).__name__}")
    return runner(model, policy)
