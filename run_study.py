#!/usr/bin/env python
"""Run the loopdepth study, stage by stage, resumably.

    python run_study.py --version v17 --seed 2026           # the published confirmation run (GPU, internet)
    python run_study.py --version mini                      # the embedded offline default (CPU)
    python run_study.py compare runs/v16-seed2026 runs/v17-seed2026 --out runs/compare

Stages run in order: check, sft, nll, adaptive, exact_match, latency, report. A stage
whose outputs exist for the same config and inputs is skipped, so rerunning after a crash
resumes. This file parses the command line and turns errors into exit codes; the run
itself is ``study.run``, and each stage lives in its own module under ``study/stages/``.
"""

from __future__ import annotations

import os
import signal


def _interrupted_during_start_up(signum: int, frame: object) -> None:
    # A KeyboardInterrupt raised inside a half-done import (torch takes seconds) leaves the
    # interpreter unable to import the rest, so whatever handled it would fail with a
    # traceback; nothing has been written yet, so leave at once.
    os.write(2, b"interrupted\n")
    os._exit(130)


# From the first line until start-up is over (imports, validation): study.run installs the
# stage-boundary handler once the run directory is about to be taken. Only as a program:
# a test importing this module keeps its own handler.
if __name__ == "__main__":
    signal.signal(signal.SIGINT, _interrupted_during_start_up)

import argparse  # noqa: E402
import errno  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from study.errors import INTERRUPTED_EXIT, USER_ERROR_EXIT, one_line  # noqa: E402
from study.stages import PIPELINE_ORDER  # noqa: E402

# shown under --help; tests/test_config.py parses and validates every one of them
EXAMPLES = """examples:
  python run_study.py --version smoke                     # the quick look: tiny model, a few examples (CPU)
  python run_study.py --version mini                      # the embedded offline default (CPU)
  python run_study.py --version v17 --seed 2026           # the published confirmation run (GPU, internet)
  python run_study.py --version mini --set data.nll_test_examples=50 --set nll.inference_loops=[2,8]
  python run_study.py --version mini --stages report      # redraw the report of a finished run
  python run_study.py compare runs/v16-seed2026 runs/v17-seed2026 --out runs/compare
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run_study.py",
        description="Which inference loop depth does LoopFormer prefer after SFT, and what does each loop cost? "
        "Runs the study's stages for one config version. Use `run_study.py compare RUN_DIR ...` to compare runs.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version", required=True, help="config name under configs/ (v16, v17, mini, smoke) or a path to a YAML file"
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: the config's seed)")
    parser.add_argument(
        "--output-dir", type=Path, default=None, help="run directory (default: runs/<version>-seed<seed>)"
    )
    parser.add_argument(
        "--stages",
        nargs="+",
        choices=[*PIPELINE_ORDER, "all"],
        default=["all"],
        help="stages to run, in pipeline order (default: all); finished stages are skipped",
    )
    parser.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], default=None, help="device (default: the config's device)"
    )
    parser.add_argument(
        "--model",
        default=None,
        help="base model: hub repo id or local folder in the released layout (overrides model.source)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set data.nll_test_examples=4 or --set nll.inference_loops=[2,8] "
        "(repeatable; validated like the file)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="the output directory holds another config's run: move it aside (to <dir>.replaced-<time>) and start anew",
    )
    parser.add_argument(
        "--skip-checks", action="store_true", help="go on when the sanity checks fail (the report then says so)"
    )
    parser.add_argument(
        "--no-recompute",
        action="store_true",
        help="a finished stage's output file that is missing or changed ends the run, naming the file "
        "(default: the stage that wrote it reruns and writes it again)",
    )
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks for user errors too")
    return parser


def build_compare_parser() -> argparse.ArgumentParser:
    from study.report import build_compare_parser as report_compare_parser

    parser = report_compare_parser()
    parser.prog = "run_study.py compare"
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks for user errors too")
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside a stage: finished work is kept
        print("interrupted", file=sys.stderr)
        return INTERRUPTED_EXIT


def _main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    comparing = argv[:1] == ["compare"]
    args = build_compare_parser().parse_args(argv[1:]) if comparing else build_parser().parse_args(argv)
    from study import run  # after parsing: --help and a misspelt flag answer before torch loads
    from study.errors import USER_ERRORS

    try:
        return run.compare(args) if comparing else run.run(args, ["run_study.py", *argv])
    except USER_ERRORS as error:
        if args.debug:
            raise
        print(f"error: {one_line(error)}", file=sys.stderr)  # one line, whatever the message
        return USER_ERROR_EXIT
    except OSError as error:
        # a full disk or a read-only folder met outside our own atomic writers
        disk = (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT, errno.ENAMETOOLONG, errno.EFBIG)
        if args.debug or error.errno not in disk:
            raise
        where = str(error.filename or "output")
        where = where if len(where) <= 160 else f"{where[:80]}...{where[-40:]}"  # the line stays short
        print(f"error: {where}: {error.strerror}", file=sys.stderr)
        return USER_ERROR_EXIT


if __name__ == "__main__":
    sys.exit(main())
