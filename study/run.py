"""One run of the study: validate, take the run directory, run the stages in order.

``run_study.py`` parses the command line and maps errors to exit codes; everything in
between is here. Stages come from ``study.stages.STAGES`` and are skipped while their
recorded key (``study.stages.keys``) still holds, so a rerun resumes where a run stopped.
Under ``accelerate launch`` every process runs this; the main one alone holds the run
lock, writes the manifest and runs the main-process stages (``Stage.main_process_only``).
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from study.errors import INTERRUPTED_EXIT, USER_ERROR_EXIT, BackboneError, Interrupted, ManifestError, StudyError

if TYPE_CHECKING:
    from study.manifest import Manifest
    from study.pipeline import RunContext
    from study.stages.stage import Stage


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

    source = config.model.source
    if source == OFFLINE_SMOLLM2:
        from study.models import smollm2

        try:
            smollm2.gguf_path()  # the offline model ships in a pip package: say how to get it
        except BackboneError as error:  # smollm2.ModelUnavailable
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
    from study.manifest import Manifest, now

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


def load_run_config(args: argparse.Namespace):
    """The validated config of this command: the version file, ``--set``, ``--seed``,
    ``--model`` and ``--device`` applied."""
    from study.config import load_config

    config = load_config(args.version, args.overrides, seed=args.seed)
    if args.model is not None:
        model = {"source": args.model}
        if not any(item.startswith("model.label=") for item in args.overrides):
            # another base: the config's label would name the wrong model
            model["label"] = Path(args.model).name or args.model
        config = config.model_copy(update={"model": config.model.model_copy(update=model)})
    if args.device is not None:
        config = config.model_copy(update={"device": args.device})
    return config


def stages_to_run(requested: list[str], skip_checks: bool) -> tuple[list[Stage], bool]:
    """The stages of ``--stages`` in pipeline order, with the check gate put in front of
    any stage that uses the base (only ``--skip-checks`` passes it by). Returns the stages
    and whether the gate was added."""
    from study.stages import STAGES, stage_named

    wanted = [s for s in STAGES if "all" in requested or s.name in requested]
    gate = stage_named("check")
    gate_added = not skip_checks and gate not in wanted and any(s.uses_base for s in wanted)
    if gate_added:
        wanted.insert(0, gate)  # the gate comes first in PIPELINE_ORDER too
    return wanted, gate_added


def run(args: argparse.Namespace, argv: list[str]) -> int:
    quiet_libraries()
    from study import distributed
    from study.lock import RunLock, check_held
    from study.pipeline import RunContext, configure_torch, resolve_device
    from study.stages import stage_named
    from study.stages.keys import stage_done
    from study.validation import check_run_dir_path, validate_before_writing

    config = load_run_config(args)
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
    wanted, gate_added = stages_to_run(args.stages, args.skip_checks)
    needs_models = [s.name for s in wanted if s.needs_sft]
    sft = stage_named("sft")
    if needs_models and sft not in wanted and not stage_done(ctx, sft):
        raise StudyError(
            f"--stages {' '.join(needs_models)}: the sft stage has not run for this config and these inputs; add sft"
        )

    # Start-up is over: from here Ctrl-C raises KeyboardInterrupt (run_study.py exits at once
    # before this point), and inside the stage loop it stops at the next cell boundary.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
    # under accelerate launch every process runs this; the main one alone holds the run
    # directory's lock and prepares the directory, and the others check that the lock's
    # holder is their own launch's main process (not a launch that got there first)
    launch = distributed.launch_identity()
    lock = distributed.run_on_main(lambda: RunLock(run_dir, launch=launch).acquire())
    try:
        if launch is not None:  # the other ranks: is it our own launch's rank 0 that holds it?
            distributed.run_everywhere(lambda: None if distributed.is_main() else check_held(run_dir, launch))
        if lock is not None and lock.takeover_note():
            print(lock.takeover_note(), flush=True)
        return StageLoop(ctx, args, argv).run(wanted, gate_added)
    finally:
        if lock is not None:
            lock.release()


class StageLoop:
    """The stages of one command, in order: skip what is done, run the rest, record each."""

    def __init__(self, ctx: RunContext, args: argparse.Namespace, argv: list[str]) -> None:
        from study import distributed

        self.ctx, self.args, self.argv = ctx, args, argv
        self.main_process = distributed.is_main()
        self._manifest: Manifest | None = None
        self.recompute: set[str] = set()  # finished stages whose recorded outputs changed

    @property
    def manifest(self) -> Manifest:
        assert self._manifest is not None, "the main process prepares the run directory first"
        return self._manifest

    def say(self, message: str) -> None:
        if self.main_process:
            print(message, flush=True)

    def run(self, wanted: list[Stage], gate_added: bool) -> int:
        from study import distributed

        ctx, args = self.ctx, self.args
        self._manifest = distributed.run_on_main(lambda: prepare_run_dir(ctx.run_dir, ctx.config, args.force))
        self.say(f"loopdepth: {ctx.config.name} (seed {ctx.config.seed}) on {ctx.device} -> {ctx.run_dir}")
        # before the manifest records this invocation: a refusal (--no-recompute) changes nothing
        wanted, gate_added = self.check_outputs(wanted, gate_added)
        distributed.run_on_main(lambda: start_manifest(self.manifest, ctx, self.argv, args))
        if gate_added:
            self.say("[check] added: the sanity gate runs before any stage that uses the base")
        elif args.skip_checks and all(s.name != "check" for s in wanted):
            self.say("[check] not run (--skip-checks): the base is not gated; the manifest and report say so")
        if distributed.num_processes() > 1:
            print(
                f"  process {distributed.process_index()} of {distributed.num_processes()} on {ctx.device}", flush=True
            )
        with ctx.sigint_between_cells():
            for stage in wanted:
                exit_code = self.run_stage(stage)
                if exit_code is not None:
                    return exit_code
                distributed.settle(None)  # the next stage starts from this one's finished outputs
        report = ctx.run_dir / "report.md"
        if report.is_file():
            self.say(f"report: {report}")
        return 0

    def check_outputs(self, wanted: list[Stage], gate_added: bool) -> tuple[list[Stage], bool]:
        """Check the recorded outputs of every stage up to the last wanted one: the wanted
        ones may be reused, the earlier ones are read. A missing or changed file reruns the
        stage that wrote it (added to the run if it was not asked for), so its outputs come
        back as they were; with --no-recompute the run ends in one line naming the file."""
        from study import distributed
        from study.outputs import describe, remove_changed_folders, stage_changes
        from study.stages import PIPELINE_ORDER, stage_named

        run_dir = self.ctx.run_dir
        checked = PIPELINE_ORDER[: max(PIPELINE_ORDER.index(s.name) for s in wanted) + 1]
        # decided once, by the main process, so every process runs the same stages
        changes = distributed.from_main(lambda: stage_changes(run_dir, checked)) or {}
        if not changes:
            return wanted, gate_added
        if getattr(self.args, "no_recompute", False):
            name, found = next(iter(changes.items()))
            raise StudyError(
                f"{run_dir}: {describe(found)}; not recomputed (--no-recompute): "
                f"rerun without --no-recompute to rerun {name}"
            )
        for name, found in changes.items():
            self.say(f"{describe(found)}: rerunning {name}")
            # a folder it keeps when present (sft's models) must go, or it would not be written anew
            distributed.run_on_main(partial(remove_changed_folders, run_dir, stage_named(name).outputs, found))
        self.recompute = set(changes)
        names = sorted({s.name for s in wanted} | self.recompute)
        more, gate = stages_to_run(names, self.args.skip_checks)
        return more, gate_added or gate

    def skip(self, stage: Stage, key: dict[str, object]) -> bool:
        """Is the stage finished for this config and these inputs? A check gate that
        recorded failures still stops a run without --skip-checks."""
        from study.stages.check import gate_error, recorded_failures
        from study.stages.keys import stage_done

        done = not stage.always_reruns and stage.name not in self.recompute and stage_done(self.ctx, stage, key)
        failures = recorded_failures(self.ctx) if done and stage.name == "check" else []
        if failures and not self.args.skip_checks:
            raise gate_error(failures)  # a failure recorded under --skip-checks still gates a run without it
        if done and failures is not None:
            self.say(f"[{stage.name}] done already (same config and inputs): skipped")
            return True
        return False

    def announce(self, stage: Stage, key: dict[str, object]) -> None:
        from study.stages import STAGES
        from study.stages.keys import changed_inputs, recorded_stage_key, stage_key

        changed = changed_inputs(self.ctx, stage, key)
        self.say(f"[{stage.name}] running" + (f" (changed: {', '.join(changed)})" if changed else ""))
        if stage.reads == "none":  # the report: does it draw results of another config?
            earlier = [s for s in STAGES if s is not stage]
            recorded = {s.name: (s, recorded_stage_key(self.ctx.run_dir, s)) for s in earlier}
            stale = [name for name, (s, k) in recorded.items() if k is not None and k != stage_key(self.ctx, s)]
            if stale:
                self.say(
                    f"[{stage.name}] note: the results of {', '.join(stale)} were computed from another config or "
                    "other inputs than this command's; rerun those stages to update them"
                )

    def run_stage(self, stage: Stage) -> int | None:
        """Run one stage unless it is done; an exit code when the run must end here."""
        from study import distributed
        from study.manifest import load_average, now
        from study.stages.keys import mark_stage_done, refresh_model_outputs, stage_key

        ctx = self.ctx
        # every process sees the same finished stages: markers are written before each settle
        key = stage_key(ctx, stage)
        if self.skip(stage, key):
            return None
        if self.main_process:
            self.announce(stage, key)
        discarded = distributed.run_on_main(lambda: refresh_model_outputs(ctx, stage))
        if discarded:
            print(f"[{stage.name}] inputs changed for {', '.join(discarded)}: their earlier outputs are discarded")
        started = time.time()
        if self.main_process:
            self.manifest.begin_stage(stage.name, started=now(), load_average_start=load_average())
        try:
            if stage.main_process_only:
                distributed.run_on_main(lambda: stage.run(ctx))
            else:  # every process takes its share (sweep cells, SFT models)
                distributed.run_everywhere(lambda: stage.run(ctx))
        except (Interrupted, KeyboardInterrupt, distributed.ProcessFailed) as error:
            if isinstance(error, distributed.ProcessFailed) and distributed.num_processes() == 1:
                raise
            if self.main_process:
                self.manifest.stage(stage.name, interrupted=now())
            if isinstance(error, distributed.ProcessFailed):
                print(f"error: {error}", file=sys.stderr)
                return USER_ERROR_EXIT
            resume = f"python {' '.join(self.argv)}"
            print(f"interrupted during {stage.name}: finished work is kept. Resume with: {resume}", file=sys.stderr)
            return INTERRUPTED_EXIT
        if self.main_process:
            outputs = mark_stage_done(ctx, stage, key)
            config = ctx.config.model_dump(mode="json")
            sections = stage.sections or tuple(config)
            self.manifest.stage(
                stage.name,
                finished=now(),
                seconds=round(time.time() - started, 3),
                load_average_end=load_average(),  # 1/5/15-minute load: stage times on a shared machine
                # provenance of this stage's results, kept until the stage itself reruns
                config={k: v for k, v in config.items() if k in sections},
                **key,
                outputs=outputs,  # the bytes it wrote: checked before they are reused or read
            )
            self.say(f"[{stage.name}] finished in {time.time() - started:.1f} s")
        return None


def start_manifest(manifest, ctx, argv: list[str], args: argparse.Namespace) -> None:
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
            "tokenizer": base_tokenizer_record(ctx),
        },
    )


def base_tokenizer_record(ctx) -> dict | None:
    """The base tokenizer's record (``study.manifest.tokenizer_record``); None when it cannot
    be loaded yet (the stage that needs it says why, in one line)."""
    from study.manifest import tokenizer_record

    try:
        return tokenizer_record(ctx.load_tokenizer())
    except StudyError:
        return None


def compare(args: argparse.Namespace) -> int:
    from study.manifest import read_manifest
    from study.outputs import verify_results
    from study.report import compare as compare_runs

    for run_dir in args.run_dirs:
        if not (run_dir / "manifest.json").is_file():
            raise StudyError(f"{run_dir}: not a run directory (no manifest.json)")
        read_manifest(run_dir / "manifest.json")  # garbage, empty or not an object: one line naming it
        verify_results(run_dir)  # results files that are not the bytes their stages wrote: one line
    compare_runs(list(args.run_dirs), args.out)
    print(f"comparison: {args.out}")
    return 0
