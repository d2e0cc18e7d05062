"""The stages' command line for a model source: ``--help`` says what a source may be, written from the registries
of families (:data:`knobctl.model.families.FAMILIES`) and presets (:data:`knobctl.model.presets.PRESETS`), so a
new family or preset shows there by itself. A stage's docstring writes :data:`SOURCES` where the list goes, and
its ``--model`` help is :func:`model_sources`. Both registries load without torch or transformers, which a
stage must not wait for before it checks its params.
"""

from __future__ import annotations

import argparse
import textwrap

from knobctl.model.families import FAMILIES
from knobctl.model.presets import PRESETS

#: Where a stage's docstring lists the model sources (:func:`source_parser` fills it in).
SOURCES = "{model sources}"


def model_sources() -> str:
    """What a model source may be, in one sentence."""
    hub = [f"{f.short_name} ({f.model_type})" for f in FAMILIES.values() if f.backend != "knobctl"]
    families = hub[0] if len(hub) == 1 else f"{', '.join(hub[:-1])} or {hub[-1]}"
    return ("a checkpoint folder: knobctl's own format (models/base), a " + families + " folder as downloaded from "
            "the hub, or a folder train_base recorded for model.source; or a preset: " + ", ".join(PRESETS)
            + " (random weights, for latency)")


def source_parser(description: str | None) -> argparse.ArgumentParser:
    """An argument parser for a stage whose docstring writes :data:`SOURCES` where the model sources go (printed
    raw, so the list is wrapped to the docstrings' width)."""
    if description:
        description = description.replace(SOURCES, textwrap.fill(model_sources(), 110))
    return argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
