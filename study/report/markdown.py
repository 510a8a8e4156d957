"""report.md: the run's header and manifest, the sanity checks, Table 1 and one section
per stage, each with its figures (``figures.FIGURES`` numbers them) and sources. The
depth-shift test and replication sections live in ``shift_sections``.

A section whose results file is missing says "Not run" and names the stage to run.
"""

from __future__ import annotations

import os
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from study.io import atomic_write_text
from study.report.adaptive_calibrated import calibrated_section
from study.report.benchmarks import benchmarks_section
from study.report.figures import FIGURES, figure_number, figure_spec, write_figures
from study.report.figures.latency import has_percentiles
from study.report.formats import (
    depth_cells,
    format_ci,
    format_nll,
    format_percent,
    format_seconds,
    format_share,
    gaps_text,
    has_ci,
    markdown_table,
    yes_no,
)
from study.report.results import ADAPTIVE_FILES, TEST, Results, load_results
from study.report.shift_sections import depth_shift_section, replication_section
from study.report.tables import row_at, table1
from study.stats import NO_CI, PERCENTILE_MIN_SAMPLES
from study.tasks.gsm8k import EXTRACTIONS

Figures = dict[str, Path | None]  # figure name -> its PNG (None: not drawn)


def _header(results: Results) -> list[str]:
    label = results.model_label
    lines = [f"# loopdepth report: {results.name} — {label}", ""]
    if results.embedded:
        lines += [
            f"> **Model: {label}.** This run used the tiny LoopFormer embedded in this repository, not the released "
            "checkpoint: its numbers show that the pipeline works, not what the released model prefers.",
            "",
        ]
    provenance = results.provenance
    if provenance:
        lines += [
            f"> **Model: {label}.** Offline copy `{Path(str(provenance.get('file', '?'))).name}` "
            f"(sha256 `{provenance.get('sha256', '?')}`, {provenance.get('package', '?')}): "
            f"**{provenance.get('quantization', 'quantized')}**, so its numbers are those of the quantized weights, "
            "not of the hub model.",
            "",
        ]
    if results.config is not None and results.config.description:
        lines += [results.config.description, ""]
    if results.problems:
        lines += ["**Files that could not be read:**", ""] + [f"- {p}" for p in results.problems] + [""]
    return lines


def _stage_order(name: str) -> tuple[int, str]:
    known = ("check", "sft", "nll", "exact_match", "latency", "benchmarks", "report")  # the pipeline's order
    return (known.index(name) if name in known else len(known), name)


def _duration(stage: dict[str, Any]) -> str:
    if "seconds" in stage:
        return f"{format_seconds(float(stage['seconds']))} s"
    try:
        seconds = (datetime.fromisoformat(stage["finished"]) - datetime.fromisoformat(stage["started"])).total_seconds()
    except (KeyError, TypeError, ValueError):
        return "—"
    return f"{format_seconds(seconds)} s"


def _what_was_run(results: Results) -> list[str]:
    lines = ["## What was run", ""]
    manifest = results.manifest
    if manifest is None:
        return [*lines, "No `manifest.json` in the run directory: what was run is unknown.", ""]
    config = manifest.get("config") or {}
    data = manifest.get("data") or {}
    model = manifest.get("model") or {}
    hardware = manifest.get("hardware") or {}
    label_note = f" — {results.model_label}" if results.embedded else ""
    lines += [
        f"- **Config:** `{config.get('name', '?')}`, seed {manifest.get('seed', config.get('seed', '?'))}",
        f"- **Data:** {data.get('source', '?')}"
        + (f" from `{data['directory']}`" if data.get("directory") else "")
        + "; sha256: "
        + (", ".join(f"{k} `{v}`" for k, v in sorted((data.get("sha256") or {}).items())) or "not recorded"),
        *_slices(data.get("subsets")),
        f"- **Model:** `{model.get('source', config.get('model', {}).get('source', '?'))}`{label_note}; "
        f"revision {model.get('revision') or '—'}; resolved commit {model.get('resolved_commit') or '—'}",
        f"- **Device:** {hardware.get('device', '?')}; GPUs: {', '.join(hardware.get('gpus') or []) or 'none'}; "
        f"CPU: {hardware.get('cpu', '?')}" + (f" ({hardware['cpu_count']} cores)" if hardware.get("cpu_count") else ""),
        "- **Versions:** "
        + (", ".join(f"{k} {v}" for k, v in sorted((manifest.get("versions") or {}).items())) or "—"),
        f"- **Code:** git commit `{manifest.get('git_commit') or 'unknown'}`",
    ]
    if config.get("sweep_dtype", "float32") != "float32":  # never a silent bf16 result
        lines.append(
            f"- **Sweeps in {config['sweep_dtype']}** (`sweep_dtype`; SFT in float32): a fast look, not the "
            "fp32 figures (`python -m study.bench bf16-deviation` measures the difference)"
        )
    invocations = manifest.get("invocations") or []
    if invocations:
        lines.append(
            "- **Command lines:** " + "; ".join(f"`python {' '.join(i.get('argv', []))}`" for i in invocations)
        )
    stages = manifest.get("stages") or {}
    if stages:
        rows = []
        for name, stage in sorted(stages.items(), key=lambda item: _stage_order(item[0])):
            finished = stage.get("finished")
            if name == "report" and not finished:
                finished = "(this report)"
            rows.append([name, stage.get("started", "—"), finished or "not finished", _duration(stage)])
        lines += ["", markdown_table(["Stage", "Started (UTC)", "Finished (UTC)", "Duration"], rows)]
    return [*lines, "", "Source: `manifest.json`.", ""]


def _slices(subsets: Any) -> list[str]:
    """The run's slices and SFT subsets as one line (none for a manifest without them)."""
    if not isinstance(subsets, dict) or not isinstance(subsets.get("sft"), dict) or not subsets["sft"]:
        return []
    sft = subsets["sft"]
    first = next(iter(sft))

    def count(key: str) -> int:
        return len(subsets.get(key) or [])

    return [
        f"- **Slices:** test {count('nll_test')} test questions; heldout {count('nll_heldout')} train questions "
        f"that no SFT subset contains; seen (SFT data) {count('nll_seen')} questions of seed {first}'s SFT subset; "
        f"SFT {len(sft[first])} train questions per replicate seed ({', '.join(sft)}); ids in `manifest.json`"
    ]


def _checks_section(results: Results) -> list[str]:
    lines = ["## Sanity checks", ""]
    checks = results.checks
    skipped = bool((results.manifest or {}).get("checks_skipped")) or bool((checks or {}).get("skipped"))
    not_gated = "Sanity checks were skipped with --skip-checks; these numbers were not gated."
    if checks is None:
        lines.append(f"**{not_gated}**" if skipped else results.missing("checks.json") + ".")
        return [*lines, ""]
    items = checks.get("checks") or []
    failed = [c for c in items if not c.get("passed")]
    names = ", ".join(f"`{c.get('name')}`" for c in failed)
    if skipped:
        lines.append(f"**{not_gated}**")
        if failed:
            lines.append(f"The checks ran anyway and **{len(failed)} of {len(items)} FAILED** ({names}).")
        elif items:
            lines.append(f"The checks ran anyway and all {len(items)} passed.")
    elif failed:
        lines.append(f"**FAILED: {len(failed)} of {len(items)} sanity checks failed ({names}).**")
    else:
        lines.append(f"Passed: all {len(items)} sanity checks passed.")
    if items:
        rows = [
            [
                c.get("name"),
                "pass" if c.get("passed") else "**FAIL**",
                c.get("value"),
                c.get("threshold"),
                c.get("message"),
            ]
            for c in items
        ]
        lines += ["", markdown_table(["Check", "Result", "Value", "Threshold", "Detail"], rows)]
    return [*lines, "", "Source: `results/checks.json`.", ""]


def _figure_block(results: Results, name: str, figures: Figures, rel: str) -> list[str]:
    spec = figure_spec(name)
    heading = f"**Figure {figure_number(name)}: {spec.title}.**"
    if figures.get(name) is None:
        missing = [f"`results/{f}`" for f in results.absent(*spec.needs)]
        reason = f"missing {', '.join(missing)}" if missing else "not written"
        return [f"{heading} Not drawn ({reason}).", ""]
    return [heading, "", f"![{spec.title}]({rel}/{name}.png)", "", spec.caption, ""]


def _table1_section(results: Results) -> list[str]:
    lines = ["## Table 1: preferred inference depth (NLL per token)", ""]
    table = table1(results)
    if table.empty:
        return [*lines, results.missing("preferred_depth.csv") + ".", ""]
    if results.preferred is None:
        lines += [results.missing("preferred_depth.csv") + "; best depths below come from nll_summary.csv.", ""]
    confidence = f"{100 * results.config.nll.confidence:g}%" if results.config else "95%"
    rows = []
    for _, row in table.iterrows():
        # nll_summary.csv read but its CI cells empty (one example): said, not left out
        known = results.nll is not None and pd.notna(row["best_test_nll"])
        ci = f" {format_ci(row['best_test_ci_low'], row['best_test_ci_high'])}" if known else ""
        rows.append(
            [
                row["label"],
                "—" if pd.isna(row["train_loops"]) else int(row["train_loops"]),
                "—" if pd.isna(row["best_test_loops"]) else int(row["best_test_loops"]),
                format_nll(row["best_test_nll"]) + ci,
                "—" if pd.isna(row["best_heldout_loops"]) else int(row["best_heldout_loops"]),
                format_nll(row["best_heldout_nll"]),
                yes_no(None if pd.isna(row["train_test_match"]) else bool(row["train_test_match"])),
                format_share(row["p_best_is_train_loops"]),
                gaps_text(row["neighbour_gaps"]),
            ]
        )
    headers = [
        "Model", "Train loops", "Best test loops", f"Test NLL at best [{confidence} CI]", "Best heldout loops",
        "Heldout NLL at best", "Test/heldout argmin match", "P(argmin = train loops), test",
        "Gap to neighbouring loop counts, test [CI]",
    ]  # fmt: skip
    lines.append(markdown_table(headers, rows))
    resamples = f", {results.config.nll.bootstrap_resamples} resamples" if results.config else ""
    lines += [
        "",
        f"NLL in nats/token. CIs are bootstrap {confidence} intervals{resamples}; gaps are NLL(loops) − NLL(best) "
        'with paired-bootstrap CIs ("tied" when the CI contains 0). P(argmin = train loops) is the bootstrap '
        'share of resamples whose argmin is the training loop count ("not in grid" when the grid lacks that '
        "count). Heldout: GSM8K train questions that no SFT subset of the run contains; the seen slice (SFT data) "
        f"is in `results/preferred_depth.csv` only. A split of fewer than two examples has no interval: {NO_CI}.",
        "",
        "Sources: `results/preferred_depth.csv` (best loops, match, P, gaps) and `results/nll_summary.csv` (CIs).",
        "",
    ]
    lines += _findings(table)
    return lines


def _findings(table: pd.DataFrame) -> list[str]:
    sentences = []
    for _, row in table.iterrows():
        if pd.isna(row["best_test_loops"]) or pd.isna(row["train_loops"]):
            continue
        best, trained = int(row["best_test_loops"]), int(row["train_loops"])
        where = "its training loop count" if best == trained else f"not its training loop count ({trained})"
        sentences.append(f"- {row['label']}: lowest test NLL at {best} loops, {where}.")
    return [*sentences, ""] if sentences else []


def _exact_match_section(results: Results, figures: Figures, rel: str) -> list[str]:
    lines = ["## Exact match (GSM8K test)", ""]
    em = results.exact_match
    if em is None:
        return [
            *lines,
            results.missing("exact_match.csv") + ".",
            "",
            *_figure_block(results, "exact_match", figures, rel),
        ]
    grid = sorted(int(v) for v in em["inference_loops"].unique())
    rows = []
    for name in results.models_in(em):
        order = {e: i for i, e in enumerate(EXTRACTIONS)}
        for extraction in sorted(em["extraction"].unique(), key=lambda e: (order.get(e, len(order)), e)):
            subset = em[(em["model"] == name) & (em["extraction"] == extraction)]
            if subset.empty:
                continue
            cells = depth_cells(
                subset,
                grid,
                lambda r, _: (
                    f"{format_percent(r['accuracy'])} [{format_percent(r['ci_low'])}, {format_percent(r['ci_high'])}] "
                    f"({int(r['correct'])}/{int(r['n'])})"
                ),
            )
            rows.append([results.model(name).label, extraction, *cells])
    lines.append(markdown_table(["Model", "Extraction", *(f"{g} loops" for g in grid)], rows))
    lines += [
        "",
        "Accuracy with Wilson 95% intervals (correct/n). Source: `results/exact_match.csv`. Extractions: "
        "`strict` takes the first number after `#### ` and `flexible` the last number in the generation "
        "(lm-eval's gsm8k regexes), both compared with the gold answer as exact decimals (`18.00` counts as 18); "
        "`lm_eval_strict` and `lm_eval_flexible` are what lm-eval's `gsm8k` task reports (`strict-match`, "
        "`flexible-extract`): the same regexes but a string comparison after removing `,`, `$` and a trailing "
        "`.`, so `18.00` is wrong there. Every generation is first cut at lm-eval's stop sequences "
        "(`Question:`, `</s>`, `<|im_end|>`, the EOS string). Compare the `lm_eval_*` rows with published "
        "lm-eval numbers.",
        "",
    ]
    return lines + _figure_block(results, "exact_match", figures, rel)


def _latency_section(results: Results, figures: Figures, rel: str) -> list[str]:
    lines = ["## Latency: what each extra loop costs", ""]
    latency = results.latency
    if latency is None:
        lines += [results.missing("latency.csv") + ".", ""]
    else:
        grid = sorted(int(v) for v in latency["inference_loops"].unique())
        fits = results.latency_fit
        rows = []
        for name in results.models_in(latency):
            subset = latency[latency["model"] == name]
            cells = []
            for loops in grid:
                match = subset[subset["inference_loops"] == loops]
                cells.append("—" if match.empty else format_seconds(float(match["median_s"].iloc[0])))
            fit = fits[fits["model"] == name] if fits is not None else pd.DataFrame()
            if fit.empty:
                fit_cells = ["—", "—", "—"]
            else:
                f = fit.iloc[0]
                fit_cells = [
                    format_seconds(f["slope_s_per_loop"]),
                    format_seconds(f["intercept_s"]),
                    "—" if pd.isna(f["r_squared"]) else f"{f['r_squared']:.3f}",  # one loop count: no fit
                ]
            rows.append([results.model(name).label, *cells, *fit_cells])
        headers = ["Model", *(f"{g} loops" for g in grid), "Slope (s/loop)", "Intercept (s)", "R²"]
        lines.append(markdown_table(headers, rows))
        details = []
        for column, text in (
            ("device", "device"), ("threads", "torch threads"), ("new_tokens", "new tokens per sample"),
            ("samples", "samples"),
        ):  # fmt: skip
            if column in latency.columns and latency[column].nunique() == 1:
                details.append(f"{text}: {latency[column].iloc[0]}")
        spread = (
            f"p10–p90 ranges are in Figure {figure_number('latency')}"
            if has_percentiles(latency)
            else f"median only: fewer than {PERCENTILE_MIN_SAMPLES} samples per depth give no p10–p90"
        )
        lines += [
            "",
            "Median seconds per sample (3 significant digits)"
            + (f"; {'; '.join(details)}" if details else "")
            + f". {spread}. Depths were timed interleaved, in a seeded shuffled order per sample. Slope, "
            "intercept and R² are a least-squares fit of median latency on loop count.",
            "",
            *_latency_rates(results, latency),
            "Sources: `results/latency.csv` (medians), "
            + (
                "`results/latency_fit.csv` (fit)."
                if fits is not None
                else "fit not available: " + results.missing("latency_fit.csv") + "."
            ),
            "",
        ]
    return lines + _figure_block(results, "latency", figures, rel) + _figure_block(results, "frontier", figures, rel)


def _adaptive_latency_section(results: Results, figures: Figures, rel: str) -> list[str]:
    """Time at equal quality: the halting policies timed beside the fixed depths (only when
    the latency stage timed some: ``adaptive_latency.csv``), after the adaptive section
    that introduces them (its figure is the last of ``FIGURES``)."""
    frame = results.adaptive_latency
    if frame is None:
        return []
    rows = []
    for name in results.models_in(frame):
        for _, row in frame[frame["model"] == name].iterrows():
            kind = f"halting {row['rule']}, tau = {row['tau']:g}" if row["halting"] else "fixed"
            ci = format_ci(row["nll_ci_low"], row["nll_ci_high"]) if pd.notna(row.get("nll_ci_low")) else ""
            nll = f"{format_nll(row['nll_per_token'])} {ci}".strip()
            seconds = format_seconds(float(row["s_per_sample"]))
            rows.append(
                [results.model(name).label, f"`{row['policy']}`", kind, f"{row['loops_per_token']:.2f}", seconds, nll]
            )
    headers = ["Model", "Policy", "Kind", "Loops per token", "Median s/sample", "Gold NLL/token (CI)"]
    examples = ", ".join(str(int(n)) for n in frame["quality_examples"].unique())
    return [
        "## Time at equal quality: halting in decoding",
        "",
        markdown_table(headers, rows),
        "",
        f"Every policy timed at batch 1 in the same interleaved rounds; gold NLL on the {examples} test "
        "questions timed, the gold solution fed back token by token through the decoding path (a halting "
        "policy halts each token as it would while generating; LoopFormer picks M once per prompt). Loops per "
        "token: of the generated tokens. Source: `results/adaptive_latency.csv`.",
        "",
        # shown as the adaptive section shows its figures: after the numbered ones, unnumbered
        *([f"![adaptive_latency]({rel}/adaptive_latency.png)", "", figure_spec("adaptive_latency").caption, ""]
          if figures.get("adaptive_latency") is not None else []),
    ]  # fmt: skip


def _latency_rates(results: Results, latency: pd.DataFrame) -> list[str]:
    """Prefill seconds and decode tokens per second apart, and the machine's load."""
    if not {"prefill_s", "decode_tokens_per_s"} <= set(latency.columns):
        return []
    rows = []
    for name in results.models_in(latency):
        subset = latency[latency["model"] == name].sort_values("inference_loops")
        for _, r in subset.iterrows():
            rate = r["decode_tokens_per_s"]
            rows.append(
                [
                    results.model(name).label,
                    int(r["inference_loops"]),
                    format_seconds(r["prefill_s"]),
                    "—" if pd.isna(rate) else f"{rate:.1f}",
                    "" if "note" not in r or pd.isna(r["note"]) else r["note"],
                ]
            )
    load = ""
    if {"load_1m_before", "load_1m_after"} <= set(latency.columns) and latency["load_1m_before"].notna().any():
        low = min(latency["load_1m_before"].min(), latency["load_1m_after"].min())
        high = max(latency["load_1m_before"].max(), latency["load_1m_after"].max())
        load = f" The 1-minute load average was {low:.2f}-{high:.2f} around the timings."
    return [
        markdown_table(["Model", "Loops", "Prefill (s, median)", "Decode (tokens/s)", "Note"], rows),
        "",
        "Prefill is the prompt's forward pass alone; the decode rate is the tokens after the first over the median "
        f"of (generation − prefill), so it excludes the prefill.{load}",
        "",
    ]


def _sft_section(results: Results, figures: Figures, rel: str) -> list[str]:
    lines = ["## SFT training", ""]
    loss = results.sft_loss
    if loss is None:
        return [*lines, results.missing("sft_loss.csv") + ".", "", *_figure_block(results, "sft_loss", figures, rel)]
    rows = []
    for name in results.models_in(loss):
        subset = loss[loss["model"] == name].sort_values("step")
        tail = subset["loss"].iloc[-max(1, len(subset) // 10) :]
        rows.append(
            [
                results.model(name).label,
                results.model(name).train_loops if results.model(name).train_loops is not None else "—",
                int(subset["step"].max()),
                format_nll(float(subset["loss"].iloc[0])),
                format_nll(float(tail.mean())),
            ]
        )
    headers = ["Model", "Train loops", "Optimizer steps", "First logged loss", "Mean loss, last 10% of steps"]
    lines += [markdown_table(headers, rows), "", "Loss in nats/token. Source: `results/sft_loss.csv`.", ""]
    return lines + _figure_block(results, "sft_loss", figures, rel)


def _schedules_section(results: Results, figures: Figures, rel: str) -> list[str]:
    """Only for runs that swept schedules (LoopFormer configs with a ``schedules`` section)."""
    frame = results.schedules
    if frame is None:
        swept = results.config is not None and results.config.schedules is not None
        return ["## Schedules at a fixed loop budget", "", results.missing("schedules.csv") + ".", ""] if swept else []
    lines = ["## Schedules at a fixed loop budget", ""]
    rows = []
    for name in results.models_in(frame):
        subset = frame[frame["model"] == name].sort_values(["rank", "policy"])
        best, worst = subset.iloc[0], subset.iloc[-1]
        uniform = subset[subset["uniform"].astype(bool)]
        uniform_text = (
            f"{format_nll(uniform['nll_per_token'].iloc[0])} (rank {int(uniform['rank'].iloc[0])})"
            if not uniform.empty
            else "—"
        )
        rows.append(
            [
                results.model(name).label,
                len(subset),
                f"{best['steps']}: {format_nll(best['nll_per_token'])} {format_ci(*best[['ci_low', 'ci_high']])}",
                uniform_text,
                f"{worst['steps']}: {format_nll(worst['nll_per_token'])} {format_ci(*worst[['ci_low', 'ci_high']])}",
                format_nll(float(worst["nll_per_token"] - best["nll_per_token"])),
            ]
        )
    headers = ["Model", "Schedules", "Best [95% CI]", "Uniform (rank)", "Worst [95% CI]", "Spread (worst − best)"]
    lines += [
        markdown_table(headers, rows),
        "",
        "Test NLL per token of every schedule with the same number of steps (step sizes in the order they run). "
        "Source: `results/schedules.csv`.",
        "",
    ]
    return lines + _figure_block(results, "schedules", figures, rel)


def _ci(low: float, high: float) -> str:
    return f"[{low:+.4f}, {high:+.4f}]" if has_ci(low, high) else NO_CI


def _adaptive_section(results: Results, figures: Figures, rel: str) -> list[str]:
    """Fixed or per-input depth: the best fixed depth, the oracle and the halting policies
    per model (``results/adaptive.csv``), and the adaptive stage's two figures."""
    lines = ["## Fixed or per-input depth?", ""]
    absent = results.absent(*ADAPTIVE_FILES)
    if absent:
        return [*lines, results.missing(absent[0]) + ".", ""]
    frame = results.adaptive
    assert frame is not None  # results.absent found all of ADAPTIVE_FILES
    for model in dict.fromkeys(frame["model"]):  # the stage's model order
        lines += _adaptive_findings(frame[(frame["model"] == model) & (frame["split"] == TEST)], model)
    lines += [
        "",
        "Costs are loops actually executed, averaged over examples (a ladder pays for every rung it ran). "
        "Gaps are paired over examples, 95% percentile bootstrap. Source: `results/adaptive.csv`, "
        "`results/oracle_frontier.csv`, `results/adaptive_depths.csv`.",
        "",
    ]
    for name in ("adaptive_frontier", "adaptive_depths"):
        if figures.get(name) is not None:
            lines += [f"![{name}]({rel}/{name}.png)", ""]
    return lines + calibrated_section(results)


def _adaptive_findings(rows: pd.DataFrame, model: str) -> list[str]:
    """One model's test rows of adaptive.csv as a bullet: the best fixed depth against the
    oracle, then how its halting policies fare at equal compute."""
    best = rows[rows["kind"] == "best_fixed"].iloc[0]
    oracle = rows[rows["kind"] == "oracle"].iloc[0]
    lines = [
        f"- **{model}**: best fixed depth {best['detail']} at {best['nll_per_token']:.4f} nats/token; the "
        f"oracle (each example at its best depth, {oracle['mean_loops']:.2f} mean loops) reaches "
        f"{oracle['nll_per_token']:.4f} ({oracle['gap_to_best_fixed']:+.4f}, CI "
        f"{_ci(oracle['gap_ci_low'], oracle['gap_ci_high'])})."
    ]
    halting = rows[rows["kind"] == "halting"]
    if halting.empty:
        return lines
    compared = halting[halting["equal_compute_fixed"].notna()]
    wins = compared[compared["equal_ci_high"] < 0]
    # the policy that does best against the fixed depth it could afford (lowest NLL when none fits)
    top = (
        row_at(compared, compared["gap_to_equal_compute"].astype(float).idxmin())
        if not compared.empty
        else row_at(halting, halting["nll_per_token"].idxmin())
    )
    verdict = (
        f"{len(wins)} of {len(halting)} halting policies beat the best fixed depth within their mean loops "
        "(CI of the gap below 0; every tau tried, compared in hindsight: not a claim, see the calibrated points)"
        if len(wins)
        else f"no halting policy of {len(halting)} beats the best fixed depth within its mean loops"
    )
    equal = (
        f"{top['gap_to_equal_compute']:+.4f}, CI {_ci(top['equal_ci_low'], top['equal_ci_high'])} vs "
        f"{top['equal_compute_fixed']}"
        if isinstance(top["equal_compute_fixed"], str)
        else "no fixed depth is that cheap"
    )
    lines.append(
        f"  {verdict}. Best at equal compute: {top['policy']} at {top['mean_loops']:.2f} mean loops, "
        f"{top['nll_per_token']:.4f} nats/token (vs best fixed {top['gap_to_best_fixed']:+.4f}, CI "
        f"{_ci(top['gap_ci_low'], top['gap_ci_high'])}; at equal compute {equal}); the oracle at that budget "
        f"reaches {top['oracle_nll_at_budget']:.4f} ({top['nll_per_token'] - top['oracle_nll_at_budget']:+.4f} "
        "to go)."
    )
    return lines


def render_report(results: Results, figures: Figures, figures_rel: str = "figures") -> str:
    """The text of report.md; ``figures`` maps figure name -> written PNG (None: not drawn)."""
    lines = _header(results)
    lines += _what_was_run(results)
    lines += _checks_section(results)
    lines += _table1_section(results)
    lines += _figure_block(results, "nll_vs_loops", figures, figures_rel)
    lines += _exact_match_section(results, figures, figures_rel)
    lines += _latency_section(results, figures, figures_rel)
    lines += _sft_section(results, figures, figures_rel)
    # what SFT at a depth did to the preferred depth: the depth-shift test, then each model across seeds
    lines += depth_shift_section(results)
    lines += _figure_block(results, "depth_shift", figures, figures_rel)
    lines += replication_section(results)
    lines += _schedules_section(results, figures, figures_rel)
    lines += benchmarks_section(results, lambda name: _figure_block(results, name, figures, figures_rel))
    lines += _adaptive_section(results, figures, figures_rel)
    lines += _adaptive_latency_section(results, figures, figures_rel)
    return "\n".join(lines).rstrip() + "\n"


def write_report(results: Results, figures_dir: Path | None = None) -> Path:
    """Write every drawable figure (PNG + PDF) and ``report.md`` into the run directory."""
    figures_dir = Path(figures_dir) if figures_dir is not None else results.run_dir / "figures"
    figures = write_figures(results, figures_dir)
    relative = Path(os.path.relpath(figures_dir, results.run_dir)).as_posix()
    path = results.run_dir / "report.md"
    atomic_write_text(path, render_report(results, figures, relative))
    return path


def regenerate(run_dir: Path, export_figures: Path | None = None) -> Path:
    """Redraw the figures and report.md of an existing run directory; with ``export_figures``
    also copy the PNGs there (used to refresh the repository's top-level figures/)."""
    results = load_results(run_dir)
    path = write_report(results, run_dir / "figures")
    if export_figures is not None:
        export_figures.mkdir(parents=True, exist_ok=True)
        for spec in FIGURES:
            png = run_dir / "figures" / f"{spec.name}.png"
            if png.is_file():
                shutil.copyfile(png, export_figures / png.name)
    return path
