"""knobctl: a latency-budget controller for Mixture-of-Experts vision-language models.

The public names load lazily, so a stage that needs only the data layer (or ``--help``) does not
import torch and transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from knobctl.knobs import KnobConfig, KnobGrid
    from knobctl.model.runtime import Runtime, load_runtime
    from knobctl.vqa.metric import normalize_answer, vqa_score

_PUBLIC = {
    "KnobConfig": "knobctl.knobs",
    "KnobGrid": "knobctl.knobs",
    "Runtime": "knobctl.model.runtime",
    "load_runtime": "knobctl.model.runtime",
    "normalize_answer": "knobctl.vqa.metric",
    "vqa_score": "knobctl.vqa.metric",
}
__all__ = ["KnobConfig", "KnobGrid", "Runtime", "load_runtime", "normalize_answer", "vqa_score"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'knobctl' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])
