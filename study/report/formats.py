"""How the report writes numbers and tables (shared by report.md, the figures and compare)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd


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


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def yes_no(value: bool | None) -> str:
    return "—" if value is None else ("yes" if value else "no")


def gaps_text(gaps: list[dict[str, float]]) -> str:
    if not gaps:
        return "—"
    parts = []
    for gap in gaps:
        verdict = "worse" if gap["ci_low"] > 0 else "tied"
        parts.append(
            f"{gap['loops']} loops: {signed(gap['gap'])} [{signed(gap['ci_low'])}, {signed(gap['ci_high'])}] "
            f"({verdict})"
        )
    return "; ".join(parts)
