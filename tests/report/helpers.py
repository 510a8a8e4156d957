"""Reading report.md and figures back in the report tests."""

from __future__ import annotations

from typing import Any

from matplotlib.axes import Axes
from matplotlib.lines import Line2D

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def section(text: str, heading: str) -> str:
    """The body of the ``## heading...`` section of a markdown text."""
    start = text.index(f"## {heading}")
    end = text.find("\n## ", start + 3)
    return text[start : end if end != -1 else None]


def table_row(text: str, label: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith(f"| {label} | "))
    return [cell.strip() for cell in line.strip("|").split(" | ")]


def curves(ax: Axes) -> list[Line2D]:
    """The data lines of an axes (not one-point stars, vertical markers or error-bar caps)."""
    return [
        line for line in ax.get_lines() if len(set(line.get_xdata())) > 1 and line.get_linestyle() not in ("None", "")
    ]


def legend_texts(container: Any) -> list[str]:
    """The legend entries of an axes, or of a figure's first figure-level legend."""
    legend = container.get_legend() if hasattr(container, "get_legend") else container.legends[0]
    return [text.get_text() for text in legend.get_texts()]
