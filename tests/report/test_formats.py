"""study.report.formats: how numbers and tables are written."""

from __future__ import annotations

from study.report.formats import format_nll, format_percent, format_seconds, gaps_text, markdown_table


def test_number_formats() -> None:
    assert format_nll(1.23456) == "1.235" and format_nll(None) == "—"
    assert [format_seconds(v) for v in (0.012345, 1.2345, 12.345, 123.4, 0.0)] == ["0.0123", "1.23", "12.3", "123", "0"]
    assert format_percent(0.125) == "12.5%"


def test_gaps_say_tied_when_the_ci_contains_zero() -> None:
    gaps = [{"loops": 4, "gap": 0.01, "ci_low": -0.002, "ci_high": 0.02}, {"loops": 8, "gap": 0.1, "ci_low": 0.05,
            "ci_high": 0.15}]  # fmt: skip
    assert gaps_text(gaps) == "4 loops: +0.010 [-0.002, +0.020] (tied); 8 loops: +0.100 [+0.050, +0.150] (worse)"
    assert gaps_text([]) == "—"


def test_markdown_table_escapes_pipes() -> None:
    assert markdown_table(["a", "b"], [["x|y", 1]]) == "| a | b |\n|---|---|\n| x\\|y | 1 |"
