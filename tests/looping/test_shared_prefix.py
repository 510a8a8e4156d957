"""The layers before the window, computed once and shared by every K: ``LoopedDecoder.prefix``
+ ``forward_from_prefix`` against the plain looped forward, bit for bit."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from study.looping import LoopSpec, loop_decoder
from study.looping.policies import DepthPolicy, HaltingWindow, LoopedWindow, StepSchedule, UniformLoops
from study.models.backbones import bind, prefix_key
from study.models.entries.looped_decoder import HaltingWindowRunner
from study.scoring import score_continuations, score_continuations_group, score_policies
from study.tasks.gsm8k import EncodedExample
from tests.support.helpers_looped import tiny_llama


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def llama():
    return tiny_llama(0)


def right_padded_batch(seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 1000, (3, 19), generator=generator)
    ids[1, 15:] = 0  # right padding, as the scorer feeds it
    ids[2, 11:] = 0
    return ids


# specs that share layers 0..1 with the prefix's (window start 2), differing in everything else
SHARING = [
    LoopSpec((2, 3), 1, "naive"),
    LoopSpec((2, 3), 4, "euler"),
    LoopSpec((2, 4), 3, "euler", cache_strategy="per_loop", decode_mode="full"),  # another window end
    LoopSpec((2, 3), 3, "anderson", mode="layer"),
    LoopSpec((2, 5), 2, "rk4", cache_strategy="none"),
    LoopSpec((2, 3), 6, "euler", halt_tau=0.2),
]


@torch.inference_mode()
@pytest.mark.parametrize("spec", SHARING, ids=[s.id for s in SHARING])
def test_prefix_then_the_rest_is_the_full_forward_bit_for_bit(llama, spec: LoopSpec) -> None:
    ids = right_padded_batch()
    prefix = loop_decoder(llama, LoopSpec((2, 3), 2, "euler")).prefix(ids)  # computed by another K
    looped = loop_decoder(llama, spec)
    full = looped(ids)
    rest = looped.forward_from_prefix(prefix)
    assert rest.last_hidden_state is not None and full.executed_loops is not None and full.logits is not None
    assert torch.equal(llama.lm_head(rest.last_hidden_state), full.logits)
    assert rest.executed_loops is not None and torch.equal(rest.executed_loops, full.executed_loops)


@torch.inference_mode()
def test_one_prefix_serves_many_decoders_unchanged(llama) -> None:
    ids = right_padded_batch(1)
    prefix = loop_decoder(llama, LoopSpec((2, 3), 1)).prefix(ids)
    kept = prefix.hidden.clone()
    for loops in (3, 1, 5):
        looped = loop_decoder(llama, LoopSpec((2, 3), loops, "euler"))
        rest = looped.forward_from_prefix(prefix).last_hidden_state
        full = looped.base_forward(ids).last_hidden_state
        assert rest is not None and full is not None and torch.equal(rest, full), loops
    assert torch.equal(prefix.hidden, kept)  # no K wrote into the shared states


@torch.inference_mode()
def test_a_prefix_of_another_window_start_or_model_is_refused(llama) -> None:
    prefix = loop_decoder(llama, LoopSpec((2, 3), 2, "euler")).prefix(right_padded_batch())
    with pytest.raises(ValueError, match="another model or window start"):
        loop_decoder(llama, LoopSpec((1, 3), 2, "euler")).forward_from_prefix(prefix)
    with pytest.raises(ValueError, match="another model or window start"):
        loop_decoder(tiny_llama(1), LoopSpec((2, 3), 2, "euler")).forward_from_prefix(prefix)


def test_prefix_key_names_the_window_start_only() -> None:
    def window(spec: LoopSpec) -> LoopedWindow:
        return LoopedWindow(spec)

    key = prefix_key(window(LoopSpec((12, 15), 1, "euler")))
    assert key is not None
    assert prefix_key(window(LoopSpec((12, 14), 8, "naive", cache_strategy="per_loop", decode_mode="full"))) == key
    assert prefix_key(HaltingWindow(LoopSpec((12, 15), 8, "euler"), "kl", 0.01)) == key
    assert prefix_key(window(LoopSpec((11, 15), 1, "euler"))) != key
    assert prefix_key(UniformLoops(4)) is None  # LoopFormer: a uniform depth alone; schedules share their steps
    assert prefix_key(StepSchedule((0.5, 0.5))) == prefix_key(StepSchedule((0.25, 0.75))) not in (None, key)


@torch.inference_mode()
def test_halting_runner_from_the_prefix_is_its_hidden(llama) -> None:
    ids, prompts = right_padded_batch(2), torch.tensor([10, 12, 7])
    fixed = bind(llama, LoopedWindow(LoopSpec((2, 3), 6, "euler")))
    prefix = fixed.prefix(ids)
    for rule, tau in (("residual", 0.16), ("kl", 3e-4)):
        runner = bind(llama, HaltingWindow(LoopSpec((2, 3), 6, "euler"), rule, tau))
        assert isinstance(runner, HaltingWindowRunner)
        hidden, executed = runner.hidden(ids, prompts)
        shared, shared_executed = runner.hidden_from_prefix(prefix, prompts)
        assert torch.equal(shared, hidden) and torch.equal(shared_executed, executed), rule
        assert runner.decision is None  # the prompt decision does not outlive the call
        with pytest.raises(ValueError, match="give prompt_lengths"):
            runner.hidden_from_prefix(prefix)


def examples(count: int = 5) -> list[EncodedExample]:
    generator = torch.Generator().manual_seed(4)
    out = []
    for i in range(count):
        length = 8 + 3 * i
        ids = torch.randint(1, 1000, (length,), generator=generator).tolist()
        out.append(EncodedExample(example_id=100 + i, input_ids=ids, answer_start=length // 2, final_start=length - 2))
    return out


@torch.inference_mode()
def test_group_scores_equal_separate_scores_exactly(llama) -> None:
    policies: list[DepthPolicy] = [LoopedWindow(LoopSpec((2, 3), k, "euler")) for k in (1, 2, 4)]
    policies.append(HaltingWindow(LoopSpec((2, 3), 6, "euler"), "residual", 0.16))
    runners = [bind(llama, policy) for policy in policies]
    grouped = score_continuations_group(runners, examples(), batch_size=2)
    separate = [score_continuations(runner, examples(), batch_size=2) for runner in runners]
    assert grouped == separate  # dataclasses of floats: equal means bit for bit
    assert len({s[0].nll_sum for s in grouped}) == len(policies)  # the depths really differ


@torch.inference_mode()
def test_group_refuses_runners_that_share_nothing(llama) -> None:
    near = bind(llama, LoopedWindow(LoopSpec((2, 3), 2, "euler")))
    for other in (bind(llama, LoopedWindow(LoopSpec((1, 3), 2, "euler"))), bind(tiny_llama(1), near.policy)):
        with pytest.raises(ValueError, match="share no prefix"):
            score_continuations_group([near, other], examples(2), batch_size=2)


@torch.inference_mode()
def test_score_policies_is_the_same_grouped_or_not(llama, monkeypatch: pytest.MonkeyPatch) -> None:
    import study.scoring as scoring

    policies = [LoopedWindow(LoopSpec((2, 3), k, "euler")) for k in (3, 1, 2)]
    policies.append(LoopedWindow(LoopSpec((1, 3), 2, "euler")))  # its own group of one
    groups: list[list[str]] = []
    real = scoring.score_continuations_group

    def spy(runners, *args, **kwargs):
        groups.append([runner.policy.id for runner in runners])
        return real(runners, *args, **kwargs)

    monkeypatch.setattr(scoring, "score_continuations_group", spy)
    grouped = score_policies(llama, policies, examples(), batch_size=3)
    assert groups == [[p.id for p in policies[:3]]]
    separate = score_policies(llama, policies, examples(), batch_size=3, share_prefix=False)
    assert len(groups) == 1  # nothing grouped without share_prefix
    assert list(grouped) == [p.id for p in policies] and grouped == separate
