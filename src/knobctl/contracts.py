"""Declared contracts of the tables the stages pass to each other, checked on read and before write.

A stage that reads a table it did not write trusts nothing about it: a truncated file, a missing column, an
answers column stored as one string (scored character by character), repeated sample ids, a score of 5 or a
negative latency would otherwise crash deep inside the stage or, worse, give a wrong result with exit 0.
Each :class:`TableContract` declares a table's columns (type, allowed range, nulls, finiteness), its key
(unique), that it is not empty, rules across columns, and which rows record a failure (a sample whose rollouts
raised: its numbers are absent by design, and every other row must have them); :func:`read_table` reads a
Parquet file and checks it, and a writer calls :meth:`TableContract.check` before writing. A violation is one :class:`TableContractError` naming the file,
the column, how many rows break it, an example and what is allowed, and how to rebuild the table.

The type check uses pyarrow's own types (read from the file's schema, so a column of strings where a list is
due is caught before any value is looked at); ranges, nulls and finiteness are vectorised pandas checks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from knobctl.io import read_provenance
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
    choices: tuple[str, ...] | None = None  # strings: the values allowed
    positive: bool = False  # numbers: above ``low``, not equal to it (a latency of 0 ms divides by zero)
    # A row the table's ``failed`` marks (a sample or a measurement that raised) has no result: not checked here.
    error_ok: bool = False
    # Float vectors: one wholly NaN stands for "no feature" (a failed sample's); a NaN among numbers never does.
    nan_vector: bool = False

    def allowed(self) -> str:
        what = [self.kind.replace("list[", "a list of ").replace("]", "s") if "list" in self.kind else self.kind]
        if self.low is not None or self.high is not None:
            what.append(f"in {'(' if self.positive else '['}{self.low if self.low is not None else '-inf'}, "
                        f"{self.high if self.high is not None else 'inf'}], finite")
        elif self.kind == "float":
            what.append("finite")
        if self.max_len is not None:
            what.append(f"at most {self.max_len:,} characters")
        if self.choices is not None:
            what.append(f"one of {', '.join(self.choices)}")
        what.append("null allowed" if self.nullable else "no nulls")
        if "list" in self.kind and not self.empty_list:
            what.append("not empty")
        if self.kind == "list[string]":
            what.append("no null element")
        if self.nan_vector:
            what.append("or wholly NaN")
        if self.error_ok:
            what.append("anything on a row that failed")
        return ", ".join(what)


@dataclass(frozen=True)
class TableContract:
    """A table's declared shape: columns (others may follow), a unique key, non-empty, and how to rebuild it.
    ``failed`` marks the rows that record a failure (a sample or measurement that raised), whose ``error_ok``
    columns go unchecked."""

    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...] = ()
    rebuild: str = "rebuild it with `dvc repro`"
    allow_empty: bool = False
    optional: tuple[str, ...] = field(default_factory=tuple)
    failed: Callable[[pd.DataFrame], pd.Series] | None = None
    # A rule across columns: the table -> (rows that break it, what is allowed); run once every column passed.
    rule: Callable[[pd.DataFrame], tuple[pd.Series, str]] | None = None

    def check(self, df: pd.DataFrame, where: str | Path, schema: pa.Schema | None = None) -> pd.DataFrame:
        """``df`` unchanged if it keeps the contract, else a :class:`TableContractError` on the first breach."""
        def fail(what: str) -> TableContractError:
            return TableContractError(f"{where} ({self.name} table): {what}; {self.rebuild}")

        if not self.allow_empty and len(df) == 0:
            raise fail("it has 0 rows")
        schema = schema if schema is not None else _schema_of(df)
        failed = self.failed(df) if self.failed is not None else pd.Series(False, index=df.index)
        for col in self.columns:
            if col.name not in df.columns:
                if col.name in self.optional:
                    continue
                raise fail(f"column {col.name!r} is missing (columns: {', '.join(map(str, df.columns))})")
            if col.name in schema.names and not KINDS[col.kind](schema.field(col.name).type):
                raise fail(f"column {col.name!r} is {schema.field(col.name).type}, allowed: {col.allowed()}")
            bad, example = _bad_values(df[col.name][~failed] if col.error_ok else df[col.name], col)
            if bad:
                shown = repr(example) if len(repr(example)) <= 60 else repr(example)[:57] + "..."
                raise fail(f"column {col.name!r}: {bad} of {len(df)} rows break it (e.g. {shown}); allowed: "
                           f"{col.allowed()}")
        knob_columns = ["config", "tier", "top_k", "num_blocks"]
        if len(df) and set(knob_columns) <= set(df.columns):  # a label that disagrees with its knobs misleads joins
            label = df["tier"].astype(str) + "/k" + df["top_k"].astype(str) + "/b" + df["num_blocks"].astype(str)
            # a float column (nulls on error rows) prints 8 as 8.0
            label = label.str.replace(r"\.0(?=/|$)", "", regex=True)
            wrong = (df["config"].astype(str) != label) & ~failed
            if wrong.any():
                first = df.loc[wrong, knob_columns].iloc[0].to_dict()
                raise fail(f"column 'config': {int(wrong.sum())} of {len(df)} rows name another configuration than "
                           f"their tier, top_k and num_blocks (e.g. {first}); allowed: '<tier>/k<top_k>/b<num_blocks>'")
        if self.rule is not None and len(df):
            wrong, allowed = self.rule(df)
            if wrong.any():
                shown = [c for c in (*self.key, "error", "request_error") if c in df.columns]
                first = {k: _plain(v) for k, v in df.loc[wrong, shown].iloc[0].items()}
                raise fail(f"{int(wrong.sum())} of {len(df)} rows break a rule (e.g. {first}); allowed: {allowed}")
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
        if col.kind == "list[string]" and not bad.any():  # a null answer among the answers scores as a string
            bad = bad | s.map(lambda v: v is not None and any(not isinstance(x, str) for x in v))
        if col.kind == "list[float]" and not bad.any():
            bad = bad | ~s.map(lambda v: v is None or _finite_vector(v, col.nan_vector))
        return int(bad.sum()), (s[bad].iloc[0] if bad.any() else None)
    isnull = s.isna()
    bad = isnull if not col.nullable else pd.Series(False, index=s.index)
    if col.kind in ("float", "int"):
        values = pd.to_numeric(s, errors="coerce")
        not_number = values.isna() & ~isnull
        out = not_number | (~isnull & ~np.isfinite(values.fillna(0.0).astype(np.float64)))
        if col.low is not None:
            out |= (values <= col.low) if col.positive else (values < col.low)
        if col.high is not None:
            out |= values > col.high
        bad = bad | out
    elif col.kind == "string":
        bad = bad | s.map(lambda v: v is not None and not (isinstance(v, float) and np.isnan(v))
                          and (not isinstance(v, str) or (col.max_len is not None and len(v) > col.max_len)
                               or (col.choices is not None and v not in col.choices)))
    elif col.kind == "binary":
        bad = bad | s.map(lambda v: v is not None and not isinstance(v, (bytes, bytearray)))
    return int(bad.sum()), (_plain(s[bad].iloc[0]) if bad.any() else None)


def _finite_vector(v: object, nan_vector: bool) -> bool:
    values = np.asarray(v, dtype=np.float64)
    return bool(np.isfinite(values).all()) or (nan_vector and bool(np.isnan(values).all()))


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


def table_provenance(path: str | Path) -> dict[str, Any]:
    """A table file's knobctl metadata (:func:`knobctl.io.read_provenance`), or a named error where it is not a JSON
    object: the readers take models and tiers from it."""
    try:
        meta = read_provenance(path)
    except (ValueError, pa.ArrowException, OSError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise TableContractError(f"{path}: its knobctl metadata cannot be read ({type(exc).__name__}: "
                                 f"{str(exc)[:120]}); rebuild it with the stage that writes it") from exc
    if not isinstance(meta, dict):
        raise TableContractError(f"{path}: its knobctl metadata is a {type(meta).__name__}, not a JSON object; "
                                 "rebuild it with the stage that writes it")
    return meta


#: The tiers of knobctl.knobs.TIER_ORDER (this layer cannot import it; tests/test_contracts.py holds them equal).
TIERS = ("low", "medium", "high")


def _error_set(df: pd.DataFrame, column: str = "error") -> pd.Series:
    """Rows whose error column says why they hold no result."""
    return df[column].notna() if column in df.columns else pd.Series(False, index=df.index)


def _request_error_set(df: pd.DataFrame) -> pd.Series:
    return _error_set(df, "request_error")


def _unmeasured(df: pd.DataFrame) -> pd.Series:
    """Cells of a profile summary none of whose repeats succeeded (their latencies are NaN)."""
    if "repeats" not in df.columns:
        return pd.Series(False, index=df.index)
    return pd.to_numeric(df["repeats"], errors="coerce") == 0


_SPLIT_COLUMNS = (Column("sample_id", "string"), Column("image", "binary"), Column("question", "string"),
                  Column("answers", "list[string]"), Column("question_type", "string"))

VQA_SPLIT = TableContract(
    "VQA split",
    # Stages that run every question of a split: a question of 100k characters ran 2 minutes at 5 GB there.
    # VQAv2's longest are about 200 characters.
    tuple(Column("question", "string", max_len=1000) if c.name == "question" else c for c in _SPLIT_COLUMNS),
    key=("sample_id",), rebuild="rebuild it with `dvc repro prepare_data`")

#: The split as accuracy_table and validate read it: they cap each question in the model's tokens, and an
#: over-long one (or an image that does not decode) is that sample's error row, not a refused table.
VQA_REQUESTS = TableContract("VQA split", _SPLIT_COLUMNS, key=("sample_id",),
                             rebuild="rebuild it with `dvc repro prepare_data`")

ROLLOUTS = TableContract(
    "rollouts",
    (Column("sample_id", "string"), Column("config", "string"), Column("tier", "string", choices=TIERS),
     Column("top_k", "int", low=1), Column("num_blocks", "int", low=1),
     # an error row (a sample that failed) has no score and -1 lengths
     Column("score", "float", low=0.0, high=1.0, error_ok=True),
     Column("input_tokens", "float", low=1, error_ok=True), Column("output_tokens", "float", low=0, error_ok=True),
     Column("error", "string", nullable=True)),
    key=("sample_id", "config"), rebuild="rebuild it with `dvc repro accuracy_table`", optional=("error",),
    failed=_error_set)

#: A sample whose every rollout failed has wholly NaN vectors; :meth:`knobctl.table.accuracy_table.AccuracyTable.
#: from_frames` checks that against the rollouts and leaves such samples out.
FEATURES = TableContract(
    "rollout features",
    (Column("sample_id", "string"), Column("question_type", "string"), Column("language", "list[float]", nan_vector=True),
     *(Column(f"vision_{tier}", "list[float]", nan_vector=True) for tier in TIERS)),
    key=("sample_id",), rebuild="rebuild it with `dvc repro accuracy_table`",
    optional=tuple(f"vision_{tier}" for tier in TIERS))

PARTS = ("vision_ms", "prefill_ms", "decode_ms_per_token", "total_ms")


def _decode_rule(failed: Callable[[pd.DataFrame], pd.Series]) -> Callable[[pd.DataFrame], tuple[pd.Series, str]]:
    """A profile's decode time is NaN where no decode step ran (one output token) or the measurement failed, and
    not elsewhere; and something was measured, since the estimator and the latency spread read only that."""
    def rule(df: pd.DataFrame) -> tuple[pd.Series, str]:
        steps = pd.to_numeric(df["output_tokens"], errors="coerce") > 1
        decode = [c for c in df.columns if c == "decode_ms_per_token" or c in _DECODE_STATS]
        nan = pd.concat([pd.to_numeric(df[c], errors="coerce").isna() for c in decode], axis=1).any(axis=1)
        down = failed(df)
        wrong = pd.Series(True, index=df.index) if down.all() else steps & nan & ~down
        return wrong, ("decode_ms_per_token NaN only where output_tokens is 1 or the measurement failed; at least "
                       "one measurement that did not fail")
    return rule


_DECODE_STATS = tuple(f"decode_ms_per_token_{stat}" for stat in ("median", "p10", "p90", "adj_median"))


PROFILE_SUMMARY = TableContract(
    "profile summary",
    (Column("config", "string"), Column("tier", "string", choices=TIERS), Column("top_k", "int", low=1),
     Column("num_blocks", "int", low=1), Column("text_tokens", "int", low=0), Column("output_tokens", "int", low=1),
     Column("repeats", "int", low=0),
     # a cell whose every repeat raised (repeats 0) has no latency; decode has none for one output token
     *(Column(f"{part}_{stat}", "float", low=0.0, positive=True, error_ok=True, nullable=part == "decode_ms_per_token")
       for part in PARTS for stat in ("median", "p10", "p90", "adj_median"))),
    key=("config", "text_tokens", "output_tokens"), rebuild="rebuild it with `dvc repro profile_latency`",
    optional=tuple(f"{part}_adj_median" for part in PARTS), failed=_unmeasured, rule=_decode_rule(_unmeasured))

#: data/profile/latency.parquet: one row per measurement; a measurement that raised has its ``error`` and no times.
PROFILE_ROWS = TableContract(
    "profile rows",
    (Column("config", "string"), Column("tier", "string", choices=TIERS), Column("top_k", "int", low=1),
     Column("num_blocks", "int", low=1), Column("text_tokens", "int", low=0), Column("output_tokens", "int", low=1),
     Column("input_tokens", "int", low=1), Column("round", "int", low=0), Column("order", "int", low=0),
     *(Column(part, "float", low=0.0, positive=True, error_ok=True, nullable=part == "decode_ms_per_token")
       for part in PARTS),
     Column("error", "string", nullable=True), Column("device", "string")),
    key=("round", "config", "text_tokens", "output_tokens"), rebuild="rebuild it with `dvc repro profile_latency`",
    failed=_error_set, rule=_decode_rule(_error_set))


def _request_kinds(df: pd.DataFrame) -> tuple[pd.Series, str]:
    """An error row is one of kind 'error' and says why; a controller request has a budget (the summary groups by
    it)."""
    wrong = (df["kind"] == "error") != _request_error_set(df)
    wrong |= (df["kind"] == "controller") & pd.to_numeric(df["budget_ms"], errors="coerce").isna()
    return wrong, "an error message on the rows of kind 'error' and on no other; a budget on every controller row"


#: data/validate/requests.parquet: one row per measured request, and one row of kind ``error`` per test sample that
#: could not be asked (an image that does not decode, an over-long question), its reason in ``request_error`` (not
#: ``error``, which marks a table of rollouts for ``knobctl show``) and its other columns null. A fixed
#: configuration's row has no budget; the key holds it once per (sample, configuration, repeat). A request meets its
#: budget when ``latency_ms`` <= ``budget_ms`` x ``speed`` (the deadline's scale, :mod:`knobctl.validate.measure`).
VALIDATE_REQUESTS = TableContract(
    "validate requests",
    (Column("sample_id", "string"), Column("question_type", "string"),
     Column("kind", "string", choices=("controller", "fixed", "error")),
     Column("budget_ms", "float", low=0.0, nullable=True), Column("speed", "float", low=0.0, error_ok=True),
     Column("controller_budget_ms", "float", nullable=True),
     Column("config", "string", error_ok=True), Column("tier", "string", choices=TIERS, error_ok=True),
     Column("top_k", "float", low=1, error_ok=True), Column("num_blocks", "float", low=1, error_ok=True),
     Column("answer", "string", error_ok=True), Column("score", "float", low=0.0, high=1.0, error_ok=True),
     *(Column(name, "float", low=0.0, error_ok=True) for name in ("latency_ms", "controller_ms", "estimated_ms")),
     Column("rollout_score", "float", low=0.0, high=1.0, error_ok=True),
     Column("order", "float", low=0, error_ok=True), Column("repeat", "float", low=0, error_ok=True),
     Column("request_error", "string", nullable=True)),
    key=("sample_id", "kind", "budget_ms", "config", "repeat"), rebuild="rerun `dvc repro validate`",
    optional=("request_error", "speed"), failed=_request_error_set, rule=_request_kinds)
