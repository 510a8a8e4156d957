"""``python -m study.bench bf16-deviation``: what bfloat16 sweeps change, on the real model of a config.

    python -m study.bench bf16-deviation --version smol [--examples N] [--out bf16-deviation.md]

Scores the same questions (the first ``--examples`` of the config's NLL test slice, all
of it by default) at every K of its ``nll.inference_loops`` on its base model, once with
the weights in fp32 and once in bfloat16 as ``sweep_dtype: bfloat16`` runs the sweeps
(parameters cast, a Llama's rotary frequencies kept fp32, per-token NLL summed in
float64), timing every cell (after one untimed warm-up batch per dtype), and prints a
markdown table, also written to ``--out`` with the figures as JSON beside it:

- per K: NLL per token (token-weighted) in fp32 and bf16, seconds in each and the
  speedup, the per-example deviation |bf16 - fp32| of NLL per token (max and mean over
  the questions), and the depth gap (NLL per token at K minus at the argmin) in each;
- the argmin K in each dtype and whether it changed; the largest per-example deviation
  against the smallest non-zero fp32 depth gap; the whole sweep's speedup.

A config whose base is the offline SmolLM2 has it dequantized into ``--run-dir``
(default ``runs/pilot-<name>``) as the pipeline does (``RunContext.prepare_base``, about
a minute the first time). Threads: the config's ``torch_threads`` unless ``--threads``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from study.bench_probes import torch_threads
from study.config import ConfigError, load_config
from study.io import atomic_write_json, atomic_write_text
from study.looping.policies import DepthPolicy
from study.models.backbone import cast_weights
from study.models.backbones import bind
from study.pipeline import RunContext, StudyError, configure_torch, resolve_device
from study.scoring import score_continuations
from study.tasks.gsm8k import EncodedExample, encode_example

DTYPES = ("float32", "bfloat16")


def score_grid(model, policies: list[DepthPolicy], encoded: list[EncodedExample], batch_size: int) -> dict[str, Any]:
    """Per policy: per-example NLL per token [N], token-weighted NLL per token, seconds.
    A non-finite score is refused (never written as a number)."""
    score_continuations(bind(model, policies[0]), encoded[:1], 1)  # warm-up, untimed
    out: dict[str, Any] = {}
    for policy in policies:
        start = time.perf_counter()
        scores = score_continuations(bind(model, policy), encoded, batch_size)
        seconds = time.perf_counter() - start
        nll = np.array([s.nll_sum for s in scores])
        tokens = np.array([s.answer_tokens for s in scores])
        if not np.all(np.isfinite(nll)):
            dtype = next(model.parameters()).dtype
            raise StudyError(f"bf16-deviation: {policy.id} in {dtype} gave a non-finite NLL; no table written")
        out[policy.id] = {"per_example": nll / tokens, "nll_per_token": float(nll.sum() / tokens.sum()), "s": seconds}
    return out


def deviation_rows(policies: list[DepthPolicy], fp32: dict[str, Any], bf16: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per policy: both NLLs, both times, the deviation and both depth gaps."""
    best = {name: min(grid[p.id]["nll_per_token"] for p in policies) for name, grid in (("fp32", fp32), ("bf16", bf16))}
    rows = []
    for policy in policies:
        a, b = fp32[policy.id], bf16[policy.id]
        deviation = np.abs(b["per_example"] - a["per_example"])
        rows.append(
            {
                "policy": policy.id, "K": policy.inference_loops,
                "nll_fp32": a["nll_per_token"], "nll_bf16": b["nll_per_token"],
                "s_fp32": a["s"], "s_bf16": b["s"], "speedup": a["s"] / b["s"],
                "deviation_max": float(deviation.max()), "deviation_mean": float(deviation.mean()),
                "gap_fp32": a["nll_per_token"] - best["fp32"], "gap_bf16": b["nll_per_token"] - best["bf16"],
            }
        )  # fmt: skip
    return rows


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    argmin = {dtype: min(rows, key=lambda r: r[f"nll_{dtype}"])["K"] for dtype in ("fp32", "bf16")}
    gaps = [r["gap_fp32"] for r in rows if r["gap_fp32"] > 0]
    return {
        "argmin_fp32": argmin["fp32"], "argmin_bf16": argmin["bf16"],
        "argmin_changed": argmin["fp32"] != argmin["bf16"],
        "deviation_max": max(r["deviation_max"] for r in rows),
        "smallest_gap_fp32": min(gaps) if gaps else None,
        "speedup": sum(r["s_fp32"] for r in rows) / sum(r["s_bf16"] for r in rows),
    }  # fmt: skip


def markdown(rows: list[dict[str, Any]], facts: dict[str, Any], title: str, symbol: str = "K") -> str:
    """The table and its summary lines; ``symbol`` names the loop count (K, or LoopFormer's M)."""
    lines = [
        f"### {title}",
        "",
        f"| {symbol} | NLL/token fp32 | NLL/token bf16 | s fp32 | s bf16 | speedup | max \\|dev\\| | mean \\|dev\\| "
        "| gap fp32 | gap bf16 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['K']} | {r['nll_fp32']:.4f} | {r['nll_bf16']:.4f} | {r['s_fp32']:.2f} | {r['s_bf16']:.2f} | "
            f"{r['speedup']:.2f}x | {r['deviation_max']:.4f} | {r['deviation_mean']:.4f} | {r['gap_fp32']:.4f} | "
            f"{r['gap_bf16']:.4f} |"
        )
    gap = facts["smallest_gap_fp32"]
    lines += [
        "",
        f"- argmin {symbol}: fp32 {facts['argmin_fp32']}, bf16 {facts['argmin_bf16']} "
        f"({'CHANGED' if facts['argmin_changed'] else 'unchanged'})",
        f"- largest per-example deviation {facts['deviation_max']:.4f} nats/token; smallest non-zero fp32 depth gap "
        + (f"{gap:.4f} ({facts['deviation_max'] / gap:.2f} of it)" if gap else "none (one K)"),
        f"- whole sweep: {facts['speedup']:.2f}x faster in bf16",
        "",
        "Deviation: |bf16 - fp32| of each question's NLL per token; gap: NLL per token at "
        f"{symbol} minus at the argmin {symbol}.",
    ]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m study.bench bf16-deviation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", default="smol", help="a config name under configs/ or a .yaml path")
    parser.add_argument("--examples", type=int, default=None, help="first N of the NLL test slice (default: all)")
    parser.add_argument("--run-dir", type=Path, default=None, help="where the base is prepared (runs/pilot-<name>)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the config's)")
    parser.add_argument("--out", type=Path, default=Path("bf16-deviation.md"), help="markdown (JSON beside it)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (ConfigError, StudyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    config = load_config(args.version)
    if args.examples is not None and args.examples < 1:
        raise ConfigError(f"--examples {args.examples}: expected at least 1")
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads {args.threads}: expected at least 1")
    configure_torch(config)
    ctx = RunContext(config, args.run_dir or Path("runs") / f"pilot-{config.name}", resolve_device(config.device))
    model, tokenizer = ctx.load_model(ctx.base_spec), ctx.load_tokenizer()
    examples = ctx.examples("nll_test")[: args.examples]
    encoded = [encode_example(tokenizer, e) for e in examples]
    policies = ctx.policies(config.nll.inference_loops)
    threads = args.threads or torch.get_num_threads()
    grid = [p.inference_loops for p in policies]
    print(f"bf16-deviation: {config.name} base, {len(encoded)} NLL test questions, K {grid}, {threads} thread(s)")
    with torch_threads(threads):
        fp32 = score_grid(model, policies, encoded, config.nll.batch_size)
        bf16 = score_grid(cast_weights(model, torch.bfloat16), policies, encoded, config.nll.batch_size)
    rows = deviation_rows(policies, fp32, bf16)
    facts = summary(rows)
    title = f"bf16 vs fp32: {config.name} base, {len(encoded)} NLL test questions, {threads} thread(s)"
    text = markdown(rows, facts, title, ctx.backbone.depth_symbol)
    print(text, end="")
    atomic_write_text(args.out, text)
    atomic_write_json(args.out.with_suffix(".json"), {"rows": rows, "summary": facts, "examples": len(encoded),
                                                      "threads": threads, "config": config.name})  # fmt: skip
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")
    return 0
