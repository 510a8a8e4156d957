"""Check stage: sanity gates before any training.

A run whose base model is not really loaded (keys), whose tokenizer is not the
model's, or whose loop conditioning is broken produces numbers that look like
numbers. These gates refuse such a run: the base's NLL per token on a small test
slice must be well below the uniform guess ln|V|, the tokenizer must fit the
embedding and agree on EOS/pad, and the study's sequences must fit the context.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from study.io import atomic_write_json, read_json
from study.models.backbones import bind
from study.pipeline import RunContext, StudyError
from study.scoring import score_continuations
from study.stages.stage import Stage
from study.tasks.gsm8k import encode_example

LIKELY_CAUSES = "likely: weights not loaded, a tokenizer not the model's, or broken loop conditioning"


@dataclass
class Check:
    name: str
    passed: bool
    value: float | int | str | None
    threshold: float | int | str | None
    message: str


def run_checks(ctx: RunContext) -> list[Check]:
    config = ctx.config
    tokenizer = ctx.load_tokenizer()
    model = ctx.load_model(ctx.base_spec)
    # the base at the depth it was trained at (LoopFormer: its train_loops; a looped decoder: K = 1)
    runner = bind(model, ctx.loop_family.policy(ctx.base_spec.train_loops))
    vocab = model.config.vocab_size
    checks: list[Check] = []

    checks.append(
        Check(
            "tokenizer_fits_embedding",
            len(tokenizer) <= vocab,
            len(tokenizer),
            vocab,
            f"tokenizer has {len(tokenizer)} tokens; the model's embedding has {vocab} rows",
        )
    )
    eos_ok = tokenizer.eos_token_id == model.config.eos_token_id
    checks.append(
        Check(
            "eos_ids_agree",
            eos_ok,
            tokenizer.eos_token_id,
            model.config.eos_token_id,
            f"tokenizer EOS id {tokenizer.eos_token_id}, model config eos_token_id {model.config.eos_token_id}",
        )
    )

    block = runner.context_limit
    slices = ("nll_test", "nll_heldout", "nll_seen")
    scored = [encode_example(tokenizer, ex) for name in slices for ex in ctx.examples(name)]
    too_long = sum(len(e.input_ids) > block for e in scored)
    checks.append(
        Check(
            "nll_examples_fit_context",
            too_long == 0,
            max(len(e.input_ids) for e in scored),
            block,
            f"{too_long} of {len(scored)} NLL examples are longer than block_size {block}",
        )
    )
    train = ctx.dataset.split("train")  # every replicate's SFT subset
    sft_lengths = [len(encode_example(tokenizer, train[i]).input_ids) + 1 for i in sorted(ctx.subsets.sft_union)]
    truncated = sum(n > config.sft.max_length for n in sft_lengths)
    checks.append(
        Check(
            "sft_truncation",
            config.sft.max_length <= block,
            truncated,
            config.sft.max_length,
            f"{truncated} of {len(sft_lengths)} SFT examples are truncated to sft.max_length {config.sft.max_length}"
            + ("" if config.sft.max_length <= block else f", which exceeds block_size {block}"),
        )
    )

    if len(tokenizer) <= vocab:  # an out-of-range token id would crash the forward pass
        examples = ctx.examples("nll_test")[: config.checks.examples]
        # the NLL stage's own scorer, so the gate measures exactly what the sweep reports
        with torch.inference_mode():
            scores = score_continuations(
                runner, [encode_example(tokenizer, ex) for ex in examples], config.nll.batch_size
            )
        nll = sum(s.nll_sum for s in scores) / max(sum(s.answer_tokens for s in scores), 1)
        limit = config.checks.max_nll_fraction_of_uniform * math.log(vocab)
        checks.append(
            Check(
                "base_nll_below_uniform",
                bool(nll < limit),
                round(nll, 6),
                round(limit, 6),
                f"base NLL {nll:.3f} nats/token at {runner.policy.id} on {len(examples)} test "
                f"examples; uniform guess ln({vocab}) = {math.log(vocab):.3f}, limit "
                f"{config.checks.max_nll_fraction_of_uniform} x that = {limit:.3f}",
            )
        )
    return checks


def run(ctx: RunContext) -> None:
    checks = run_checks(ctx)
    failed = [c for c in checks if not c.passed]
    atomic_write_json(
        ctx.results_path("checks.json"),
        {"passed": not failed, "skipped": ctx.skip_checks, "checks": [asdict(c) for c in checks]},
    )
    if failed and not ctx.skip_checks:
        raise gate_error([c.message for c in failed])


def gate_error(messages: list[str]) -> StudyError:
    # one line under 300 characters: the first failure in full, the rest are in results/checks.json
    more = f" (+{len(messages) - 1} more in results/checks.json)" if len(messages) > 1 else ""
    return StudyError(
        f"sanity checks failed: {messages[0]}{more}; {LIKELY_CAUSES}. Nothing was trained; --skip-checks goes on anyway"
    )


def recorded_failures(ctx: RunContext) -> list[str] | None:
    """The messages of the failed checks recorded in ``checks.json`` ([] when all
    passed), or None when the file is missing or unreadable (the stage must run again)."""
    try:
        recorded = read_json(ctx.results_path("checks.json"))
        failed = [str(c["message"]) for c in recorded["checks"] if not c["passed"]]
        passed = recorded["passed"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if passed is not True and not failed:
        return None
    return failed


STAGE = Stage(
    name="check",
    run=run,
    sections=("seed", "replicates", "model", "data", "checks", "looping"),
    splits=("train", "test"),
    reads="base",
    main_process_only=True,
    outputs=("results/checks.json",),
)
