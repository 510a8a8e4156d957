"""How the report writes numbers and tables (shared by report.md, the figures and compare)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import pandas as pd

from study.stats import NO_CI


def format_nll(value: float | None) -> str:
    return "—" if value is None or pd.isna(value) else f"{value:.3f}"


def format_seconds(value: float | None) -> str:
    """Three significant digits without scientific notation (0.0123, 1.23, 123)."""
    if value is None or pd.isna(value):
        return "—"
    if value == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(value)))
    if magnitude >= 2:
        return f"{value:.0f}"
    return f"{value:.{2 - magnitude}f}"


def format_percent(value: float | None) -> str:
    return "—" if value is None or pd.isna(value) else f"{100 * value:.1f}%"


def signed(value: float) -> str:
    return f"{value:+.3f}"


def has_ci(low: Any, high: Any) -> bool:
    """A CI whose bounds exist: results files leave both cells empty for fewer than two
    examples (read back as NaN), and the report then writes ``NO_CI`` instead."""
    return not (low is None or high is None or pd.isna(low) or pd.isna(high))


def format_ci(low: Any, high: Any, number: Callable[[float], str] = format_nll) -> str:
    """``[low, high]`` with ``number`` for each bound, or ``no CI (n < 2)``."""
    return f"[{number(float(low))}, {number(float(high))}]" if has_ci(low, high) else NO_CI


def format_share(value: Any) -> str:
    """A share such as ``p_best_is_train_loops`` with two decimals, the words a results file
    wrote in its place (``not in grid``) as they are, or — when absent."""
    if isinstance(value, str):
        return value
    return "—" if value is None or pd.isna(value) else f"{float(value):.2f}"


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def depth_cells(subset: pd.DataFrame, grid: Sequence[int], text: Callable[[pd.Series, int], str]) -> list[str]:
    """One table cell per loop count of ``grid``: ``text(row, loops)`` of ``subset``'s row at
    that count (its ``inference_loops``), or — where it has none."""
    cells = []
    for loops in grid:
        match = subset[subset["inference_loops"] == loops]
        cells.append("—" if match.empty else text(match.iloc[0], loops))
    return cells


def yes_no(value: bool | None) -> str:
    return "—" if value is None else ("yes" if value else "no")


def gaps_text(gaps: list[dict[str, float]]) -> str:
    if not gaps:
        return "—"
    parts = []
    for gap in gaps:
        if not has_ci(gap["ci_low"], gap["ci_high"]):  # one example: neither tied nor worse can be said
            parts.append(f"{gap['loops']} loops: {signed(gap['gap'])} ({NO_CI})")
            continue
        verdict = "worse" if gap["ci_low"] > 0 else "tied"
        parts.append(f"{gap['loops']} loops: {signed(gap['gap'])} {format_ci(gap['ci_low'], gap['ci_high'], signed)} "
                     f"({verdict})")  # fmt: skip
    return "; ".join(parts)
