"""Every error a user can cause, and what each means for the exit code.

A user error (bad config, a missing file, a run directory in use, ...) is printed as one
line naming the file or field and what was expected, and the run exits with
``USER_ERROR_EXIT``; nothing already computed is changed. A bug is anything else: it keeps
its traceback. The modules that raise these errors import them from here, so this module
imports nothing of the project and is cheap to import.
"""

from __future__ import annotations

USER_ERROR_EXIT = 2
INTERRUPTED_EXIT = 130  # 128 + SIGINT, as shells report a Ctrl-C


class StudyError(Exception):
    """A user-facing error of the study itself (a stage's precondition, a missing input)."""


class ConfigError(ValueError):
    """A config file or ``--set`` override that does not validate (one line, the key named)."""


class DataError(ValueError):
    """A data file that is missing, unreadable or not GSM8K-shaped."""


class CheckpointError(ValueError):
    """A checkpoint that does not match the LoopFormer layout (user error, not a bug)."""


class BackboneError(ValueError):
    """A base model that cannot be loaded as the configured backbone (missing offline
    file, unsupported architecture)."""


class ManifestError(ValueError):
    """A run directory's manifest.json that is not a manifest."""


class OutputError(OSError):
    """The output directory cannot be written (full disk, read-only, ...)."""


class RunLockError(RuntimeError):
    """The run directory is in use by another live run."""


class ProcessFailed(Exception):
    """Another process of the run failed; its message is this one's."""


class Interrupted(Exception):
    """Ctrl-C arrived; the stage stopped at a cell boundary (not an error: exit 130)."""


USER_ERRORS: tuple[type[BaseException], ...] = (
    StudyError,
    ConfigError,
    DataError,
    CheckpointError,
    BackboneError,
    ManifestError,
    OutputError,
    RunLockError,
    ProcessFailed,
)


def one_line(error: BaseException) -> str:
    """The message of a user error as the single line the command prints."""
    return " ".join(str(error).split())
