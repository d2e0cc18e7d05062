"""Declared contracts of the tables the stages pass to each other, checked on read and before write.

A stage that reads a table it did not write trusts nothing about it: a truncated file, a missing column, an
answers column stored as one string (scored character by character), repeated sample ids, a score of 5 or a
negative latency would otherwise crash deep inside the stage or, worse, give a wrong result with exit 0.
Each :class:`TableContract` declares a table's columns (type, allowed range, nulls, finiteness), its key
(unique), and that it is not empty; :func:`read_table` reads a Parquet file and checks it, and a writer calls
:meth:`TableContract.check` before writing. A violation is one :class:`TableContractError` naming the file,
the column, how many rows break it, an example and what is allowed, and how to rebuild the table.

The type check uses pyarrow's own types (read from the file's schema, so a column of strings where a list is
due is caught before any value is looked at); ranges, nulls and finiteness are vectorised pandas checks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from knobctl.params import InputError


class TableContractError(InputError):
    """A table that breaks its declared contract; the message names the file, the column and the rows."""


#: Column kinds and the pyarrow types that satisfy them.
KINDS = {
    "string": lambda t: pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t),
    "int": pa.types.is_integer,
    "float": lambda t: pa.types.is_floating(t) or pa.types.is_integer(t) or pa.types.is_null(t),
    "binary": lambda t: pa.types.is_binary(t) or pa.types.is_large_binary(t),
    "list[string]": lambda t: (pa.types.is_list(t) or pa.types.is_large_list(t))
    and (pa.types.is_string(t.value_type) or pa.types.is_large_string(t.value_type)),
    "list[float]": lambda t: (pa.types.is_list(t) or pa.types.is_large_list(t)) and pa.types.is_floating(t.value_type),
    "any": lambda t: True,
}


@dataclass(frozen=True)
class Column:
    """One declared column: its kind (a key of :data:`KINDS`), the closed range its values must lie in, whether
    nulls (or NaN) are allowed, and for lists whether an empty one is."""

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    nullable: bool = False
    empty_list: bool = False
    max_len: int | None = None  # strings: the longest allowed, in characters

    def allowed(self) -> str:
        what = [self.kind.replace("list[", "a list of ").replace("]", "s") if "list" in self.kind else self.kind]
        if self.low is not None or self.high is not None:
            what.append(f"in [{self.low if self.low is not None else '-inf'}, "
                        f"{self.high if self.high is not None else 'inf'}], finite")
        elif self.kind == "float":
            what.append("finite")
        if self.max_len is not None:
            what.append(f"at most {self.max_len:,} characters")
        what.append("null allowed" if self.nullable else "no nulls")
        if "list" in self.kind and not self.empty_list:
            what.append("not empty")
        return ", ".join(what)


@dataclass(frozen=True)
class TableContract:
    """A table's declared shape: columns (others may follow), a unique key, non-empty, and how to rebuild it."""

    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...] = ()
    rebuild: str = "rebuild it with `dvc repro`"
    allow_empty: bool = False
    optional: tuple[str, ...] = field(default_factory=tuple)

    def check(self, df: pd.DataFrame, where: str | Path, schema: pa.Schema | None = None) -> pd.DataFrame:
        """``df`` unchanged if it keeps the contract, else a :class:`TableContractError` on the first breach."""
        def fail(what: str) -> TableContractError:
            return TableContractError(f"{where} ({self.name} table): {what}; {self.rebuild}")

        if not self.allow_empty and len(df) == 0:
            raise fail("it has 0 rows")
        schema = schema if schema is not None else _schema_of(df)
        for col in self.columns:
            if col.name not in df.columns:
                if col.name in self.optional:
                    continue
                raise fail(f"column {col.name!r} is missing (columns: {', '.join(map(str, df.columns))})")
            if col.name in schema.names and not KINDS[col.kind](schema.field(col.name).type):
                raise fail(f"column {col.name!r} is {schema.field(col.name).type}, allowed: {col.allowed()}")
            bad, example = _bad_values(df[col.name], col)
            if bad:
                shown = repr(example) if len(repr(example)) <= 60 else repr(example)[:57] + "..."
                raise fail(f"column {col.name!r}: {bad} of {len(df)} rows break it (e.g. {shown}); allowed: "
                           f"{col.allowed()}")
        knob_columns = ["config", "tier", "top_k", "num_blocks"]
        if len(df) and set(knob_columns) <= set(df.columns):  # a label that disagrees with its knobs misleads joins
            label = df["tier"].astype(str) + "/k" + df["top_k"].astype(str) + "/b" + df["num_blocks"].astype(str)
            wrong = df["config"].astype(str) != label
            if wrong.any():
                first = df.loc[wrong, knob_columns].iloc[0].to_dict()
                raise fail(f"column 'config': {int(wrong.sum())} of {len(df)} rows name another configuration than "
                           f"their tier, top_k and num_blocks (e.g. {first}); allowed: '<tier>/k<top_k>/b<num_blocks>'")
        if self.key and len(df):
            dup = df.duplicated(list(self.key), keep=False)
            if dup.any():
                first = df.loc[dup, list(self.key)].iloc[0].to_dict()
                raise fail(f"{int(dup.sum())} rows repeat a key ({', '.join(self.key)}), e.g. {first}; each must "
                           "occur once")
        return df


def _schema_of(df: pd.DataFrame) -> pa.Schema:
    try:
        return pa.Schema.from_pandas(df, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed types in a column: the value checks name the row
        return pa.schema([])


def _bad_values(s: pd.Series, col: Column) -> tuple[int, object]:
    """How many values of ``s`` break ``col``, and the first of them."""
    if col.kind.startswith("list"):
        isnull = s.isna() if s.dtype != object else s.map(lambda v: v is None)
        shape_bad = s.map(lambda v: v is not None and not isinstance(v, (list, tuple, np.ndarray)))
        empty = s.map(lambda v: isinstance(v, (list, tuple, np.ndarray)) and len(v) == 0)
        bad = shape_bad | (isnull & (not col.nullable)) | (empty & (not col.empty_list))
        if col.kind == "list[float]" and not bad.any():
            finite = s.map(lambda v: v is None or bool(np.isfinite(np.asarray(v, dtype=np.float64)).all()))
            bad = bad | ~finite
        return int(bad.sum()), (s[bad].iloc[0] if bad.any() else None)
    isnull = s.isna()
    bad = isnull if not col.nullable else pd.Series(False, index=s.index)
    if col.kind in ("float", "int"):
        values = pd.to_numeric(s, errors="coerce")
        not_number = values.isna() & ~isnull
        out = not_number | (~isnull & ~np.isfinite(values.fillna(0.0).astype(np.float64)))
        if col.low is not None:
            out |= values < col.low
        if col.high is not None:
            out |= values > col.high
        bad = bad | out
    elif col.kind == "string":
        bad = bad | s.map(lambda v: v is not None and not (isinstance(v, float) and np.isnan(v))
                          and (not isinstance(v, str) or (col.max_len is not None and len(v) > col.max_len)))
    elif col.kind == "binary":
        bad = bad | s.map(lambda v: v is not None and not isinstance(v, (bytes, bytearray)))
    return int(bad.sum()), (_plain(s[bad].iloc[0]) if bad.any() else None)


def _plain(value: object) -> object:
    """A numpy scalar as the Python number it holds, so that messages read ``5.0``, not ``np.float64(5.0)``."""
    return value.item() if isinstance(value, np.generic) else value


def read_table(path: str | Path, contract: TableContract, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Read a Parquet table and check it; an unreadable file (missing, truncated, not Parquet) is named too."""
    path = Path(path)
    if not path.is_file():
        raise TableContractError(f"{path} ({contract.name} table) not found; {contract.rebuild}")
    try:
        schema = pq.read_schema(path)
        df = pd.read_parquet(path, columns=list(columns) if columns else None)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise TableContractError(f"{path} ({contract.name} table) is not a readable Parquet file "
                                 f"({type(exc).__name__}: {str(exc)[:200]}); {contract.rebuild}") from exc
    return contract.check(df, path, schema)


VQA_SPLIT = TableContract(
    "VQA split",
    # a question of 100k characters ran 2 minutes at 5 GB; VQAv2's longest are about 200
    (Column("sample_id", "string"), Column("image", "binary"), Column("question", "string", max_len=1000),
     Column("answers", "list[string]"), Column("question_type", "string")),
    key=("sample_id",), rebuild="rebuild it with `dvc repro prepare_data`")

ROLLOUTS = TableContract(
    "rollouts",
    (Column("sample_id", "string"), Column("config", "string"), Column("tier", "string"),
     Column("top_k", "int", low=1), Column("num_blocks", "int", low=1),
     Column("score", "float", low=0.0, high=1.0, nullable=True),  # null on a sample's error row
     # null on an error row, so pandas may hold them as floats
     Column("input_tokens", "float", low=1, nullable=True), Column("output_tokens", "float", low=0, nullable=True)),
    key=("sample_id", "config"), rebuild="rebuild it with `dvc repro accuracy_table`")

FEATURES = TableContract(
    "rollout features",
    (Column("sample_id", "string"), Column("language", "list[float]")),
    key=("sample_id",), rebuild="rebuild it with `dvc repro accuracy_table`")

PROFILE_SUMMARY = TableContract(
    "profile summary",
    (Column("config", "string"), Column("tier", "string"), Column("top_k", "int", low=1),
     Column("num_blocks", "int", low=1), Column("text_tokens", "int", low=0), Column("output_tokens", "int", low=0),
     *(Column(f"{part}_{stat}", "float", low=0.0) for part in ("vision_ms", "prefill_ms", "decode_ms_per_token",
                                                                "total_ms") for stat in ("median", "p10", "p90"))),
    key=("config", "text_tokens", "output_tokens"), rebuild="rebuild it with `dvc repro profile_latency`")
