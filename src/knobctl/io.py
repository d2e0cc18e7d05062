"""Atomic writes and provenance metadata.

Every output is written to a temporary file in the destination folder and renamed
into place, so an interrupted stage never leaves a half-written file that DVC or a
later stage could mistake for a result.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; swap it into place only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
            os.replace(path, old / "x")
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def recover_dir(path: str | Path) -> None:
    """Finish what a killed :func:`atomic_dir` left behind. A kill between its two renames leaves the previous
    folder in ``.<name>.old.*/x`` and nothing at ``path``: put it back, so a resumable stage finds its last
    checkpoint. Temporary folders of killed writes are removed."""
    path = Path(path)
    if not path.parent.is_dir():
        return
    leftovers = sorted(path.parent.glob(f".{path.name}.*"))
    if not path.exists():
        for old in leftovers:
            if old.name.startswith(f".{path.name}.old.") and (old / "x").is_dir():
                os.replace(old / "x", path)
                break
    for leftover in leftovers:
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)


def rounded(x: Any, digits: int = 4) -> float | None:
    """A metric as a plain float rounded to ``digits`` decimals (JSON-friendly, stable across
    runs, never -0.0); None stays None."""
    return None if x is None else round(float(x), digits) + 0.0


def round4(x: Any) -> float:
    """:func:`rounded` to 4 decimals, for values that are never None."""
    return float(rounded(x, 4))  # type: ignore[arg-type]  # not None for a value that is not None


class OutputSet:
    """Outputs of one stage that land together or not at all (:func:`output_set`)."""

    def __init__(self, stack: contextlib.ExitStack):
        self._stack = stack

    def file(self, path: str | Path) -> Path:
        """A temporary path to write ``path``'s content to; renamed onto ``path`` when the set ends well."""
        return self._stack.enter_context(atomic_path(path))

    def dir(self, path: str | Path) -> Path:
        """A temporary folder to fill for ``path``; swapped into place when the set ends well."""
        return self._stack.enter_context(atomic_dir(path))


@contextlib.contextmanager
def output_set() -> Iterator[OutputSet]:
    """Write several outputs as one: every file and folder is written to a temporary beside its destination,
    and only once all are written are they renamed into place (in reverse order of registration). A failure
    while writing any of them (a full disk, a read-only folder) renames none, so a stage never leaves new
    outputs beside old ones. The renames themselves are cheap metadata operations on the same filesystem."""
    with contextlib.ExitStack() as stack:
        yield OutputSet(stack)


def write_json(path: str | Path, obj: Any) -> None:
    Path(path).write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_csv(path: str | Path, df: pd.DataFrame) -> None:
    df.to_csv(path, index=False)


def write_parquet(path: str | Path, df: pd.DataFrame, metadata: Mapping[str, Any] | None = None) -> None:
    """Write a DataFrame as Parquet with knobctl provenance under the ``knobctl`` key."""
    table = pa.Table.from_pandas(df, preserve_index=False)
    if metadata:
        merged = dict(table.schema.metadata or {})
        merged[b"knobctl"] = json.dumps(dict(metadata), sort_keys=True, default=str).encode()
        table = table.replace_schema_metadata(merged)
    pq.write_table(table, path)


def write_json_atomic(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        write_json(tmp, obj)


def write_csv_atomic(path: str | Path, df: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        write_csv(tmp, df)


def write_parquet_atomic(path: str | Path, df: pd.DataFrame, metadata: Mapping[str, Any] | None = None) -> None:
    """:func:`write_parquet` to a temporary file, renamed onto ``path`` once whole."""
    with atomic_path(path) as tmp:
        write_parquet(tmp, df, metadata)


def read_provenance(path: str | Path) -> dict[str, Any]:
    """The provenance dict written by :func:`write_parquet_atomic` ({} if none)."""
    meta = pq.read_schema(path).metadata or {}
    raw = meta.get(b"knobctl")
    return json.loads(raw) if raw else {}


def params_hash(section: Any) -> str:
    """Stable short hash of a params section (sorted-key JSON)."""
    blob = json.dumps(section, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def git_commit(cwd: str | Path | None = None) -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() or "unknown"


def provenance(params_section: Any = None, *, volatile: bool = True, libraries: Sequence[str] = ("torch", "transformers"),
               host: bool = True, **extra: Any) -> dict[str, Any]:
    """Versions of ``libraries`` (distribution names), machine, git commit, params hash and a UTC timestamp.

    ``volatile=False`` leaves out the git commit and the timestamp, for tables that the
    same params reproduce byte for byte: a rerun then leaves their DVC hash, and so every
    later stage, untouched. ``host=False`` leaves out the Python version and the machine, for a
    table whose bytes do not depend on them (the generated VQA splits), so that the same params
    give the same hash on every machine and the shipped base model's dvc.lock entry holds there.
    """
    from importlib.metadata import version

    meta: dict[str, Any] = {name: version(name) for name in libraries}
    if host:
        meta |= {"python": platform.python_version(), "machine": platform.machine()}
    if volatile:
        meta["git_commit"] = git_commit()
        meta["timestamp"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if params_section is not None:
        meta["params_hash"] = params_hash(params_section)
    meta.update(extra)
    return meta


def file_hash(path: str | Path) -> str:
    """sha256 (16 hex) of one file's bytes."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def checkpoint_hash(source: str | Path) -> str:
    """sha256 (16 hex) over a checkpoint folder's weight and config files; a preset is named."""
    path = Path(source)
    if not path.is_dir():
        return f"preset:{source}"
    h = hashlib.sha256()
    for f in sorted(path.iterdir()):
        if f.is_file() and f.suffix in (".safetensors", ".json"):
            h.update(f.name.encode())
            with f.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()[:16]
