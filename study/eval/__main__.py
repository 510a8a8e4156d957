"""``python -m study.eval``: lm-eval's command line, with ``--model loopdepth`` known.

lm-eval 0.4 has no plugin hook for models outside its package, so this imports the
project's registration first and then hands the arguments, unchanged, to lm-eval's own
entry point (``lm_eval.__main__.cli_evaluate``). Offline task copies are used as
``LOOPDEPTH_OFFLINE_TASKS`` says (``study.eval.offline_tasks``). After the run, the
loops each request of a ``loopdepth`` model executed are written beside lm-eval's
results as ``executed_loops_<date>.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

EXECUTED_PREFIX = "executed_loops_"


def output_path(argv: Sequence[str]) -> Path | None:
    """``--output_path`` (or ``-o``) of an lm-eval command line, if any."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--output_path", "-o", default=None)
    known, _ = parser.parse_known_args(list(argv))
    return Path(known.output_path) if known.output_path else None


def write_executed_loops(where: Path, records: list[dict]) -> Path | None:
    """Write ``records`` beside the newest ``results_<date>.json`` under ``where`` (the
    folder lm-eval just saved to), named with the same date; None when there is none."""
    candidates = (
        [where] if where.suffix == ".json" else sorted(where.rglob("results_*.json"), key=lambda p: p.stat().st_mtime)
    )
    if not records or not candidates or not candidates[-1].exists():
        return None
    results = candidates[-1]
    date = results.stem.removeprefix("results_")
    target = results.with_name(f"{EXECUTED_PREFIX}{date}.jsonl")
    with target.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, sort_keys=True) + "\n")
    return target


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    from lm_eval.__main__ import cli_evaluate

    from study.eval import LoopDepthLM, offline_tasks

    offline_tasks.install()
    first = len(LoopDepthLM.executed_logs)  # the models this run makes (a caller may have made others)
    sys.argv = ["lm-eval", *args]  # lm-eval's parser reads sys.argv
    cli_evaluate()
    where = output_path(args)
    records = [record for log in LoopDepthLM.executed_logs[first:] for record in log]
    if where is not None and records:
        written = write_executed_loops(where, records)
        if written is not None:
            print(f"executed loops per request: {written}")


if __name__ == "__main__":
    main()
