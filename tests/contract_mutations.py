"""Hypothesis strategies that damage a valid table the ways a buggy writer or a hand edit would, for the property
tests of the table readers (tests/test_contracts_properties.py).

A mutation is drawn from: a column dropped or renamed; a column of another type (strings where numbers or lists
are due, numbers where strings are, lists where scalars are, all null); a few cells set to a value of the
column's own type that may break its range (NaN, infinity, negative, huge, empty, null, a null inside a list, a
vector of NaN or of another length); rows duplicated, dropped or shuffled; the table emptied; an extra column.
Up to three are applied in turn, and none at all is drawn too, so the valid table itself is among the examples.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import strategies as st

NAN, INF = math.nan, math.inf

#: Values of each column kind that a cell may be set to; each is the column's own type (or null), so the
#: table stays writable, and most break some contract.
VALUES: dict[str, list[Any]] = {
    "str": [None, "", "x" * 1500, "other", "low", "high", "high/k8/b16", "error"],
    "int": [None, -1, 0, 1, 2, 16, 10**6],
    "float": [None, NAN, INF, -INF, -1.0, 0.0, 0.5, 1.0, 5.0, 1e12],
    "bytes": [None, b"", b"junk"],
    "list_str": [None, [], [None], ["red", None], ["red"], [""]],
}


def vector_values(dim: int) -> list[Any]:
    return [None, [], [NAN] * dim, [INF] * dim, [0.5] * (dim - 1), [0.25] * dim, [NAN] + [0.0] * (dim - 1),
            [1e30] * dim]


def retyped(values: Sequence[Any], to: str) -> list[Any]:
    """A whole column as another type."""
    n = len(values)
    return {"str": lambda: [str(v) for v in values], "int": lambda: list(range(n)),
            "float": lambda: [i + 0.5 for i in range(n)], "bytes": lambda: [str(v).encode() for v in values],
            "list": lambda: [[str(v)] for v in values], "null": lambda: [None] * n}[to]()


@st.composite
def mutated(draw: st.DrawFn, base: pd.DataFrame, kinds: Mapping[str, str],
            extra: Sequence[Callable[[st.DrawFn, pd.DataFrame], pd.DataFrame]] = (), dim: int = 4) -> pd.DataFrame:
    """``base`` with up to three mutations; ``kinds`` maps each column to a key of :data:`VALUES` (or
    ``list_float``); ``extra`` are the table's own mutations (a sample failed, a grid cell missing)."""
    df = base.copy()
    for _ in range(draw(st.integers(0, 3))):
        ops = ["drop", "rename", "retype", "cells", "cells", "cells", "duplicate", "drop_rows", "shuffle", "empty",
               "extra", *(["own"] * 2 * len(extra))]
        op = draw(st.sampled_from(ops))
        if len(df.columns) == 0 or (len(df) == 0 and op in ("cells", "duplicate", "drop_rows", "own")):
            continue
        column = draw(st.sampled_from(list(df.columns)))
        rows = draw(st.lists(st.integers(0, max(len(df) - 1, 0)), min_size=1, max_size=3, unique=True))
        if op == "drop":
            df = df.drop(columns=[column])
        elif op == "rename":
            df = df.rename(columns={column: column + "_renamed"})
        elif op == "retype":
            df[column] = retyped(list(df[column]), draw(st.sampled_from(["str", "int", "float", "bytes", "list",
                                                                           "null"])))
        elif op == "cells":
            kind = kinds.get(column, "str")
            value = draw(st.sampled_from(vector_values(dim) if kind == "list_float" else VALUES[kind]))
            df = set_cells(df, column, rows, value, kind)
        elif op == "duplicate":
            df = pd.concat([df, df.iloc[rows]], ignore_index=True)
        elif op == "drop_rows":
            df = df.drop(index=df.index[rows]).reset_index(drop=True)
        elif op == "shuffle":
            order = draw(st.permutations(range(len(df))))
            df = df.iloc[list(order)].reset_index(drop=True)
        elif op == "empty":
            df = df.iloc[:0]
        elif op == "extra":
            df = df.assign(extra_note="x")
        else:
            df = draw(st.sampled_from(list(extra)))(draw, df)
    return df


def set_cells(df: pd.DataFrame, column: str, rows: Sequence[int], value: Any, kind: str) -> pd.DataFrame:
    """``value`` in the given rows of ``column``, the column kept numeric where it was."""
    df = df.copy()
    values = [value if i in set(rows) else v for i, v in enumerate(df[column])]
    if kind in ("int", "float") and all(is_null(v) or isinstance(v, (int, float, np.number)) for v in values):
        df[column] = pd.to_numeric(pd.Series(values, dtype=object))
    else:
        df[column] = pd.Series(values, dtype=object)
    return df


def write(df: pd.DataFrame, path: Path) -> Path:
    """The frame as Parquet, as pandas' own writer would store it; a column of mixed types (a string set into
    a column retyped to numbers, say) is stored as strings, as a CSV round trip would leave it."""
    df = df.copy()
    for column in df.columns:
        if df[column].dtype == object:
            try:
                pa.array(df[column], from_pandas=True)
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
                df[column] = [None if is_null(v) else str(v) for v in df[column]]
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path)
    return path


def is_str(v: Any) -> bool:
    return isinstance(v, str)


def is_null(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def numeric(s: pd.Series) -> bool:
    """A column of numbers as Parquet stores them (integers or floats, not booleans), or of nulls only."""
    if pd.api.types.is_bool_dtype(s):
        return False
    return pd.api.types.is_numeric_dtype(s) or all(is_null(v) for v in s)


def integers(s: pd.Series) -> bool:
    return pd.api.types.is_integer_dtype(s) and not pd.api.types.is_bool_dtype(s)


def within(v: Any, low: float | None = None, high: float | None = None, above: bool = False) -> bool:
    """A finite number in the range (strictly above ``low`` with ``above``)."""
    if is_null(v) or not np.isfinite(v):
        return False
    return (low is None or (v > low if above else v >= low)) and (high is None or v <= high)


def vector_ok(v: Any) -> bool:
    """A non-empty vector of floats, finite or wholly NaN (a failed sample's)."""
    if not isinstance(v, (list, np.ndarray)) or len(v) == 0:
        return False
    a = np.asarray(v)
    return a.dtype.kind == "f" and (bool(np.isfinite(a).all()) or bool(np.isnan(a).all()))


def label(tier: Any, top_k: Any, blocks: Any) -> str:
    def num(v: Any) -> str:
        return str(int(v)) if float(v).is_integer() else str(v)
    return f"{tier}/k{num(top_k)}/b{num(blocks)}"
