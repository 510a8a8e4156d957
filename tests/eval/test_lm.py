"""``LoopDepthLM`` against lm-eval's own ``HFLM``: same requests, same numbers at one
plain pass, different ones when the policy loops, for all three request types."""

from __future__ import annotations

import pytest

pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM

from study.eval import LoopDepthLM

QUESTION = "Question: Which gas do plants take in?\nAnswer:"


def request(kind: str, arguments: tuple, doc_id: int = 0, idx: int = 0) -> Instance:
    return Instance(request_type=kind, doc={}, arguments=arguments, idx=idx, metadata=("toy", doc_id, 1))


LOGLIKELIHOOD = [
    request("loglikelihood", (QUESTION, " carbon dioxide"), 0, 0),
    request("loglikelihood", (QUESTION, " oxygen"), 0, 1),
    request(
        "loglikelihood", (QUESTION, " helium gas from the sun and many many other far away stars in the galaxy"), 0, 2
    ),
    request("loglikelihood", ("Question: What melts ice?\nAnswer:", " heat"), 1, 0),
]
ROLLING = [request("loglikelihood_rolling", ("The quick brown fox jumps over the lazy dog. " * 3,))]
GENERATE = [
    request("generate_until", ("Q: Who wrote it?\nA:", {"until": ["\n"], "max_gen_toks": 6})),
    request("generate_until", ("Tell me", {"until": ["\n"], "max_gen_toks": 6}), 1),
]


@pytest.fixture(scope="module")
def plain(tiny_llama_dir):
    return HFLM(pretrained=str(tiny_llama_dir), device="cpu", batch_size=2)


def loopdepth(folder, policy: str) -> LoopDepthLM:
    return LoopDepthLM(pretrained=str(folder), policy=policy, device="cpu", batch_size=2)


def scores(results) -> list[float]:
    return [r[0] if isinstance(r, tuple) else r for r in results]


def test_one_plain_pass_scores_as_hf_and_looping_changes_the_scores(plain, tiny_llama_dir):
    one_pass, looped = loopdepth(tiny_llama_dir, "naive-w1-2-K1"), loopdepth(tiny_llama_dir, "euler-w1-2-K3")
    for method, requests in (("loglikelihood", LOGLIKELIHOOD), ("loglikelihood_rolling", ROLLING)):
        expected = scores(getattr(plain, method)(requests, True))
        assert scores(getattr(one_pass, method)(requests, True)) == pytest.approx(expected, abs=1e-5)
        changed = scores(getattr(looped, method)(requests, True))
        assert all(abs(a - b) > 1e-4 for a, b in zip(changed, expected, strict=True)), method


def test_generation_is_the_policys_cached_greedy_decoding(plain, tiny_llama_dir):
    # cache_strategy "first" writes the window's KV from its input, as the plain model does,
    # so one naive pass decodes token for token as HF's generate
    one_pass = loopdepth(tiny_llama_dir, "naive-w1-2-K1-cache-first")
    expected = plain.generate_until(GENERATE, True)
    assert one_pass.generate_until(GENERATE, True) == expected
    assert loopdepth(tiny_llama_dir, "euler-w1-2-K3-decode-full").generate_until(GENERATE, True) != expected
    with pytest.raises(ValueError, match="greedily"):
        one_pass.generate_until([request("generate_until", ("Hi", {"do_sample": True, "temperature": 0.7}))], True)


def test_halting_records_loops_decided_on_the_context_alone(tiny_llama_dir):
    halting = loopdepth(tiny_llama_dir, "euler-w1-2-K8-residual0.2")
    halting.loglikelihood(LOGLIKELIHOOD, True)
    records = halting.executed_loops
    assert [(r["doc_id"], r["idx"]) for r in records] == [(0, 0), (0, 1), (0, 2), (1, 0)]
    assert {r["policy"] for r in records} == {"euler-w1-2-K8-residual0.2"}
    loops = [r["executed_loops"] for r in records]
    assert all(1 <= k <= 8 for k in loops)
    # the choices of one question share its context, so they share its depth (deciding on
    # the whole row instead would give the long third choice 7 loops, the others 6)
    assert loops[0] == loops[1] == loops[2] < 8


def test_loopformer_runs_its_own_policies(tiny_llama_dir):
    mini = loopdepth("embedded:mini", "M8")
    assert mini.max_length == 512  # LoopFormer's block_size, not HFLM's 2048
    at_train_depth = scores(mini.loglikelihood(LOGLIKELIHOOD, True))
    # the plain LoopFormer forward runs its train_loops (8)
    plain_mini = HFLM(pretrained=str(mini.pretrained), device="cpu", batch_size=2, max_length=512)
    assert at_train_depth == pytest.approx(scores(plain_mini.loglikelihood(LOGLIKELIHOOD, True)), abs=1e-5)
    assert scores(loopdepth("embedded:mini", "M2").loglikelihood(LOGLIKELIHOOD, True)) != pytest.approx(at_train_depth)
    ladder = loopdepth("embedded:mini", "ladder-2-4-8-kl0.01")
    ladder.loglikelihood(LOGLIKELIHOOD, True)
    assert {r["executed_loops"] for r in ladder.executed_loops} <= {2.0, 6.0, 14.0}


@pytest.mark.parametrize(
    ("pretrained", "policy", "says"),
    [
        ("TINY", "M8", "runs on LoopFormer"),
        ("embedded:mini", "euler-w1-2-K3", "runs on a looped pretrained decoder"),
        ("TINY", "euler-w1-9-K3", "outside the model's 4 layers"),
        ("TINY", "euler-w1-2", "policy 'euler-w1-2'"),
        ("embedded:nothing", "M8", "unknown source"),
    ],
)
def test_bad_model_args_are_refused_in_one_line(tiny_llama_dir, pretrained, policy, says):
    with pytest.raises(ValueError, match=says):
        loopdepth(str(tiny_llama_dir) if pretrained == "TINY" else pretrained, policy)


def test_a_loaded_model_and_policy_object_score_as_the_folder_and_id(tiny_llama_dir):
    """The pipeline's benchmarks stage hands over the model its sweep loaded and the policy."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from study.looping.policies import parse_policy

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    policy = parse_policy("euler-w1-2-K3")
    loaded = LoopDepthLM(pretrained=model, tokenizer=tokenizer, policy=policy, batch_size=2)
    assert loaded.model is model and loaded.policy is policy
    expected = scores(loopdepth(tiny_llama_dir, "euler-w1-2-K3").loglikelihood(LOGLIKELIHOOD, True))
    assert scores(loaded.loglikelihood(LOGLIKELIHOOD, True)) == pytest.approx(expected, abs=1e-6)
    with pytest.raises(TypeError, match="tokenizer"):
        LoopDepthLM(pretrained=model, policy=policy)
