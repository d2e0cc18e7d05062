"""The registry :func:`knobctl.model.runtime.load_runtime` dispatches through: one :class:`Backend` per model
format, found from a folder's family (``config.json``'s ``model_type``, :data:`knobctl.model.families.FAMILIES`)
or a preset's entry (:data:`knobctl.model.presets.PRESETS`); :mod:`knobctl.model.sources` says what a source may
be, from the same registries, for the stages' ``--help``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from knobctl.model import family_layout, internvl_layout, llava_layout
from knobctl.model.checkpoint import check_checkpoint, resolve_source
from knobctl.model.families import Family
from knobctl.model.layout import Loaded, LoadOptions
from knobctl.model.presets import PRESETS, Preset


@dataclass(frozen=True)
class Backend:
    """How the checkpoints of one model format load and its presets build; both give a :class:`Loaded`."""

    load_folder: Callable[[Path, Family, LoadOptions], Loaded]
    build_preset: Callable[[str, Preset, LoadOptions], Loaded]


#: Model formats by :attr:`Family.backend` and :attr:`Preset.backend`.
BACKENDS: dict[str, Backend] = {
    "knobctl": Backend(load_folder=llava_layout.load_folder, build_preset=llava_layout.build_preset),
    "hub": Backend(load_folder=family_layout.load_folder, build_preset=family_layout.build_preset),
    "internvl": Backend(load_folder=internvl_layout.load_folder, build_preset=internvl_layout.build_preset),
}


def load_source(source: str | Path, options: LoadOptions) -> Loaded:
    """A checkpoint folder by its family's backend (the folder a train_base record names, for such a folder), or a
    preset by its own; a folder is checked before any weights are built."""
    path = resolve_source(Path(source)) if Path(source).is_dir() else Path(source)
    if path.is_dir():
        family = check_checkpoint(path)
        return BACKENDS[family.backend].load_folder(path, family, options)
    if options.source in PRESETS:
        preset = PRESETS[options.source]
        return BACKENDS[preset.backend].build_preset(options.source, preset, options)
    raise ValueError(f"{source!r} is neither a preset ({', '.join(PRESETS)}) nor a checkpoint directory")
