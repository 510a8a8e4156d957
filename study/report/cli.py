"""The command line: ``python -m study.report`` redraws a run's figures and report.md,
``python -m study.report compare`` compares runs.

    python -m study.report --run-dir runs/mini-seed2026 [--export-figures figures]
    python -m study.report compare runs/v16-seed2026 runs/v17-seed2026 --out runs/compare
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from study.errors import USER_ERROR_EXIT, StudyError, one_line
from study.report.compare import compare
from study.report.markdown import regenerate


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m study.report",
        description="Redraw the figures and report.md of an existing run directory "
        "(`python -m study.report compare RUN_DIR ... --out DIR` compares runs).",
    )
    parser.add_argument("--run-dir", type=Path, required=True, help="run directory (with manifest.json and results/)")
    parser.add_argument("--export-figures", type=Path, default=None, metavar="OUTDIR", help="also copy the PNGs here")
    return parser


def build_compare_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m study.report compare", description="Cross-run Table 1 and NLL overlay."
    )
    parser.add_argument("run_dirs", nargs="+", type=Path, help="run directories to compare")
    parser.add_argument("--out", type=Path, default=Path("runs/compare"), help="output folder (default: runs/compare)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["compare"]:
        args = build_compare_parser().parse_args(argv[1:])
        for run_dir in args.run_dirs:
            if not (run_dir / "manifest.json").is_file():
                print(f"error: {run_dir}: not a run directory (no manifest.json)", file=sys.stderr)
                return 2
        try:
            path = compare(args.run_dirs, args.out)
        except StudyError as error:  # e.g. runs of different tokenizers: one line, nothing written
            print(f"error: {one_line(error)}", file=sys.stderr)
            return USER_ERROR_EXIT
        print(f"comparison: {path}")
        return 0
    args = build_parser().parse_args(argv)
    if not args.run_dir.is_dir():
        print(f"error: --run-dir: {args.run_dir} is not a directory", file=sys.stderr)
        return 2
    if not (args.run_dir / "manifest.json").is_file() and not (args.run_dir / "results").is_dir():
        print(f"error: --run-dir: {args.run_dir} has neither manifest.json nor results/", file=sys.stderr)
        return 2
    path = regenerate(args.run_dir, args.export_figures)
    print(f"report: {path}")
    if args.export_figures is not None:
        print(f"figures copied to {args.export_figures}")
    return 0
