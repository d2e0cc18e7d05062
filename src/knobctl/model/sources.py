"""The stages' command line for a model source: ``--help`` says what a source may be, written from the registries
of families (:data:`knobctl.model.families.FAMILIES`) and presets (:data:`knobctl.model.presets.PRESETS`), so a
new family or preset shows there by itself. A stage's docstring and argument help write :data:`SOURCES` where the
list goes. Both registries load without torch or transformers, which ``--help`` must not wait for.
"""

from __future__ import annotations

import argparse
import textwrap
from typing import Any

from knobctl.model.families import FAMILIES
from knobctl.model.presets import PRESETS

#: Where a stage's description or argument help lists the model sources; replaced when ``--help`` prints.
SOURCES = "{model sources}"


def model_sources() -> str:
    """What a model source may be, in one sentence."""
    hub = [f"{f.short_name} ({f.model_type})" for f in FAMILIES.values() if f.backend != "knobctl"]
    families = hub[0] if len(hub) == 1 else f"{', '.join(hub[:-1])} or {hub[-1]}"
    return ("a checkpoint folder: knobctl's own format (models/base), a " + families + " folder as downloaded from "
            "the hub, or a folder train_base recorded for model.source; or a preset: " + ", ".join(PRESETS)
            + " (random weights, for latency)")


class _SourcesHelp(argparse.Action):
    """``-h/--help`` that fills in :data:`SOURCES` before printing."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest=dest, default=argparse.SUPPRESS, nargs=0,
                         help="show this help message and exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        text = model_sources()
        if parser.description and SOURCES in parser.description:
            # The description is printed raw: wrap the list to the docstring's width.
            parser.description = parser.description.replace(SOURCES, textwrap.fill(text, 110))
        for action in parser._actions:
            if action.help and SOURCES in action.help:
                action.help = action.help.replace(SOURCES, text)
        parser.print_help()
        parser.exit()


def source_parser(description: str | None) -> argparse.ArgumentParser:
    """An argument parser whose ``--help`` lists the model sources where :data:`SOURCES` stands."""
    ap = argparse.ArgumentParser(description=description, add_help=False,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-h", "--help", action=_SourcesHelp)
    return ap
