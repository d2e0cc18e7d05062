"""Incremental, resumable tables: rows are flushed to numbered Parquet part files.

A long stage appends rows as it goes; each flush is one atomic part file, so a run that is
killed loses at most the rows not yet flushed, and a rerun reads the parts back to skip what
is already measured. The folder is keyed by what determines the rows (a params hash), so a
run with other params never mixes with stale parts.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from knobctl.io import write_parquet_atomic


class PartStore:
    """Numbered ``part-00000.parquet`` files in one folder, plus an in-memory buffer."""

    def __init__(self, directory: str | Path, flush_every: int = 50, columns: Sequence[str] | None = None):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.flush_every = flush_every
        self.columns = list(columns) if columns else None
        self._buffer: list[dict[str, Any]] = []

    def _parts(self) -> list[Path]:
        return sorted(self.directory.glob("part-*.parquet"))

    def read(self) -> pd.DataFrame:
        """Every flushed row, in the order written."""
        parts = self._parts()
        if not parts:
            return pd.DataFrame(columns=self.columns)
        return pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)

    def done_keys(self, key_columns: Sequence[str]) -> set[tuple[Any, ...]]:
        df = self.read()
        if df.empty:
            return set()
        return set(df[list(key_columns)].itertuples(index=False, name=None))

    def append(self, row: Mapping[str, Any]) -> None:
        self._buffer.append(dict(row))
        if len(self._buffer) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        if not self._buffer:
            return
        index = len(self._parts())
        df = pd.DataFrame(self._buffer, columns=self.columns)
        write_parquet_atomic(self.directory / f"part-{index:05d}.parquet", df)
        self._buffer = []

    def clear(self) -> None:
        """Remove the folder once its rows are merged into the final output."""
        self._buffer = []
        shutil.rmtree(self.directory, ignore_errors=True)
