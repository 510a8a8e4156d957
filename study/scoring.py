"""The continuation scorer: teacher-forced NLL of each example's gold solution.

Scoring follows lm-eval's ``loglikelihood``: each continuation token is scored by the
logits at the position before it. lm-eval 0.4 encodes prompt + continuation as one
string and splits the ids at the prompt's token count; ``encode_example`` encodes the
prompt, the solution and the final answer separately and joins them. On GSM8K both
give the same ids, because every piece after the prompt starts with a space (``" {answer}"``,
``"#### 18"`` split before ``" 18"``) and byte-level BPE never merges across that
boundary: checked on all 8,792 bundled records with GPT-2's tokenizer and the mini
model's (``tests/tasks/test_gsm8k.py`` keeps a sample of it). Two targets per example: the
whole solution (tokens from ``answer_start``) and the final answer alone (from ``final_start``).

- ``score_continuations``: any backbone at any depth policy (a ``PolicyRunner``), or a
  LoopFormer at a schedule or loop count; what the NLL, check, bench and pilot tools score.
- ``score_continuations_group``: several policies of one model that share their first
  layers (every K of a looped decoder's window), those layers computed once per batch;
  ``score_policies``: a whole sweep of one model, grouped or not (same scores).
- ``score_trace``: every step a family of halting policies may stop at (its trace runner),
  scored as ``score_continuations`` scores each of those policies, with the signals.
- ``score_decoding``: the gold solution fed through the decoding path token by token
  (``PolicyRunner.forced_decode``): what a policy that halts per generated token scores
  (the latency stage's quality); at a fixed depth it equals ``score_continuations``.
- ``right_pad``, ``length_batches`` and ``gold_token_nll``: its pieces, for a forward
  that is not a runner's (the training-free looping table of ``study.pilot``).

Deterministic for a given input on CPU: fixed batching, float64 sums.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from study.looping.policies import DepthPolicy, StepSchedule, UniformLoops
from study.models.backbones import PolicyRunner, bind, prefix_key
from study.tasks.gsm8k import EncodedExample


@dataclass(frozen=True)
class ContinuationScore:
    example_id: int
    answer_tokens: int  # tokens of the whole gold solution
    nll_sum: float  # their summed NLL (nats)
    final_tokens: int  # tokens of the final answer (after '####')
    final_nll_sum: float
    executed_loops: float = 0.0  # loops the policy ran for this example (its own count for a halting rule)


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, longest first (so an out-of-memory
    batch fails at once, not at the end); ties keep input order, so batching is fixed."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def fit_to_window(example: EncodedExample, block_size: int) -> EncodedExample:
    """The last ``block_size + 1`` tokens, as lm-eval truncates: the final token is only
    ever a target, so a window of ``block_size`` inputs scores ``block_size + 1`` tokens.
    Only over-long sequences lose their earliest (prompt) tokens."""
    cut = len(example.input_ids) - (block_size + 1)
    if cut <= 0:
        return example
    return EncodedExample(
        example.example_id,
        example.input_ids[cut:],
        max(example.answer_start - cut, 1),
        max(example.final_start - cut, 1),
    )


def right_pad(rows: Sequence[EncodedExample]) -> tuple[Tensor, Tensor]:
    """(input_ids, attention_mask) [B, T] of the rows without their last token (it only
    ever is a target), padded on the right with token 0 (mask 0)."""
    width = max(len(e.input_ids) for e in rows) - 1
    input_ids = torch.zeros((len(rows), width), dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, example in enumerate(rows):
        input_ids[r, : len(example.input_ids) - 1] = torch.tensor(example.input_ids[:-1])
        attention_mask[r, : len(example.input_ids) - 1] = 1
    return input_ids, attention_mask


def gold_token_nll(hidden: Tensor, head: Callable[[Tensor], Tensor], rows: Sequence[EncodedExample]) -> list[Tensor]:
    """Each row's per-token NLL of its continuation, float64 on the CPU.

    ``hidden`` [B, T, H] is the forward of ``right_pad(rows)``. Token t (t >= answer_start)
    is predicted by the hidden state at t - 1, so only those positions go through the
    LM ``head``, and padded positions are never gathered."""
    device = hidden.device
    counts = [len(e.input_ids) - e.answer_start for e in rows]
    row_index = torch.cat([torch.full((count,), r) for r, count in enumerate(counts)])
    positions = torch.cat([torch.arange(e.answer_start - 1, len(e.input_ids) - 1) for e in rows])
    targets = torch.cat([torch.tensor(e.input_ids[e.answer_start :]) for e in rows])
    logits = head(hidden[row_index.to(device), positions.to(device)])  # [tokens, V]
    token_nll = F.cross_entropy(logits.float(), targets.to(device), reduction="none").double().cpu()
    return list(token_nll.split(counts))


def loopformer_policy(model: Any, schedule: Sequence[float] | None, num_loops: int | None) -> DepthPolicy:
    """The policy of LoopFormer's ``schedule``/``num_loops`` arguments (its train_loops when neither)."""
    if schedule is not None:
        return StepSchedule(tuple(schedule))
    # neither: the model's own default depth (stand-in models without one loop once)
    return UniformLoops(num_loops if num_loops is not None else int(getattr(model.config, "train_loops", 1)))


@torch.inference_mode()
def score_continuations(
    model: Any,
    examples: Sequence[EncodedExample],
    batch_size: int,
    schedule: Sequence[float] | None = None,
    num_loops: int | None = None,
    progress: Callable[..., Any] | None = None,
) -> list[ContinuationScore]:
    """Summed NLL of each example's solution and final answer, in input order.

    ``model`` is a ``PolicyRunner`` (any backbone at any depth policy) or a LoopFormer
    run at ``schedule``/``num_loops``. ``progress(total=..., desc=...)`` may give a bar
    over the examples.

    Batches are right-padded and passed *without* an attention mask: attention is
    causal, so a real token never sees the padding after it, positions are plain
    ``arange`` as for an unpadded row, and SDPA keeps its fused causal kernel. The
    padded positions are never gathered, so padding is never scored. Only the
    positions that predict continuation tokens go through the LM head, and the last
    token, which predicts nothing, is not fed at all."""
    runner = model if isinstance(model, PolicyRunner) else bind(model, loopformer_policy(model, schedule, num_loops))
    device = runner.device
    examples = [fit_to_window(e, runner.context_limit) for e in examples]
    scores: list[ContinuationScore | None] = [None] * len(examples)
    bar = progress(total=len(examples), desc="examples", inner=True) if progress is not None else None
    for batch in length_batches([len(e.input_ids) for e in examples], batch_size):
        rows = [examples[i] for i in batch]
        input_ids, _ = right_pad(rows)
        prompt_lengths = torch.tensor([e.answer_start for e in rows])  # a halting policy decides from these
        hidden, executed = runner.hidden(input_ids.to(device), prompt_lengths)  # [B, T, H], [B]
        _store_batch(scores, batch, rows, gold_token_nll(hidden, runner.head, rows), executed)
        if bar is not None:
            bar.update(len(rows))
    if bar is not None:
        bar.close()
    return scores  # type: ignore[return-value]


@torch.inference_mode()
def score_continuations_group(
    runners: Sequence[PolicyRunner],
    examples: Sequence[EncodedExample],
    batch_size: int,
    progress: Callable[..., Any] | None = None,
) -> list[list[ContinuationScore]]:
    """``score_continuations`` of every runner (one list of scores per runner, in order),
    with the layers they share computed once per batch.

    The runners must run one model at policies of one ``prefix_key`` (e.g. every K of a
    looped decoder's window): each batch, the same as ``score_continuations`` forms, goes
    through ``prefix`` once, and each runner finishes it with ``hidden_from_prefix``.
    The prefix states are exactly those each runner would compute, and the rest runs
    the same operations on them, so the scores equal separate calls bit for bit
    (``tests/stages/test_cell_groups.py``). Only one batch's prefix is held at a time."""
    if not runners:
        return []
    first = runners[0]
    key = first.prefix_key(first.policy)
    for runner in runners:
        if runner.model is not first.model or key is None or runner.prefix_key(runner.policy) != key:
            raise ValueError(
                f"policies {first.policy.id} and {runner.policy.id} share no prefix on one model (score them apart)"
            )
    device = first.device
    examples = [fit_to_window(e, first.context_limit) for e in examples]  # one model: one context limit
    scores: list[list[ContinuationScore | None]] = [[None] * len(examples) for _ in runners]
    bar = progress(total=len(examples), desc="examples", inner=True) if progress is not None else None
    for batch in length_batches([len(e.input_ids) for e in examples], batch_size):
        rows = [examples[i] for i in batch]
        input_ids, _ = right_pad(rows)
        prompt_lengths = torch.tensor([e.answer_start for e in rows])
        prefix = first.prefix(input_ids.to(device))  # [B, T, H] states after the shared layers
        for runner, runner_scores in zip(runners, scores, strict=True):
            hidden, executed = runner.hidden_from_prefix(prefix, prompt_lengths)  # [B, T, H], [B]
            _store_batch(runner_scores, batch, rows, gold_token_nll(hidden, runner.head, rows), executed)
        del prefix  # before the next batch's: one batch's prefix at a time
        if bar is not None:
            bar.update(len(rows))
    if bar is not None:
        bar.close()
    return scores  # type: ignore[return-value]


def score_policies(
    model: Any,
    policies: Sequence[DepthPolicy],
    examples: Sequence[EncodedExample],
    batch_size: int,
    share_prefix: bool = True,
    progress: Callable[..., Any] | None = None,
) -> dict[str, list[ContinuationScore]]:
    """Scores of ``model`` at each policy, by policy id: the NLL sweep of one model and
    split outside the stage (e.g. a benchmark of it). With ``share_prefix``, policies
    of one ``prefix_key`` are scored together (``score_continuations_group``), the
    others one at a time; without it every policy is scored on its own, as separate
    sweep cells are. Both give the same scores bit for bit."""
    groups: dict[Hashable, list[DepthPolicy]] = {}
    for policy in policies:
        key = prefix_key(policy) if share_prefix else None
        groups.setdefault(policy.id if key is None else key, []).append(policy)
    by_id: dict[str, list[ContinuationScore]] = {}
    for group in groups.values():
        runners = [bind(model, policy) for policy in group]
        if len(runners) == 1 or prefix_key(group[0]) is None:
            values = [score_continuations(runner, examples, batch_size, progress=progress) for runner in runners]
        else:
            values = score_continuations_group(runners, examples, batch_size, progress=progress)
        by_id.update({policy.id: value for policy, value in zip(group, values, strict=True)})
    return {policy.id: by_id[policy.id] for policy in policies}


@torch.inference_mode()
def score_decoding(
    runner: PolicyRunner, examples: Sequence[EncodedExample], progress: Callable[..., Any] | None = None
) -> list[ContinuationScore]:
    """Each example's gold-solution NLL as decoding computes it, one example at a time
    (batch 1, as the latency stage times generation): the prompt prefilled, then every
    solution token fed back in place of the greedy one, so a halting policy halts each
    token as it would while generating. ``executed_loops``: the mean loops of the fed
    tokens (the prompt's prefill and the first solution token's prediction run at the
    policy's full depth; an example with a one-token solution feeds none: its depth)."""
    examples = [fit_to_window(e, runner.context_limit) for e in examples]
    scores: list[ContinuationScore | None] = [None] * len(examples)
    bar = progress(total=len(examples), desc="examples", inner=True) if progress is not None else None
    for index, example in enumerate(examples):
        input_ids = torch.tensor([example.input_ids], device=runner.device)  # [1, T]
        logits, loops = runner.forced_decode(input_ids, example.answer_start)  # [T - P, V]
        targets = input_ids[0, example.answer_start :]
        token_nll = F.cross_entropy(logits.float(), targets, reduction="none").double().cpu()
        executed = sum(loops) / len(loops) if loops else float(runner.policy.inference_loops)
        _store_batch(scores, [index], [example], [token_nll], torch.tensor([executed], dtype=torch.float64))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return scores  # type: ignore[return-value]


def _store_batch(
    scores: list[ContinuationScore | None],
    batch: Sequence[int],
    rows: Sequence[EncodedExample],
    token_nll: Sequence[Tensor],
    executed: Tensor,
) -> None:
    """Each row's scores at its index in ``scores`` (``token_nll``: its per-token NLL)."""
    for r, (example, index, nll) in enumerate(zip(rows, batch, token_nll, strict=True)):
        final_from = example.final_start - example.answer_start
        scores[index] = ContinuationScore(
            example_id=example.example_id,
            answer_tokens=len(nll),
            nll_sum=float(nll.sum()),
            final_tokens=len(nll) - final_from,
            final_nll_sum=float(nll[final_from:].sum()),
            executed_loops=float(executed[r]),
        )


@dataclass(frozen=True)
class TracedScore:
    """One example at one step of a halting trace (``study.looping.policies.HaltingTrace``)."""

    step: int  # 0-based index of the step
    depth: int  # the step's depth (rung M, window step k)
    example_id: int
    executed_loops: float  # the loops paid to stop here
    # its scores there; None where the trace leaves the NLL to the fixed-depth sweep at ``depth``
    # (a looped decoder's ladder: the rung is ``LoopedWindow(depth)``, already in nll.csv)
    score: ContinuationScore | None
    signals: dict[str, float | None]  # rule -> its signal at this step (None: none here)


@torch.inference_mode()
def score_trace(
    runner: Any, examples: Sequence[EncodedExample], batch_size: int, progress: Callable[..., Any] | None = None
) -> list[list[TracedScore]]:
    """Each example's scores at every step of a halting trace, in input order: the same
    batches, forwards and head calls as ``score_continuations`` of each halting policy
    the trace serves, so a policy's scores read off it are that policy's, bit for bit.
    ``runner`` is a trace runner (``trace(input_ids, prompt_lengths)`` yields its steps).
    A step without hidden states (``TraceStep.hidden`` None) has no scores here: its
    NLL is the fixed-depth sweep's at its depth (the caller reads it from there)."""
    device = runner.device
    examples = [fit_to_window(e, runner.context_limit) for e in examples]
    traced: list[list[TracedScore]] = [[] for _ in examples]
    bar = progress(total=len(examples), desc="examples", inner=True) if progress is not None else None
    for batch in length_batches([len(e.input_ids) for e in examples], batch_size):
        rows = [examples[i] for i in batch]
        input_ids, _ = right_pad(rows)
        prompt_lengths = torch.tensor([e.answer_start for e in rows])
        for step, found in enumerate(runner.trace(input_ids.to(device), prompt_lengths)):
            scores: list[ContinuationScore | None] = [None] * len(rows)
            if found.hidden is not None:
                token_nll = gold_token_nll(found.hidden, runner.head, rows)
                _store_batch(scores, range(len(rows)), rows, token_nll, found.executed)
            for r, (index, example, score) in enumerate(zip(batch, rows, scores, strict=True)):
                signals = {rule: None if value is None else float(value[r]) for rule, value in found.signals.items()}
                executed = float(found.executed[r])
                traced[index].append(TracedScore(step, found.depth, example.example_id, executed, score, signals))
        if bar is not None:
            bar.update(len(rows))
    if bar is not None:
        bar.close()
    return traced
