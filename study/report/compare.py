"""Comparing runs: Table 1 across run directories (``compare.csv``, ``compare.md``) and an
overlay of the NLL figure, one line style per run. Runs of different backbones or
tokenizers are refused (``require_one_scale``): their nats per token are not on one scale.

    python -m study.report compare runs/v16-seed2026 runs/v17-seed2026 --out runs/compare
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from study.errors import StudyError
from study.io import atomic_write_csv, atomic_write_text
from study.report.formats import format_ci, format_nll, format_share, gaps_text, markdown_table, yes_no
from study.report.results import TEST, Results, load_results
from study.report.style import MODEL_MARKERS, RUN_LINESTYLES, model_colors, new_figure, not_run, save_figure, styled
from study.report.tables import row_at, table1


def _run_names(run_dirs: Sequence[Path]) -> list[str]:
    names = [Path(d).resolve().name for d in run_dirs]
    if len(set(names)) == len(names):
        return names
    return [f"{Path(d).resolve().parent.name}/{Path(d).resolve().name}" for d in run_dirs]


@styled
def plot_compare(runs: Sequence[Results], names: Sequence[str] | None = None, ax: Axes | None = None) -> Figure:
    """Overlay of Figure 1 across runs: test NLL vs loops, one colour per model and one line
    style per run, test argmins starred."""
    figure, ax = new_figure(ax, (8.0, 5.0))
    names = list(names) if names is not None else _run_names([r.run_dir for r in runs])
    all_models = list(dict.fromkeys(m.name for r in runs for m in r.models if m.name in r.models_in(r.nll)))
    colours = model_colors(all_models)
    loops_seen: set[int] = set()
    for index, results in enumerate(runs):
        if results.nll is None:
            continue
        style = RUN_LINESTYLES[index % len(RUN_LINESTYLES)]
        test = results.nll[results.nll["split"] == TEST]
        for model in results.models_in(test):
            rows = test[test["model"] == model].sort_values("inference_loops")
            loops_seen.update(int(v) for v in rows["inference_loops"])
            marker = MODEL_MARKERS[all_models.index(model) % len(MODEL_MARKERS)]
            ax.plot(rows["inference_loops"], rows["nll_per_token"], ls=style, marker=marker, ms=4, color=colours[model])
            best = row_at(rows, rows["nll_per_token"].idxmin())
            ax.plot(
                best["inference_loops"], best["nll_per_token"], "*", ms=14, mfc=colours[model], mec="black", zorder=5
            )
    if not loops_seen:
        not_run(ax, "No run has results/nll_summary.csv")
        return figure
    ax.set_xticks(sorted(loops_seen))
    labels = {m.name: m for r in runs for m in r.models}
    handles = [
        Line2D(
            [], [], color=colours[m], marker=MODEL_MARKERS[i % len(MODEL_MARKERS)], lw=2,
            label=labels[m].label + (f" (trained at {labels[m].train_loops})" if labels[m].train_loops else ""),
        )
        for i, m in enumerate(all_models)
    ]  # fmt: skip
    handles += [
        Line2D([], [], color="0.3", ls=RUN_LINESTYLES[i % len(RUN_LINESTYLES)], lw=1.6, label=f"run {n}")
        for i, n in enumerate(names)
    ]
    handles.append(Line2D([], [], marker="*", ms=12, mfc="0.5", mec="black", ls="none", label="argmin"))
    ax.legend(handles=handles, loc="upper center", ncols=2)
    ax.set_xlabel("inference loops (test-time depth)")
    ax.set_ylabel("test NLL per token (nats/token)")
    ax.set_title("Test NLL vs inference loops across runs (lower is better)")
    return figure


COMPARE_COLUMNS = [
    "run", "run_dir", "config", "seed", "base_model", "model", "label", "train_loops", "best_test_loops",
    "best_test_nll", "best_test_ci_low", "best_test_ci_high", "best_heldout_loops", "best_heldout_nll",
    "train_test_match", "p_best_is_train_loops", "test_gap_to_neighbours",
]  # fmt: skip


def compare(run_dirs: Sequence[Path], out_dir: Path) -> Path:
    """Cross-run Table 1 (``compare.csv`` and ``compare.md``) and an overlay of Figure 1
    (``compare_nll_vs_loops.png``/``.pdf``) in ``out_dir``; returns the path of compare.md."""
    run_dirs = [Path(d) for d in run_dirs]
    out_dir = Path(out_dir)
    runs = [load_results(d) for d in run_dirs]
    names = _run_names(run_dirs)
    require_one_scale(runs, names)  # before anything is written
    records = []
    for results, name in zip(runs, names, strict=True):
        table = table1(results)
        for _, row in table.iterrows():
            records.append(
                {
                    "run": name,
                    "run_dir": str(results.run_dir),
                    "config": results.name,
                    "seed": results.config.seed if results.config else (results.manifest or {}).get("seed"),
                    "base_model": results.model_label,
                    **{k: _plain(row[k]) for k in ("model", "label", "train_test_match")},
                    **{k: _int(row[k]) for k in ("train_loops", "best_test_loops", "best_heldout_loops")},
                    **{k: _float(row[k]) for k in FLOAT_COLUMNS},
                    "p_best_is_train_loops": _plain(row["p_best_is_train_loops"]),  # a share, or "not in grid"
                    "test_gap_to_neighbours": gaps_text(row["neighbour_gaps"]),
                }
            )
    atomic_write_csv(out_dir / "compare.csv", records, COMPARE_COLUMNS)
    save_figure(plot_compare(runs, names), out_dir, "compare_nll_vs_loops")

    lines = ["# loopdepth: comparison of runs", ""]
    embedded = [n for r, n in zip(runs, names, strict=True) if r.embedded]
    if embedded:
        lines += [
            f"> Runs on the tiny embedded model (not the released model): {', '.join(embedded)}. Their numbers "
            "show that the pipeline works, not what the released model prefers.",
            "",
        ]
    lines += ["## Runs", ""]
    run_rows = []
    for results, name in zip(runs, names, strict=True):
        manifest = results.manifest or {}
        model = manifest.get("model") or {}
        skipped = bool(manifest.get("checks_skipped")) or bool((results.checks or {}).get("skipped"))
        checks = "not run" if results.checks is None else ("passed" if results.checks.get("passed") else "FAILED")
        run_rows.append(
            [
                name,
                results.name,
                manifest.get("seed", "—"),
                results.model_label,
                model.get("resolved_commit") or model.get("revision") or "—",
                checks + (" (--skip-checks: not gated)" if skipped else ""),
                f"`{results.run_dir}`",
            ]
        )
    lines += [
        markdown_table(["Run", "Config", "Seed", "Model", "Model commit", "Sanity checks", "Directory"], run_rows),
        "",
        "## Table 1 across runs",
        "",
    ]
    rows = [
        [
            r["run"],
            r["label"],
            "—" if r["train_loops"] is None else r["train_loops"],
            "—" if r["best_test_loops"] is None else r["best_test_loops"],
            format_nll(r["best_test_nll"])
            + ("" if r["best_test_nll"] is None else f" {format_ci(r['best_test_ci_low'], r['best_test_ci_high'])}"),
            "—" if r["best_heldout_loops"] is None else r["best_heldout_loops"],
            format_nll(r["best_heldout_nll"]),
            yes_no(r["train_test_match"]),
            format_share(r["p_best_is_train_loops"]),
            r["test_gap_to_neighbours"],
        ]
        for r in records
    ]
    headers = [
        "Run", "Model", "Train loops", "Best test loops", "Test NLL at best [CI]", "Best heldout loops",
        "Heldout NLL at best", "Test/heldout match", "P(argmin = train loops), test", "Gap to neighbours, test [CI]",
    ]  # fmt: skip
    lines.append(markdown_table(headers, rows) if rows else "No run has NLL results.")
    missing = [n for r, n in zip(runs, names, strict=True) if r.nll is None and r.preferred is None]
    if missing:
        lines += ["", f"Not run (no NLL results): {', '.join(missing)}."]
    lines += [
        "",
        "NLL in nats/token. Sources: each run's `results/preferred_depth.csv` and `results/nll_summary.csv`; "
        "the same numbers are in `compare.csv`.",
        "",
        "![Test NLL vs inference loops across runs](compare_nll_vs_loops.png)",
        "",
        "Test NLL per model (colour) and run (line style); stars mark each curve's argmin.",
        "",
    ]
    path = out_dir / "compare.md"
    atomic_write_text(path, "\n".join(lines))
    return path


FLOAT_COLUMNS = ("best_test_nll", "best_test_ci_low", "best_test_ci_high", "best_heldout_nll")


def scale_of(results: Results) -> tuple[str, str]:
    """(backbone, tokenizer) of a run, as its manifest records them: what its nats per
    token are measured in. The tokenizer is its vocabulary's sha256 when the manifest has
    it (``study.manifest.tokenizer_record``), else the tokenizer setting and the base
    source it resolves from (manifests written before the record existed)."""
    model = (results.manifest or {}).get("model") or {}
    record = model.get("tokenizer") or {}
    if record.get("sha256"):
        return results.backbone, f"a {record.get('vocab_size')}-token vocabulary (sha256 {record['sha256'][:12]})"
    choice = results.config.model.tokenizer if results.config is not None else "auto"
    source = model.get("source") or (results.config.model.source if results.config is not None else "unknown")
    return results.backbone, (f"the tokenizer of {source}" if choice == "auto" else f"tokenizer {choice}")


def require_one_scale(runs: Sequence[Results], names: Sequence[str]) -> None:
    """Refuse to overlay runs of different backbones or tokenizers: NLL per token is per
    token of a vocabulary, so GPT-2's 50k, SmolLM2's 49k and the mini model's 2k tokens
    put the same text on different scales (no separate axes: one refusal, one line)."""
    scales = [scale_of(r) for r in runs]
    for name, scale in zip(names[1:], scales[1:], strict=True):
        if scale != scales[0]:
            what = "backbones" if scale[0] != scales[0][0] else "tokenizers"
            first, other = (f"{s[0]}, {s[1]}" for s in (scales[0], scale))
            raise StudyError(
                f"compare: runs {names[0]} ({first}) and {name} ({other}) differ in {what}: their nats per "
                "token are not comparable; compare runs of one backbone and tokenizer"
            )


def _float(value: Any) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


def _int(value: Any) -> int | None:
    return None if value is None or pd.isna(value) else int(value)


def _plain(value: Any) -> Any:
    """numpy/pandas scalars as plain Python values (None for missing) for CSV and formatting."""
    if value is None or (isinstance(value, float | np.floating) and math.isnan(value)):
        return None
    return value.item() if isinstance(value, np.generic) else value
