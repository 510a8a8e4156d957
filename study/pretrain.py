"""Pretrain the tiny embedded LoopFormer shipped in ``study/assets/mini-base``.

The released base (``armenjeddi/LoopFormer-3block-8iterations``, 0.28B) cannot be
downloaded offline, so the ``mini`` study runs on a LoopFormer small enough for two
CPU cores, pretrained here from scratch with LoopFormer's elastic-depth recipe:

- tokenizer: a byte-level BPE trained (single-threaded, so deterministic) on the
  pretraining text, with ``<|endoftext|>`` as id 0 serving as BOS, EOS and PAD;
- data: the bundled GSM8K *train* split minus the SFT subset of the study seed 2026
  (``make_subsets(..., seed=2026, sft_examples=512)``), never the test split; one
  example per row, ``prompt + completion + EOS``, starting at position 0 exactly as
  the study scores it (learned absolute positions make that matter);
- each step runs the full route (8 steps of 1/8) and one random shorter route (L in
  1..7 steps, each a positive multiple of 1/8, summing to 1) and minimises
  ``CE(full) + 0.1 CE(short) + 0.1 MSE(h_short, stopgrad(h_full))`` where h is the
  final hidden state (after the last RMSNorm, what the tied LM head reads);
- AdamW, linear warmup then cosine decay, fp32, seeded and deterministic on CPU; the
  model's own init except the embeddings, kept at the released model's norm (see
  ``build_model``).

    python -m study.pretrain --out study/assets/mini-base

regenerates the checkpoint (weights, config, tokenizer) bit for bit with the same
torch build; only the wall-time line of the model card varies.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import random
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast, set_seed

from study.models.loopformer import LoopFormerConfig, LoopFormerForCausalLM
from study.tasks.gsm8k import Dataset, Example, encode_example, load_gsm8k, sft_subset

EOS = "<|endoftext|>"
# The SFT subset the default study fine-tunes on: seed 2026 (configs/mini.yaml), 512
# examples. Another study seed draws another subset, which may overlap this pretraining
# data; the model card says so.
SFT_SEED = 2026
SFT_EXAMPLES = 512
IGNORE = -100  # label of padded positions, as in LoopFormerForCausalLM's loss
LABEL = "tiny embedded LoopFormer (not the released model)"
REPORT_LOOPS = (1, 2, 4, 8, 12, 16)
RELEASED_N_EMBD = 2048  # width of armenjeddi/LoopFormer-3block-8iterations
ROUND_TRIP_SAMPLE = "Question: Ann has 3 pens and buys 12 more.\nAnswer: 3 + 12 = <<3+12=15>>15 pens.\n#### 15"


@dataclass(frozen=True)
class PretrainConfig:
    # model: k=3 shared blocks like the released model, everything else shrunk for CPU
    vocab_size: int = 2048
    n_embd: int = 64
    n_head: int = 4
    n_layer: int = 3
    intermediate_dim: int = 192
    block_size: int = 512
    train_loops: int = 8
    # optimisation
    steps: int = 900
    batch_size: int = 8  # sequences (examples) per step: many small steps suit this tiny budget
    learning_rate: float = 3e-3
    min_lr_ratio: float = 0.1  # cosine decays to learning_rate * min_lr_ratio
    warmup_steps: int = 50
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    short_weight: float = 0.1  # CE of the random short route
    mse_weight: float = 0.1  # MSE between the short and the (stop-grad) full route's final hidden
    seed: int = 2026
    # torch intra-op threads (the weights do not depend on it: 1 and 2 checked). One, because on a
    # shared 2-core machine two OpenMP threads stall behind other jobs (seconds per step, not 0.7)
    threads: int = 1
    # data and reporting
    max_train_examples: int | None = None  # a prefix of the pretraining examples (tests)
    eval_examples: int = 256  # GSM8K test examples scored after training (evaluation only)
    eval_loops: tuple[int, ...] = REPORT_LOOPS
    log_every: int = 25


@dataclass
class PretrainResult:
    model: LoopFormerForCausalLM
    tokenizer: PreTrainedTokenizerFast
    config: PretrainConfig
    train_examples: int
    train_tokens: int
    parameters: int
    log: list[dict[str, float]] = field(default_factory=list)
    test_nll: dict[int, float] = field(default_factory=dict)  # loops -> NLL per token
    test_examples: int = 0  # how many GSM8K test examples test_nll averages over
    baselines: dict[str, float] = field(default_factory=dict)  # count-based NLL/token on the same tokens
    seconds: float = 0.0


# ---- data ----------------------------------------------------------------------------
def pretraining_examples(dataset: Dataset) -> list[Example]:
    """GSM8K train minus the seed-2026 SFT subset; a train question that also appears
    in test (none in the bundled copy) is dropped too, so no test text is ever seen."""
    sft = set(sft_subset(dataset, SFT_SEED, SFT_EXAMPLES))
    test_questions = {example.question for example in dataset.test}
    return [e for e in dataset.train if e.id not in sft and e.question not in test_questions]


@contextmanager
def _single_threaded_tokenizers() -> Iterator[None]:
    # BPE training counts pairs in parallel; one thread makes the merge order reproducible
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = previous


def train_tokenizer(texts: Sequence[str], vocab_size: int, block_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE (GPT-2 style: no unknown tokens, no prefix space) with EOS as id 0."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],  # first, so it gets id 0
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: any text encodes
        min_frequency=2,
        show_progress=False,
    )
    with _single_threaded_tokenizers():
        tokenizer.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=EOS,
        eos_token=EOS,
        pad_token=EOS,
        model_max_length=block_size,
        clean_up_tokenization_spaces=False,  # decode must give back the exact text
    )
    fast.padding_side = "right"
    check_round_trip(fast, texts[:8])
    return fast


def check_round_trip(tokenizer, texts: Sequence[str]) -> None:
    if tokenizer.convert_tokens_to_ids(EOS) != 0:
        raise RuntimeError(f"{EOS} must be id 0, got {tokenizer.convert_tokens_to_ids(EOS)}")
    for text in texts:
        decoded = tokenizer.decode(tokenizer.encode(text, add_special_tokens=False))
        if decoded != text:
            raise RuntimeError(f"tokenizer does not round-trip {text[:60]!r}: got {decoded[:60]!r}")


def encode_for_training(tokenizer, examples: Sequence[Example], block_size: int) -> list[list[int]]:
    """Token ids of prompt + completion + EOS, split exactly as the study scores them
    (``encode_example``); the few longer than ``block_size`` are truncated."""
    return [[*encode_example(tokenizer, e).input_ids, tokenizer.eos_token_id][:block_size] for e in examples]


def pad_batch(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (input_ids, labels); padded labels are ignored. No attention mask is
    needed: attention is causal, so pads after a sequence never reach its tokens."""
    length = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    labels = torch.full((len(sequences), length), IGNORE, dtype=torch.long)
    for row, sequence in enumerate(sequences):
        input_ids[row, : len(sequence)] = torch.tensor(sequence)
        labels[row, : len(sequence)] = torch.tensor(sequence)
    return input_ids, labels


def batches(lengths: Sequence[int], batch_size: int, rng: np.random.Generator) -> Iterator[list[int]]:
    """Endless batches of example indices, epoch after epoch. Each epoch shuffles, sorts
    windows of 32 batches by length (so a batch pads little) and shuffles batch order."""
    while True:
        order = rng.permutation(len(lengths))
        window = batch_size * 32
        epoch: list[list[int]] = []
        for start in range(0, len(order), window):
            chunk = sorted(order[start : start + window].tolist(), key=lambda i: (lengths[i], i))
            epoch += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
        for index in rng.permutation(len(epoch)):
            yield epoch[index]


# ---- the elastic-depth objective ----------------------------------------------------------
def sample_short_route(rng: random.Random, train_loops: int = 8) -> list[float]:
    """A random route shorter than the full one: L ~ U{1..train_loops-1} steps whose sizes
    are positive multiples of 1/train_loops summing to 1 (a uniform random composition of
    train_loops into L parts: L-1 distinct cut points among the train_loops-1 inner ones)."""
    length = rng.randint(1, train_loops - 1)
    cuts = sorted(rng.sample(range(1, train_loops), length - 1))
    bounds = [0, *cuts, train_loops]
    return [(end - start) / train_loops for start, end in itertools.pairwise(bounds)]


def run_route(
    model: LoopFormerForCausalLM, input_ids: torch.Tensor, schedule: Sequence[float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, final hidden state after the last RMSNorm) of one route."""
    hidden = model.gpt(input_ids, schedule=schedule, use_cache=False).last_hidden_state
    return model.lm_head(hidden), hidden


def next_token_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross entropy over counted labels (the model's own loss convention)."""
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=IGNORE)


@dataclass
class LossParts:
    total: torch.Tensor
    ce_full: torch.Tensor
    ce_short: torch.Tensor
    mse: torch.Tensor


LOSS_NAMES = ("total", "ce_full", "ce_short", "mse")


def elastic_loss(
    full_logits: torch.Tensor,
    full_hidden: torch.Tensor,
    short_logits: torch.Tensor,
    short_hidden: torch.Tensor,
    labels: torch.Tensor,
    short_weight: float = 0.1,
    mse_weight: float = 0.1,
) -> LossParts:
    """CE(full) + short_weight CE(short) + mse_weight MSE(short hidden, stopgrad(full hidden)).
    The full route is the teacher: the MSE pulls the short route towards it, never the
    reverse, so the full route is trained by its own CE alone."""
    ce_full = next_token_ce(full_logits, labels)
    ce_short = next_token_ce(short_logits, labels)
    real = labels != IGNORE  # real-token positions (pads carry no signal)
    squared = (short_hidden - full_hidden.detach()).pow(2).mean(dim=-1)
    mse = squared[real].mean()
    total = ce_full + short_weight * ce_short + mse_weight * mse
    return LossParts(total, ce_full, ce_short, mse)


def learning_rate(step: int, config: PretrainConfig) -> float:
    """Linear warmup to the peak, then cosine down to ``min_lr_ratio`` of it at the last step."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - 1 - config.warmup_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return config.learning_rate * (config.min_lr_ratio + (1.0 - config.min_lr_ratio) * cosine)


def make_optimizer(model: torch.nn.Module, config: PretrainConfig) -> torch.optim.AdamW:
    # nanoGPT's split: decay matrices and embeddings, not biases (the tied head appears once)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.learning_rate, betas=(0.9, 0.95), eps=1e-8)


def build_model(config: PretrainConfig) -> LoopFormerForCausalLM:
    """A fresh LoopFormer with the model's own init, except the embeddings (see below)."""
    model_config = LoopFormerConfig(
        block_size=config.block_size,
        vocab_size=config.vocab_size,
        n_layer=config.n_layer,
        n_head=config.n_head,
        n_embd=config.n_embd,
        intermediate_dim=config.intermediate_dim,
        train_loops=config.train_loops,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    model = LoopFormerForCausalLM(model_config)
    # The released init (std 0.02 at width 2048) gives embedding vectors of norm ~0.9; at a
    # tiny width the same std gives ~0.16, and the near-constant vector that 8 loops of the
    # shared blocks add to the residual stream drowns the token signal: in 150-step trials the
    # 8-loop CE stayed near the unigram level (~6.2 nats) with std 0.02 but reached ~5.4 with
    # the released norm kept (std 0.02 * sqrt(2048 / n_embd)), as a 1-loop route does.
    std = 0.02 * math.sqrt(RELEASED_N_EMBD / config.n_embd)
    with torch.no_grad():
        model.gpt.transformer.wte.weight.normal_(0.0, std)  # also the tied LM head
        model.gpt.transformer.wpe.weight.normal_(0.0, std)
    return model


# ---- evaluation -------------------------------------------------------------------------
@torch.no_grad()
def nll_per_token(
    model: LoopFormerForCausalLM,
    tokenizer,
    examples: Sequence[Example],
    num_loops: int,
    batch_size: int = 32,
) -> float:
    """Mean NLL per predicted token of prompt + gold answer (every token after the first)."""
    was_training = model.training
    model.eval()
    block = model.config.block_size
    sequences = [encode_example(tokenizer, e).input_ids[:block] for e in examples]
    total, count = 0.0, 0
    for start in range(0, len(sequences), batch_size):
        input_ids, labels = pad_batch(sequences[start : start + batch_size], tokenizer.pad_token_id)
        logits = model(input_ids, num_loops=num_loops, use_cache=False).logits
        targets = labels[:, 1:].reshape(-1)
        total += F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), targets, ignore_index=IGNORE, reduction="sum"
        ).item()
        count += int((targets != IGNORE).sum())
    model.train(was_training)
    return total / count


# ---- training ---------------------------------------------------------------------------
@contextmanager
def deterministic(config: PretrainConfig) -> Iterator[None]:
    """Seeded, deterministic kernels and a fixed thread count; the process's previous
    settings come back afterwards (tests call ``pretrain`` in a shared process)."""
    previous = (torch.are_deterministic_algorithms_enabled(), torch.get_num_threads())
    set_seed(config.seed, deterministic=True)  # python, numpy, torch; deterministic kernels
    torch.set_num_threads(config.threads)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0])
        torch.set_num_threads(previous[1])


def pretrain(config: PretrainConfig, dataset: Dataset | None = None, verbose: bool = True) -> PretrainResult:
    """Tokenizer, then ``config.steps`` elastic-depth steps, then the held-out NLL."""
    with deterministic(config):
        return _pretrain(config, dataset or load_gsm8k("bundled"), verbose)


def _pretrain(config: PretrainConfig, dataset: Dataset, verbose: bool) -> PretrainResult:
    started = time.perf_counter()
    say = print if verbose else (lambda *args, **kwargs: None)
    examples = pretraining_examples(dataset)[: config.max_train_examples]
    texts = [e.prompt + e.completion for e in examples]
    tokenizer = train_tokenizer(texts, config.vocab_size, config.block_size)
    if len(tokenizer) != config.vocab_size:
        raise RuntimeError(f"tokenizer has {len(tokenizer)} tokens, expected {config.vocab_size}")
    sequences = encode_for_training(tokenizer, examples, config.block_size)
    lengths = [len(s) for s in sequences]
    say(
        f"data: {len(examples)} GSM8K train examples (train minus the seed-{SFT_SEED} SFT subset), "
        f"{sum(lengths)} tokens, {sum(len(t) for t in texts) / sum(lengths):.2f} chars/token"
    )

    model = build_model(config)
    model.train()
    parameters = sum(p.numel() for p in model.parameters())
    say(f"model: {parameters:,} parameters, {config.n_layer} shared blocks, {config.train_loops} train loops")
    optimizer = make_optimizer(model, config)
    data_rng = np.random.default_rng(config.seed)
    route_rng = random.Random(config.seed)  # its own stream: routes do not depend on the batching
    stream = batches(lengths, config.batch_size, data_rng)
    full_route = [1.0 / config.train_loops] * config.train_loops
    result = PretrainResult(model, tokenizer, config, len(examples), sum(lengths), parameters)

    tokens_seen, last_log = 0, time.perf_counter()
    window: list[LossParts] = []  # the steps since the last log line, averaged (one batch is noisy)
    for step in range(config.steps):
        lr = learning_rate(step, config)
        for group in optimizer.param_groups:
            group["lr"] = lr
        input_ids, labels = pad_batch([sequences[i] for i in next(stream)], tokenizer.pad_token_id)
        short_route = sample_short_route(route_rng, config.train_loops)
        full_logits, full_hidden = run_route(model, input_ids, full_route)
        short_logits, short_hidden = run_route(model, input_ids, short_route)
        parts = elastic_loss(
            full_logits, full_hidden, short_logits, short_hidden, labels, config.short_weight, config.mse_weight
        )
        optimizer.zero_grad(set_to_none=True)
        parts.total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        tokens_seen += int((labels != IGNORE).sum())
        window.append(LossParts(*(t.detach() for t in (parts.total, parts.ce_full, parts.ce_short, parts.mse))))
        if (step + 1) % config.log_every == 0 or step + 1 == config.steps:
            now = time.perf_counter()
            # in the first epoch every batch is unseen, so these are held-out estimates too
            entry = {
                "step": step + 1,
                **{name: torch.stack([getattr(p, name) for p in window]).mean().item() for name in LOSS_NAMES},
                "lr": lr,
                "epoch": tokens_seen / sum(lengths),
            }
            result.log.append(entry)
            say(
                f"step {step + 1:5d}/{config.steps}  loss {entry['total']:.4f}  ce_full {entry['ce_full']:.4f}  "
                f"ce_short {entry['ce_short']:.4f}  mse {entry['mse']:.4f}  lr {lr:.2e}  "
                f"epoch {entry['epoch']:.2f}  {(now - last_log) / len(window):.2f}s/step",
                flush=True,
            )
            window, last_log = [], now

    model.eval()
    result.seconds = time.perf_counter() - started
    say(f"pretraining took {result.seconds / 60:.1f} min")
    held_out = dataset.test[: config.eval_examples]  # evaluation only: never in the training data
    result.test_examples = len(held_out)
    for loops in config.eval_loops:
        result.test_nll[loops] = nll_per_token(model, tokenizer, held_out, loops)
    say(
        f"held-out NLL/token on {len(held_out)} GSM8K test examples (ln vocab = {math.log(config.vocab_size):.3f}): "
        + ", ".join(f"{loops} loops {nll:.3f}" for loops, nll in result.test_nll.items())
    )
    test_sequences = [encode_example(tokenizer, e).input_ids[: config.block_size] for e in held_out]
    result.baselines = count_baselines(sequences, test_sequences, config.vocab_size)
    say(
        "for scale, count-based models of the pretraining tokens: "
        + ", ".join(f"{name} {nll:.3f}" for name, nll in result.baselines.items())
    )
    return result


def count_baselines(train: Sequence[Sequence[int]], test: Sequence[Sequence[int]], vocab: int) -> dict[str, float]:
    """NLL per token of add-1/2 unigram and bigram models on the tokens ``nll_per_token``
    scores: a yardstick that says how much more than counting the model has learned."""
    unigram = np.full(vocab, 0.5)
    bigram = np.full((vocab, vocab), 0.5 / vocab)  # the same half count, spread over each row
    for sequence in train:
        ids = np.asarray(sequence)
        np.add.at(unigram, ids, 1.0)
        np.add.at(bigram, (ids[:-1], ids[1:]), 1.0)
    log_unigram = np.log(unigram / unigram.sum())
    log_bigram = np.log(bigram / bigram.sum(axis=1, keepdims=True))
    previous = np.concatenate([np.asarray(s[:-1]) for s in test])
    targets = np.concatenate([np.asarray(s[1:]) for s in test])
    return {"unigram": float(-log_unigram[targets].mean()), "bigram": float(-log_bigram[previous, targets].mean())}


# ---- saving -----------------------------------------------------------------------------
def save(result: PretrainResult, out: Path, command: str) -> None:
    """Weights (safetensors, tied head not stored), config, tokenizer and model card.
    Written and checked in a scratch folder beside ``out``, then moved in file by file
    (each move atomic), so a reader of ``out`` never sees a half-written checkpoint."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as scratch:
        staging = Path(scratch)
        result.model.save_pretrained(staging)
        result.tokenizer.save_pretrained(staging)
        (staging / "README.md").write_text(model_card(result, command), encoding="utf-8")
        # the study loads the tokenizer through AutoTokenizer, offline: make sure that path agrees
        reloaded = AutoTokenizer.from_pretrained(staging)
        check_round_trip(reloaded, [ROUND_TRIP_SAMPLE])
        if reloaded.encode(ROUND_TRIP_SAMPLE) != result.tokenizer.encode(ROUND_TRIP_SAMPLE):
            raise RuntimeError("the saved tokenizer encodes differently from the trained one")
        out.mkdir(exist_ok=True)
        for path in sorted(staging.iterdir()):
            path.chmod(0o644)  # shipped assets are world-readable (the writers make some 0600)
            os.replace(path, out / path.name)


def model_card(result: PretrainResult, command: str) -> str:
    """The README.md of the checkpoint: what it is, how it was made, what it is not."""
    c = result.config
    ln_vocab = math.log(c.vocab_size)
    rows = "\n".join(f"| {loops} | {nll:.3f} | {nll / ln_vocab:.2f} |" for loops, nll in result.test_nll.items())
    baselines = "; ".join(f"a count-based {name} model {nll:.3f}" for name, nll in result.baselines.items())
    settings = ", ".join(f"`{k}={v}`" for k, v in asdict(c).items() if k not in ("eval_loops", "log_every"))
    return f"""---
license: mit
tags: [loopformer, tiny, test-fixture]
---

# {LABEL}

A **tiny LoopFormer** (elastic-depth looped transformer: {c.n_layer} shared blocks applied once per
loop step, conditioned on the step's time and size) pretrained from scratch on CPU so that this
project's offline `mini` study has a real base model to run on. It is **not**
`armenjeddi/LoopFormer-3block-8iterations`, the released 0.28B model, and numbers measured on it
say nothing about that model. Figures and reports label it "{LABEL}".

## What it is

- **Size**: {result.parameters:,} parameters, fp32, LM head tied to the token embedding; n_layer
  {c.n_layer} (shared blocks, as in the released model), n_embd {c.n_embd}, n_head {c.n_head}, intermediate
  {c.intermediate_dim}, block size {c.block_size}, `train_loops` {c.train_loops}.
- **Tokenizer**: byte-level BPE, {c.vocab_size} tokens, trained on the pretraining text below;
  `{EOS}` (id 0) is BOS, EOS and PAD, and no BOS is added when encoding. Loads offline with
  `AutoTokenizer.from_pretrained(this folder)`.
- **Data**: {result.train_examples:,} GSM8K *train* problems ({result.train_tokens:,} tokens): the bundled train
  split minus the SFT subset of study seed {SFT_SEED} ({SFT_EXAMPLES} examples,
  `make_subsets(dataset, seed={SFT_SEED}, sft_examples={SFT_EXAMPLES}, ...)`). Each example is
  `Question: ...\\nAnswer: <solution> #### <number>{EOS}`, one per row from position 0. The
  test split was never trained on. A study run with another seed fine-tunes on a different subset,
  which overlaps this pretraining data.
- **Recipe** (LoopFormer's elastic-depth pretraining): every step runs the full route (8 steps of
  1/8) and one random shorter route (L uniform in 1..7, step sizes positive multiples of 1/8
  summing to 1); loss = CE(full) + {c.short_weight}·CE(short) + {c.mse_weight}·MSE(final hidden of the short
  route, stop-gradient final hidden of the full route). AdamW (peak lr {c.learning_rate}), linear warmup
  then cosine, fp32, {c.steps} steps of {c.batch_size} examples (about one epoch). Initialisation: the
  model's own, except the embeddings, drawn at std 0.02·sqrt(2048/{c.n_embd}) so that their norm
  matches the released model's init (at std 0.02 this tiny width stalls at the unigram loss).
- **Made by** `{command}` in {result.seconds / 60:.1f} minutes ({c.threads} torch thread{"s" * (c.threads != 1)} on a
  {os.cpu_count()}-core CPU; tokenizer and training, evaluation excluded). The command is seeded and
  deterministic: it regenerates the weights, config and tokenizer bit for bit with the same torch
  build, whatever `--threads` (1 and 2 checked); only the minutes above differ between runs. The
  default is one thread: on a shared 2-core machine two threads stall behind other jobs.
- Settings: {settings}.

## Held-out NLL

NLL per token of prompt + gold answer (every token after the first) on the first
{result.test_examples} GSM8K test problems, evaluation only. A uniform guess scores
ln {c.vocab_size} = {ln_vocab:.3f}; for scale, {baselines}.

| loops | NLL/token | fraction of ln(vocab) |
|---:|---:|---:|
{rows}

## What it is not

Not the released model, not a reasoning model (expect near-zero GSM8K exact match), and not
evidence about LoopFormer at scale. It is a small, fast, real pretrained base so that the study's
pipeline (SFT, NLL per loop count, exact match, latency) runs end to end offline in minutes; the
study's conclusions need the released model.
"""


def parse_args(argv: Sequence[str] | None) -> tuple[Path, PretrainConfig]:
    defaults = PretrainConfig()
    parser = argparse.ArgumentParser(prog="python -m study.pretrain", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write the checkpoint into")
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    parser.add_argument("--warmup-steps", type=int, default=defaults.warmup_steps)
    parser.add_argument("--vocab-size", type=int, default=defaults.vocab_size)
    parser.add_argument("--n-embd", type=int, default=defaults.n_embd)
    parser.add_argument("--n-head", type=int, default=defaults.n_head)
    parser.add_argument("--intermediate-dim", type=int, default=defaults.intermediate_dim)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--threads", type=int, default=defaults.threads)
    parser.add_argument("--eval-examples", type=int, default=defaults.eval_examples)
    parser.add_argument("--log-every", type=int, default=defaults.log_every)
    args = parser.parse_args(argv)
    for name in ("steps", "batch_size", "vocab_size", "n_embd", "n_head", "threads", "log_every", "eval_examples"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer")
    config = PretrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        warmup_steps=args.warmup_steps,
        vocab_size=args.vocab_size,
        n_embd=args.n_embd,
        n_head=args.n_head,
        intermediate_dim=args.intermediate_dim,
        seed=args.seed,
        threads=args.threads,
        eval_examples=args.eval_examples,
        log_every=args.log_every,
    )
    return args.out, config


def main(argv: Sequence[str] | None = None) -> int:
    out, config = parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    command = " ".join(["python -m study.pretrain", *argv])
    result = pretrain(config)
    save(result, out, command)
    print(f"saved {out} ({result.parameters:,} parameters) in {result.seconds / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
