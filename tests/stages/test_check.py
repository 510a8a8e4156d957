"""The check stage's gate: what it measures on a real base, what it records, and the
one line it stops a run with."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from study.errors import StudyError
from study.stages import check
from tests.support.helpers_sweep import make_context


def test_checks_of_a_base_are_recorded_and_the_gate_stops_a_failing_one(tmp_path: Path) -> None:
    ctx = make_context(tmp_path)
    checks = check.run_checks(ctx)
    names = [c.name for c in checks]
    assert "tokenizer_fits_embedding" in names and "eos_ids_agree" in names
    assert all(c.message for c in checks)
    failed = [c for c in checks if not c.passed]
    ctx.results_dir.mkdir(parents=True)
    if failed:  # the tiny random base is at the uniform guess: the NLL gate refuses it
        with pytest.raises(StudyError, match="sanity checks failed"):
            check.run(ctx)
        assert check.recorded_failures(ctx) == [c.message for c in failed]
    else:
        check.run(ctx)
        assert check.recorded_failures(ctx) == []
    recorded = json.loads(ctx.results_path("checks.json").read_text())
    assert recorded["passed"] is (not failed) and len(recorded["checks"]) == len(checks)


def test_gate_error_is_one_short_line_naming_the_first_failure() -> None:
    error = check.gate_error(["base NLL 10.8 nats/token", "eos ids differ", "pad id differs"])
    text = str(error)
    assert text.startswith("sanity checks failed: base NLL 10.8 nats/token (+2 more in results/checks.json)")
    assert "\n" not in text and len(text) < 300 and "--skip-checks" in text
    assert "(+" not in str(check.gate_error(["only one"]))


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, None),  # never ran
        ("{torn", None),  # unreadable: run it again
        (json.dumps({"passed": True, "checks": [{"message": "m", "passed": True}]}), []),
        (json.dumps({"passed": False, "checks": [{"message": "bad", "passed": False}]}), ["bad"]),
        (json.dumps({"passed": False, "checks": []}), None),  # says failed, names nothing: not trusted
    ],
)
def test_recorded_failures(tmp_path: Path, content: str | None, expected: list[str] | None) -> None:
    ctx = make_context(tmp_path)
    if content is not None:
        ctx.results_dir.mkdir(parents=True)
        ctx.results_path("checks.json").write_text(content)
    assert check.recorded_failures(ctx) == expected
