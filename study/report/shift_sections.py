"""report.md's sections on replicate seeds and the depth-shift test, from
``results/depth_shift.csv`` and ``results/replication.csv`` (``study.stages.nll_shift``
writes both; older runs have neither, and these sections then say so in one line).

Each section says what its numbers cannot support as well as what they show: a handful
of seeds estimates the seed-level variance poorly, a CI covering 0 bounds a shift rather
than showing there is none, and the ``seen`` split is SFT data."""

from __future__ import annotations

import pandas as pd

from study.report.figures import figure_number
from study.report.figures.depth_shift import ACROSS_SEEDS, SPLIT_TITLES
from study.report.formats import markdown_table
from study.report.results import SHIFT_FILES, Results

NOT_IN_GRID = "not in grid"


def _split(split: str) -> str:
    return SPLIT_TITLES.get(split, split)


def _signed(value: float) -> str:
    return f"{value:+.4f}"  # depth gaps are thousandths of a nat: three decimals would hide them


def _with_ci(value: float, low: float, high: float) -> str:
    if pd.isna(value):
        return "—"
    return _signed(value) + (f" [{_signed(low)}, {_signed(high)}]" if pd.notna(low) else " (no CI)")


def _p_text(p: float, resamples: int | None) -> str:
    if pd.isna(p):
        return "—"
    if p == 0 and resamples:
        return f"< {2 / resamples:.2g}"  # no resample crossed 0: the bootstrap's resolution
    return f"{p:.3f}"


def _settings(results: Results) -> tuple[str, int | None]:
    """The confidence level as text and the number of resamples (None when the config is unknown)."""
    if results.config is None:
        return "95%", None
    return f"{100 * results.config.nll.confidence:g}%", results.config.nll.bootstrap_resamples


def _absent(results: Results, heading: str) -> list[str] | None:
    absent = results.absent(*SHIFT_FILES)
    if not absent:
        return None
    unreadable = [f for f in absent if any(p.startswith(f"results/{f}") for p in results.problems)]
    if unreadable:
        return [heading, "", results.missing(unreadable[0]) + ".", ""]
    return [
        heading,
        "",
        f"Not in this run: `results/{absent[0]}` is missing (the `nll` stage writes it from runs with replicate "
        "seeds on; rerun that stage to add it).",
        "",
    ]


def _verdict(row: pd.Series, loops_a: int, loops_b: int) -> str:
    if row["note"] == NOT_IN_GRID:
        return "not testable: a training depth is not in the grid"
    if pd.isna(row["ci_low"]):
        return f"no CI ({row['note']})"
    if row["ci_high"] < 0:
        return f"shift towards {loops_a}: training at {loops_a} favours depth {loops_a} relative to {loops_b}"
    if row["ci_low"] > 0:
        return f"shift against the hypothesis: training at {loops_a} favours depth {loops_b} relative to {loops_a}"
    return f"no shift detected; S beyond ±{max(abs(row['ci_low']), abs(row['ci_high'])):.4f} is excluded"


def depth_shift_section(results: Results) -> list[str]:
    """S per pair and split with its CI, p-value and the per-seed signs."""
    heading = "## The depth-shift test"
    absent = _absent(results, heading)
    if absent is not None:
        return absent
    frame = results.depth_shift
    assert frame is not None  # _absent found the file
    confidence, resamples = _settings(results)
    if frame.empty:
        return [heading, "", "No pair of fine-tuned models with different training depths in this run.", ""]
    rows = []
    s_rows = frame[frame["statistic"] == "S"]
    for (model_a, model_b, split), pair in s_rows.groupby(["model_a", "model_b", "split"], sort=False):
        pooled = pair[pair["seed"] == ACROSS_SEEDS].iloc[0]
        loops_a, loops_b = int(pooled["train_loops_a"]), int(pooled["train_loops_b"])
        single = pair[pair["seed"] != ACROSS_SEEDS]
        negative = int((single["value"] < 0).sum())
        rows.append(
            [
                f"{results.model(str(model_a)).label} − {results.model(str(model_b)).label} ({loops_a} vs {loops_b})",
                _split(str(split)),
                _with_ci(pooled["value"], pooled["ci_low"], pooled["ci_high"]),
                _p_text(pooled["p_value"], resamples),
                int(pooled["seeds"]),
                f"{negative} of {len(single)}" if len(single) else "—",
                _verdict(pooled, loops_a, loops_b),
            ]
        )
    headers = [
        "Pair (training depths)",
        "Split",
        f"S [{confidence} CI]",
        "p",
        "Seed pairs",
        "S < 0 in seeds",
        "Reading",
    ]
    seeds = int(frame["seeds"].max())
    lines = [
        heading,
        "",
        "Does fine-tuning at a depth move the preferred depth towards it? For two fine-tuned models A (trained at "
        "the larger depth a) and B (trained at b), D(K) = NLL_A(K) − NLL_B(K) on the same questions, and "
        "S = D(a) − D(b). S < 0: relative to B, A gains more at a than at b, i.e. training deeper favours the "
        "deeper depth.",
        "",
        markdown_table(headers, rows),
        "",
        f"NLL in nats/token. S and D pool the seed pairs (the mean of each pair's token-weighted NLL difference); "
        f"their {confidence} CIs are two-level percentile bootstraps"
        + (f" ({resamples} resamples)" if resamples else "")
        + ": seed pairs resampled with replacement, then questions, one question resample for both models, every "
        "depth and every seed. p is two-sided: the share of resamples on the other side of 0, doubled. "
        '"S < 0 in seeds" counts the seed pairs whose own S is negative.',
        "",
        "What these numbers cannot support:",
        "",
        f"- With {seeds} seed pair{'s' if seeds != 1 else ''}, the seed level of the bootstrap draws from "
        f"{seeds} value{'s' if seeds != 1 else ''}: the between-seed variance is poorly estimated. Where seeds differ "
        "much more than question noise explains, the CIs are too narrow (on synthetic curves with 3 seeds and no "
        "true shift, the 95% CI of S covered 0 in 87% of data sets when seed offsets were 2.5 times the question "
        "noise of a seed's mean); where they differ little, the CIs are wide (resampling both levels counts each "
        "seed's question noise twice). The per-seed signs are the plainer evidence.",
        "- A CI that covers 0 bounds the shift; it does not show that there is none.",
        "- S compares two depths only: it says nothing about which depth either model prefers (see the replication "
        "section), nor about depths outside the grid.",
        "- Pairs and splits are not corrected for multiple comparisons.",
        "- The `seen` split, where present, is SFT data: the fine-tuned models were trained on those questions.",
        "",
        "Source: `results/depth_shift.csv` (D at every depth, S pooled and per seed pair); "
        f"Figure {figure_number('depth_shift')} draws D(K).",
        "",
    ]
    return lines


def _gaps(pooled: pd.DataFrame) -> str:
    parts = []
    for _, row in pooled.sort_values("inference_loops").iterrows():
        if row["inference_loops"] == row["best_loops"]:
            continue
        low, high = row["gap_ci_low"], row["gap_ci_high"]
        verdict = "" if pd.isna(low) else (" worse" if low > 0 else " tied")
        parts.append(f"{int(row['inference_loops'])}: {_with_ci(row['gap_to_best'], low, high)}{verdict}")
    return "; ".join(parts) or "—"


def replication_section(results: Results) -> list[str]:
    """Per model and split: how many seeds prefer the training depth, and the pooled gaps."""
    heading = "## Replication across seeds"
    absent = _absent(results, heading)
    if absent is not None:
        return absent
    frame = results.replication
    assert frame is not None  # _absent found the file
    confidence, _ = _settings(results)
    rows = []
    for (model, split), group in frame.groupby(["model", "split"], sort=False):
        pooled = group[group["seed"] == ACROSS_SEEDS]
        if pooled.empty:
            continue
        first = pooled.iloc[0]
        single_rows = group[group["seed"] != ACROSS_SEEDS]
        singles = single_rows[single_rows["is_best"].astype(bool)]
        per_seed = ", ".join(f"{r['seed'] or 'once'}: {int(r['best_loops'])}" for _, r in singles.iterrows())
        if first["best_is_train_loops"] == NOT_IN_GRID:
            k_of_n = NOT_IN_GRID
        else:
            k_of_n = f"{int(first['seeds_best_at_train'])} of {int(first['seeds'])}"
        rows.append(
            [
                results.model(str(model)).label,
                int(first["train_loops"]),
                _split(str(split)),
                k_of_n,
                per_seed or "—",
                int(first["best_loops"]),
                # one seed: no across-seed CI, so its own question-bootstrap gaps stand in, marked
                _gaps(pooled) if int(first["seeds"]) > 1 or single_rows.empty else _gaps(single_rows) + " †",
            ]
        )
    headers = [
        "Model", "Train depth", "Split", "Seeds with argmin = train depth", "Argmin per seed", "Pooled argmin",
        f"Gap to pooled argmin by depth [{confidence} two-level CI]",
    ]  # fmt: skip
    seeds = int(frame.loc[frame["seed"] == ACROSS_SEEDS, "seeds"].max()) if (frame["seed"] == ACROSS_SEEDS).any() else 0
    return [
        heading,
        "",
        markdown_table(headers, rows),
        "",
        "NLL gaps in nats/token. The pooled curve is the mean over seeds of each seed's token-weighted NLL; its "
        'gaps carry two-level bootstrap CIs (seeds, then questions: "tied" when the CI contains 0). Each seed\'s '
        "own argmin and its question-bootstrap gaps are the per-seed rows of `results/replication.csv`.",
        "",
        f'With {seeds} seeds, "k of n" is a count, not a rate: it cannot distinguish a stable preference from '
        "chance among depths whose gaps are tied, and the seed-level variance behind the CIs is poorly estimated "
        "(see the depth-shift test). † A model run once (the base) has no across-seed CI: its gaps carry "
        "question-bootstrap CIs, which say nothing about training randomness.",
        "",
        f"Source: `results/replication.csv`; the bottom row of Figure {figure_number('depth_shift')} draws the "
        "pooled gaps.",
        "",
    ]
