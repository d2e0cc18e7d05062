"""Incremental, resumable tables: rows are flushed to numbered Parquet part files.

A long stage appends rows as it goes; each flush is one atomic part file, so a run that is
killed loses at most the rows not yet flushed, and a rerun reads the parts back to skip what
is already measured. The folder is keyed by what determines the rows (a params hash), so a
run with other params never mixes with stale parts.

No flush ever replaces a part: the next number is one past the highest on disk, and the file
is created exclusively (another writer that took the number first makes this one move on).
A missing number (a part deleted, say because it was damaged) is reported by name: its rows
are absent, and a stage that resumes by :meth:`PartStore.done_keys` measures them again. A
part that cannot be read is an error naming the file, never skipped or half merged.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from knobctl.params import InputError

_PART = re.compile(r"part-(\d+)\.parquet")


class PartStoreError(InputError):
    """A part file that cannot be trusted: unreadable, of other columns, or a gap where strictness was asked.

    Bad input rather than a bug, so a stage prints the message (which names the file and what to do) alone."""


def part_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


class PartStore:
    """Numbered ``part-00000.parquet`` files in one folder, plus an in-memory buffer."""

    def __init__(self, directory: str | Path, flush_every: int = 50, columns: Sequence[str] | None = None):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.flush_every = flush_every
        self.columns = list(columns) if columns else None
        self._buffer: list[dict[str, Any]] = []
        self._reported_gaps: tuple[int, ...] = ()

    def _indexed_parts(self) -> list[tuple[int, Path]]:
        # By number, not by name: names stop sorting numerically past 99999 parts.
        found = ((_PART.fullmatch(p.name), p) for p in self.directory.glob("part-*.parquet"))
        return sorted((int(m.group(1)), p) for m, p in found if m)

    def _parts(self) -> list[Path]:
        return [p for _, p in self._indexed_parts()]

    def gaps(self) -> list[int]:
        """Part numbers below the highest one that have no file (their rows are not in :meth:`read`)."""
        have = {i for i, _ in self._indexed_parts()}
        return [i for i in range(max(have) + 1) if i not in have] if have else []

    def _read_part(self, path: Path) -> pd.DataFrame:
        try:
            df = pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises several types for a damaged file
            raise PartStoreError(
                f"{path} cannot be read ({type(exc).__name__}: {exc}); it is not merged. Delete that one file and "
                "rerun the stage: it measures the part's rows again (or delete the whole folder to start afresh)"
            ) from exc
        missing = [c for c in self.columns or [] if c not in df.columns]
        if missing:
            raise PartStoreError(f"{path} lacks the columns {missing}; it was written by other code. Delete it and "
                                 "rerun the stage to measure its rows again")
        return df

    def read(self, allow_gaps: bool = True) -> pd.DataFrame:
        """Every flushed row, in the order written.

        A gap in the numbering is named on stderr (once per store and gap set), or raised with
        ``allow_gaps=False``, where every part is expected to be present.
        """
        gaps = self.gaps()
        if gaps:
            names = ", ".join(part_name(i) for i in gaps[:10]) + (" ..." if len(gaps) > 10 else "")
            text = (f"{len(gaps)} part file(s) missing in {self.directory}: {names}; their rows are absent "
                    "(a stage that resumes measures them again)")
            if not allow_gaps:
                raise PartStoreError(text)
            if tuple(gaps) != self._reported_gaps:
                print(f"PartStore: {text}", file=sys.stderr)
                self._reported_gaps = tuple(gaps)
        parts = self._parts()
        if not parts:
            return pd.DataFrame(columns=self.columns)
        return pd.concat([self._read_part(p) for p in parts], ignore_index=True)

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
        df = pd.DataFrame(self._buffer, columns=self.columns)
        fd, tmp = tempfile.mkstemp(prefix=".part.", suffix=".tmp", dir=self.directory)
        os.close(fd)
        try:
            pq.write_table(pa.Table.from_pandas(df, preserve_index=False), tmp)
            parts = self._indexed_parts()
            index = parts[-1][0] + 1 if parts else 0
            while not _link_new(Path(tmp), self.directory / part_name(index)):
                index += 1  # another writer took this number between our listing and our link
        finally:
            Path(tmp).unlink(missing_ok=True)
        self._buffer = []

    def clear(self) -> None:
        """Remove the folder once its rows are merged into the final output."""
        self._buffer = []
        shutil.rmtree(self.directory, ignore_errors=True)


def _link_new(src: Path, dst: Path) -> bool:
    """Give the finished file ``src`` the name ``dst`` only if no file has it; False if one does.

    A hard link is atomic and refuses an existing name (a rename would replace it). Where the
    file system has no hard links, the name is reserved by an exclusive create first, then
    replaced by the finished file, so a reader may glimpse an empty part for that instant.
    """
    try:
        os.link(src, dst)
        return True
    except FileExistsError:
        return False
    except OSError:
        pass
    try:
        os.close(os.open(dst, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    os.replace(src, dst)
    return True
