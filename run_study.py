#!/usr/bin/env python
"""Run the loopdepth study, stage by stage, resumably.

    python run_study.py --version v17 --seed 2026           # the published confirmation run (GPU, internet)
    python run_study.py --version mini                      # the embedded offline default (CPU)
    python run_study.py compare runs/v16-seed2026 runs/v17-seed2026 --out runs/compare

Stages run in order: check, sft, nll, exact_match, latency, report. A stage whose
outputs exist for the same config is skipped, so rerunning after a crash resumes.
This file only orchestrates; each stage lives in its own module under study/.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
import time
from pathlib import Path

STAGE_MODULES = {
    "check": "study.stages.check",
    "sft": "study.stages.sft",
    "nll": "study.stages.nll",
    "adaptive": "study.stages.adaptive",
    "exact_match": "study.stages.exact_match",
    "latency": "study.stages.latency",
    "report": "study.stages.report",
}
STAGES_IN_ORDER = tuple(STAGE_MODULES)
USER_ERROR_EXIT = 2
INTERRUPTED_EXIT = 130
MAIN_PROCESS_STAGES = ("check", "report")  # under accelerate launch the other processes wait for these


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
        choices=[*STAGE_MODULES, "all"],
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
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks for user errors too")
    return parser


def build_compare_parser() -> argparse.ArgumentParser:
    from study.report import build_compare_parser as report_compare_parser

    parser = report_compare_parser()
    parser.prog = "run_study.py compare"
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks for user errors too")
    return parser


def quiet_libraries() -> None:
    """Library chatter off; the progress bars that say something on: the hub's download
    bars (fetching a released checkpoint takes minutes) and the stages' own. Off are the
    bars of every model load and of datasets' tokenizing passes over a few hundred rows."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not sys.stderr.isatty():
        # a log file (CI), not a terminal: every tqdm bar redraws at most every 30 s, not 10 times a second
        os.environ.setdefault("TQDM_MININTERVAL", "30")
    import datasets
    import huggingface_hub
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # switches the hub's bars off too...
    # ...which downloads should show, unless the user switched them off (HF_HUB_DISABLE_PROGRESS_BARS=1:
    # the hub then warns on stderr instead, and an error would no longer be one line)
    if importlib.import_module("huggingface_hub.utils.tqdm").HF_HUB_DISABLE_PROGRESS_BARS is not True:
        huggingface_hub.utils.enable_progress_bars()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()


def is_hub_id(source: str) -> bool:
    """An ``owner/name`` id that is not an existing local path."""
    if Path(source).exists():
        return False
    parts = source.split("/")
    return len(parts) == 2 and all(parts) and not source.startswith((".", "~"))


def preflight(config) -> str | None:
    """Fail before anything is written when a config needs the hub and the hub cannot be
    reached. Returns the commit the model revision resolves to (None off the hub)."""
    from study.config import EMBEDDED_BASE, OFFLINE_SMOLLM2
    from study.pipeline import StudyError

    source = config.model.source
    if source == OFFLINE_SMOLLM2:
        from study.models import smollm2

        try:
            smollm2.gguf_path()  # the offline model ships in a pip package: say how to get it
        except smollm2.ModelUnavailable as error:
            raise StudyError(f"model.source {OFFLINE_SMOLLM2}: {error}") from None
        source = EMBEDDED_BASE  # local: nothing to reach below
    if source != EMBEDDED_BASE and not is_hub_id(source) and not Path(source).is_dir():
        raise StudyError(f"model.source: {source!r} is neither a local folder nor a hub id (owner/name)")
    needs = []
    if source not in (EMBEDDED_BASE, OFFLINE_SMOLLM2) and is_hub_id(source):
        needs.append(("model", source))
    if config.data.source == "hub":
        needs.append(("dataset", "openai/gsm8k"))
    if not needs:
        return None
    import huggingface_hub

    api = huggingface_hub.HfApi()
    resolved_commit = None
    for kind, repo in needs:
        try:
            if kind == "model":
                info = api.model_info(repo, revision=config.model.revision)
                resolved_commit = info.sha
            else:
                api.dataset_info(repo)
        except Exception as error:  # offline, DNS, 404, auth: all mean "cannot run as configured"
            hint = (
                "pass --model LOCAL_FOLDER (a checkpoint in the released layout)"
                if kind == "model"
                else "pass --set data.source=bundled (the bundled GSM8K copy)"
            )
            reason = " ".join(str(error).split())[:60]
            raise StudyError(
                f"{'model.source' if kind == 'model' else 'data.source'}: cannot reach the Hugging Face hub for "
                f"{repo!r} ({type(error).__name__}: {reason}); run with internet access, or {hint}"
            ) from None
    return resolved_commit


def prepare_run_dir(run_dir: Path, config, force: bool):
    """The run directory's manifest. A directory of another run (another config name or
    seed, or files but no manifest) is refused unless ``force`` moves it aside; a config
    change within the same run is fine: stages whose sections or inputs changed are redone."""
    from study.manifest import Manifest, ManifestError, now
    from study.pipeline import StudyError

    manifest_path = run_dir / "manifest.json"
    if manifest_path.is_file():
        try:
            existing = Manifest(manifest_path)
        except ManifestError as error:
            conflict, what = True, f"a manifest.json that is not a manifest ({str(error).split(': ', 1)[-1]})"
        else:
            old = existing.data.get("config") or {}
            conflict = (old.get("name"), old.get("seed")) != (config.name, config.seed)
            what = f"a run of another config ({old.get('name')!r}, seed {old.get('seed')})"
            if not conflict and existing.config_hash != config.identity_hash():
                print("the config differs from this run's last one: stages whose sections changed are redone")
    else:
        conflict = run_dir.is_dir() and any(run_dir.iterdir())
        what = "files but no manifest.json"
    if conflict:
        if not force:
            raise StudyError(
                f"--output-dir: {run_dir} holds {what}; use another --output-dir, "
                "or --force to move it aside and start anew"
            )
        # nothing is deleted: the earlier run is kept beside the new one
        aside = run_dir.with_name(f"{run_dir.name}.replaced-{now().replace(':', '')}")
        run_dir.rename(aside)
        print(f"moved the earlier run to {aside}", flush=True)
    return Manifest(manifest_path)


# stages that read the base model (directly, or through the models trained from it)
USES_BASE = ("sft", "nll", "adaptive", "exact_match", "latency")


def run(args: argparse.Namespace, argv: list[str]) -> int:
    quiet_libraries()
    from study import distributed
    from study.config import load_config
    from study.lock import RunLock
    from study.pipeline import RunContext, StudyError, configure_torch, resolve_device, stage_done
    from study.validation import check_run_dir_path, validate_before_writing

    config = load_config(args.version, args.overrides, seed=args.seed)
    if args.model is not None:
        model = {"source": args.model}
        if not any(item.startswith("model.label=") for item in args.overrides):
            # another base: the config's label would name the wrong model
            model["label"] = Path(args.model).name or args.model
        config = config.model_copy(update={"model": config.model.model_copy(update=model)})
    if args.device is not None:
        config = config.model_copy(update={"device": args.device})
    configure_torch(config)
    device = resolve_device(config.device)
    if device.type == "cuda" and distributed.launched():  # accelerate launch: one GPU per process
        device = distributed.state().device
    resolved_commit = preflight(config)
    run_dir = args.output_dir or Path("runs") / f"{config.name}-seed{config.seed}"
    check_run_dir_path(run_dir, "--output-dir" if args.output_dir else "name (the default run directory)")
    ctx = RunContext(
        config=config, run_dir=run_dir, device=device, skip_checks=args.skip_checks, resolved_commit=resolved_commit
    )
    ctx.subsets  # noqa: B018 - bad data or impossible subset sizes fail here, before anything is written
    validate_before_writing(ctx)
    wanted = list(STAGES_IN_ORDER) if "all" in args.stages else [s for s in STAGES_IN_ORDER if s in args.stages]
    gate_added = not args.skip_checks and "check" not in wanted and any(s in USES_BASE for s in wanted)
    if gate_added:  # the gate guards every stage that uses the base; only --skip-checks passes it by
        wanted.insert(0, "check")
    needs_models = [s for s in wanted if s in ("nll", "adaptive", "exact_match", "latency")]
    if needs_models and "sft" not in wanted and not stage_done(ctx, "sft"):
        raise StudyError(
            f"--stages {' '.join(needs_models)}: the sft stage has not run for this config and these inputs; add sft"
        )

    # under accelerate launch every process runs this; the main one alone holds the run
    # directory's lock (the others are the same run) and prepares the directory
    lock = distributed.run_on_main(lambda: RunLock(run_dir).acquire())
    try:
        if lock is not None and lock.takeover_note():
            print(lock.takeover_note(), flush=True)
        return run_stages(ctx, args, argv, wanted, gate_added)
    finally:
        if lock is not None:
            lock.release()


def run_stages(ctx, args: argparse.Namespace, argv: list[str], wanted: list[str], gate_added: bool) -> int:
    from study import distributed
    from study.manifest import now
    from study.pipeline import (
        STAGE_SECTIONS,
        Interrupted,
        changed_inputs,
        mark_stage_done,
        recorded_stage_key,
        refresh_model_outputs,
        stage_done,
        stage_key,
    )
    from study.stages.check import gate_error, recorded_failures

    config, run_dir, device = ctx.config, ctx.run_dir, ctx.device
    main_process = distributed.is_main()
    manifest = distributed.run_on_main(lambda: prepare_run_dir(run_dir, config, args.force))
    distributed.run_on_main(lambda: _start_manifest(manifest, ctx, argv, args))
    if main_process:
        print(f"loopdepth: {config.name} (seed {config.seed}) on {device} -> {run_dir}", flush=True)
        if gate_added:
            print("[check] added: the sanity gate runs before any stage that uses the base", flush=True)
        elif args.skip_checks and "check" not in wanted:
            print("[check] not run (--skip-checks): the base is not gated; the manifest and report say so", flush=True)
    if distributed.num_processes() > 1:
        print(f"  process {distributed.process_index()} of {distributed.num_processes()} on {device}", flush=True)
    with ctx.sigint_between_cells():
        for stage in wanted:
            # every process sees the same finished stages: markers are written before each settle
            key = stage_key(ctx, stage)
            done = stage != "report" and stage_done(ctx, stage, key)
            failures = recorded_failures(ctx) if done and stage == "check" else []
            if failures and not args.skip_checks:
                raise gate_error(failures)  # a failure recorded under --skip-checks still gates a run without it
            if done and failures is not None:
                if main_process:
                    print(f"[{stage}] done already (same config and inputs): skipped", flush=True)
                continue
            if main_process:
                changed = changed_inputs(ctx, stage, key)
                print(f"[{stage}] running" + (f" (changed: {', '.join(changed)})" if changed else ""), flush=True)
                if stage == "report":
                    recorded = {s: recorded_stage_key(run_dir, s) for s in STAGES_IN_ORDER[:-1]}
                    stale = [s for s, k in recorded.items() if k is not None and k != stage_key(ctx, s)]
                    if stale:
                        print(
                            f"[report] note: the results of {', '.join(stale)} were computed from another config or "
                            "other inputs than this command's; rerun those stages to update them",
                            flush=True,
                        )
            discarded = distributed.run_on_main(lambda stage=stage: refresh_model_outputs(ctx, stage))
            if discarded:
                print(f"[{stage}] inputs changed for {', '.join(discarded)}: their earlier outputs are discarded")
            started = time.time()
            if main_process:
                manifest.begin_stage(stage, started=now())
            module = importlib.import_module(STAGE_MODULES[stage])
            try:
                if stage in MAIN_PROCESS_STAGES:
                    distributed.run_on_main(lambda module=module: module.run(ctx))
                else:  # every process takes its share (sweep cells, SFT models)
                    distributed.run_everywhere(lambda module=module: module.run(ctx))
            except (Interrupted, KeyboardInterrupt, distributed.ProcessFailed) as error:
                if isinstance(error, distributed.ProcessFailed) and distributed.num_processes() == 1:
                    raise
                if main_process:
                    manifest.stage(stage, interrupted=now())
                if isinstance(error, distributed.ProcessFailed):
                    print(f"error: {error}", file=sys.stderr)
                    return USER_ERROR_EXIT
                print(
                    f"interrupted during {stage}: finished work is kept. Resume with: python {' '.join(argv)}",
                    file=sys.stderr,
                )
                return INTERRUPTED_EXIT
            if main_process:
                mark_stage_done(ctx, stage, key)
                sections = STAGE_SECTIONS[stage] or tuple(config.model_dump(mode="json"))
                manifest.stage(
                    stage,
                    finished=now(),
                    seconds=round(time.time() - started, 3),
                    # provenance of this stage's results, kept until the stage itself reruns
                    config={k: v for k, v in config.model_dump(mode="json").items() if k in sections},
                    **key,
                )
                print(f"[{stage}] finished in {time.time() - started:.1f} s", flush=True)
            distributed.settle(None)  # the next stage starts from this one's finished outputs
    report = run_dir / "report.md"
    if report.is_file() and main_process:
        print(f"report: {report}")
    return 0


def _start_manifest(manifest, ctx, argv: list[str], args: argparse.Namespace) -> None:
    from study.io import atomic_write_json
    from study.pipeline import RESOLVED_CONFIG

    config = ctx.config
    manifest.start(config, ctx.device, argv, args.skip_checks)
    atomic_write_json(ctx.run_dir / RESOLVED_CONFIG, config.model_dump(mode="json"))
    manifest.update(
        # what this invocation was given; each stage's own record (stages.<name>.inputs)
        # names what its results were computed from
        data={
            "source": config.data.source,
            "directory": config.data.directory,
            "sha256": ctx.dataset.sha256,
            "subsets": ctx.subsets.as_dict(),
        },
        model={
            "source": config.model.source,
            "resolved_path": ctx.base_spec.source,
            "revision": config.model.revision,
            "resolved_commit": ctx.resolved_commit,
            "label": config.model.label,
            "backbone": config.model.backbone,
            "train_loops": ctx.base_spec.train_loops,
            "loop_family": ctx.loop_family.describe(),
            # the offline SmolLM2: which GGUF file, its sha256, and that it was Q4_1-quantized
            "provenance": ctx.prepare_base(),
        },
    )


def user_errors() -> tuple[type[BaseException], ...]:
    from study.config import ConfigError
    from study.distributed import ProcessFailed
    from study.io import OutputError
    from study.lock import RunLockError
    from study.manifest import ManifestError
    from study.models.backbones import BackboneError
    from study.models.loopformer import CheckpointError
    from study.pipeline import StudyError
    from study.tasks.gsm8k import DataError

    return (
        ConfigError,
        DataError,
        StudyError,
        CheckpointError,
        OutputError,
        ManifestError,
        RunLockError,
        BackboneError,
        ProcessFailed,
    )


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:  # Ctrl-C before the stages start (imports, validation): nothing was written
        print("interrupted", file=sys.stderr)
        return INTERRUPTED_EXIT


def _main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["compare"]:
        args = build_compare_parser().parse_args(argv[1:])
        action = lambda: _compare(args)  # noqa: E731
    else:
        args = build_parser().parse_args(argv)
        action = lambda: run(args, ["run_study.py", *argv])  # noqa: E731
    try:
        return action()
    except user_errors() as error:
        if args.debug:
            raise
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)  # one line, whatever the message
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


def _compare(args: argparse.Namespace) -> int:
    from study.manifest import read_manifest
    from study.pipeline import StudyError
    from study.report import compare

    for run_dir in args.run_dirs:
        if not (run_dir / "manifest.json").is_file():
            raise StudyError(f"{run_dir}: not a run directory (no manifest.json)")
        read_manifest(run_dir / "manifest.json")  # garbage, empty or not an object: one line naming it
    compare(list(args.run_dirs), args.out)
    print(f"comparison: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
