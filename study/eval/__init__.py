"""lm-evaluation-harness at every depth policy (see ``study/eval/README.md``).

Importing this package registers the lm-eval model ``loopdepth`` (``LoopDepthLM``);
``python -m study.eval`` is lm-eval's own command line with that model known and the
offline task copies (``study.eval.offline_tasks``) in place.
"""

from __future__ import annotations

import study.models.loopformer  # noqa: F401  (registers LoopFormer, so --model hf loads its folders too)
from study.eval.lm import LoopDepthLM

__all__ = ["LoopDepthLM"]
