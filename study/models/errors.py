"""The models' user-facing errors, in a module of their own so that every model module
can raise them without importing another (``loopformer`` and ``validation`` used to
import each other for ``CheckpointError``). Both are reported in one line, exit code 2."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint that does not match the LoopFormer layout (user error, not a bug)."""


class BackboneError(ValueError):
    """A backbone that cannot be loaded or run as configured (user error, one line)."""
