"""Weights are saved only when every value is finite, and a weights file that does not load is named.

A training run whose loss diverged (a learning rate or reward weight far too large, bad rows in a table) ends
with NaN or infinite weights; saved, they would load without a word and every later stage would compute on
them. :func:`check_finite` runs before any file of an artifact is written, so the previous artifact stays whole
and the stage ends with a :class:`NonFiniteWeights` naming the tensor and what to change.

:func:`load_tensors` and :func:`load_json` read an artifact's safetensors and JSON files; a truncated, empty or
malformed one is an :class:`UnreadableWeights` naming the file and how to rebuild it, not a library traceback.

An artifact folder (the controller, the latency estimator) carries a manifest, :data:`MANIFEST`, written after its
other files: each file's hash and what the folder was made for (the knobs grid, the feature names).
:func:`check_manifest` reads it before any other file is parsed, so a truncated LightGBM file (on which
LightGBM aborts the process), a file copied in from another run or one edited by hand is an
:class:`ArtifactMismatch` naming the file, never a crash or a silently different artifact. Files the manifest
does not list (notes, evaluation tables beside the model) are not checked.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from knobctl.io import file_hash, write_json_atomic
from knobctl.params import InputError

MANIFEST = "manifest.json"


class NonFiniteWeights(InputError):
    """Training produced NaN or infinite weights: nothing is saved, so the previous artifact stays whole."""


class UnreadableWeights(InputError):
    """A weights or config file that does not load (truncated, not safetensors, not JSON): named, not a traceback."""


class ArtifactMismatch(InputError):
    """An artifact folder whose files are not the ones its manifest names, or made for another grid or features."""


def write_manifest(folder: str | Path, facts: Mapping[str, Any]) -> None:
    """:data:`MANIFEST` for every file now in ``folder``: ``{"files": {name: hash}, **facts}``. Write it last."""
    folder = Path(folder)
    files = {f.name: file_hash(f) for f in sorted(folder.iterdir()) if f.is_file() and f.name != MANIFEST}
    write_json_atomic(folder / MANIFEST, {"files": files, **facts})


def check_manifest(folder: str | Path, fix: str) -> dict[str, Any]:
    """The folder's manifest once every file it lists is present with its hash: its facts (every key but
    ``files``), or an :class:`ArtifactMismatch` naming the first file that is missing or differs, and ``fix``."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise ArtifactMismatch(f"{folder} has no {MANIFEST}: not a whole folder as knobctl writes it (copied in "
                               f"part, or written by an older version); {fix}")
    data = load_json(path, fix)
    files = data.get("files")
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise UnreadableWeights(f"{path} has no table of file hashes under 'files'; {fix}")
    for name, digest in files.items():
        if not (folder / name).is_file():
            raise ArtifactMismatch(f"{folder / name} is missing: {MANIFEST} lists it; {fix}")
        if file_hash(folder / name) != digest:
            raise ArtifactMismatch(f"{folder / name} is not the file {MANIFEST} names (truncated, edited, or from "
                                   f"another run); {fix}")
    return {k: v for k, v in data.items() if k != "files"}


def load_tensors(path: str | Path, fix: str) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, or an :class:`UnreadableWeights` naming it and ``fix``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise UnreadableWeights(f"{path} does not load ({type(exc).__name__}: {str(exc)[:200]}); {fix}") from exc


def load_json(path: str | Path, fix: str) -> dict:
    """A JSON object file, or an :class:`UnreadableWeights` naming it and ``fix``."""
    try:
        data = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise UnreadableWeights(f"{path} is not readable JSON ({type(exc).__name__}: {exc}); {fix}") from exc
    if not isinstance(data, dict):
        raise UnreadableWeights(f"{path} holds a {type(data).__name__}, not a JSON object; {fix}")
    return data


def check_finite(tensors: Mapping[str, torch.Tensor], where: str | Path, fix: str, loading: bool = False) -> None:
    """Refuse weights holding NaN or infinity (before saving them, or, with ``loading``, after reading them),
    naming the first bad tensor and how many values it has."""
    bad = [(name, int((~torch.isfinite(t)).sum()), t.numel()) for name, t in tensors.items()
           if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        name, n, total = bad[0]
        what = f"in {len(bad)} of {len(tensors)} tensors (first: {name}, {n} of {total} values NaN or infinite)"
        if loading:
            raise NonFiniteWeights(f"{where} holds non-finite weights {what}; {fix}")
        raise NonFiniteWeights(f"{where}: training produced non-finite weights {what}; nothing was saved and the "
                               f"previous one is kept. {fix}")
