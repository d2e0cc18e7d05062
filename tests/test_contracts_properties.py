"""Property-based tests of every table reader: fed a table damaged from a small valid one (tests/contract_mutations.py),
a reader returns the right result or raises the named input error, never another exception.

Each table has an oracle written apart from knobctl.contracts, from what its readers need: the reader must accept
exactly the tables the oracle accepts (a damaged table accepted is a silent wrong result; a valid one refused, a
false alarm), and what it returns must equal what the oracle computes. The readers are the ones the stages call:
``read_table`` with the split, profile and validate contracts, and ``AccuracyTable.load`` for the rollouts with
their features, followed, for the profile summary, by what fit_estimator and train_controller do with it first.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, Phase, find, given, settings
from PIL import Image

from knobctl.contracts import (
    PROFILE_ROWS,
    PROFILE_SUMMARY,
    TIERS,
    VALIDATE_REQUESTS,
    VQA_REQUESTS,
    VQA_SPLIT,
    Column,
    TableContract,
    read_table,
)
from knobctl.controller.spread import latency_spread
from knobctl.knobs import KnobConfig
from knobctl.latency.estimator import EstimatorParams, feature_frame
from knobctl.latency.estimator_eval import make_splits
from knobctl.params import InputError
from tests.contract_mutations import integers, is_null, is_str, label, mutated, numeric, within, write

FAST = settings(max_examples=60, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), "red").save(buf, format="PNG")
    return buf.getvalue()


def read(path, contract: TableContract) -> pd.DataFrame | None:
    """The reader's result, or None when it refused with the named error (any other exception fails the test)."""
    try:
        return read_table(path, contract)
    except InputError:
        return None


def judged(df: pd.DataFrame, path, contract: TableContract, oracle) -> tuple[pd.DataFrame | None, pd.DataFrame]:
    """``df`` written to ``path`` and read back through ``contract``: (the reader's result or None, the table as
    written), once the reader accepted exactly what ``oracle`` (the table as written -> valid?) accepts."""
    path = write(df, path)
    got, back = read(path, contract), pd.read_parquet(path)
    assert (got is not None) == oracle(back), f"accepted={got is not None} for\n{back.T}"
    return got, back


def columns_ok(df: pd.DataFrame, needed) -> bool:
    return len(df) > 0 and set(needed) <= set(df.columns)


# --- VQA splits ------------------------------------------------------------------------------------------------

SPLIT = pd.DataFrame({"sample_id": ["s0", "s1", "s2", "s3"], "image": [png()] * 4,
                      "question": ["what color is the shape?", "what shape is the mark?", "what number?", "taste?"],
                      "answers": [["red", "red"], ["circle"], ["3", "three"], ["sweet"]],
                      "question_type": ["color", "shape", "text", "recall"]})
SPLIT_KINDS = {"sample_id": "str", "image": "bytes", "question": "str", "answers": "list_str", "question_type": "str"}


def split_ok(df: pd.DataFrame, max_len: int | None) -> bool:
    """What every reader of a split needs: one row per sample id, the image's bytes, the question as text (at most
    ``max_len`` characters), a non-empty list of answers, each a string (vqa_score compares strings)."""
    if not columns_ok(df, SPLIT_KINDS) or not df["sample_id"].map(is_str).all() or df["sample_id"].duplicated().any():
        return False
    answers = df["answers"].map(lambda a: isinstance(a, (list, np.ndarray)) and len(a) > 0
                                and all(is_str(x) for x in a))
    return bool(df["image"].map(lambda b: isinstance(b, bytes)).all() and answers.all()
                and df["question"].map(lambda q: is_str(q) and (max_len is None or len(q) <= max_len)).all()
                and df["question_type"].map(is_str).all())


@pytest.mark.parametrize("contract,max_len", [(VQA_SPLIT, 1000), (VQA_REQUESTS, None)], ids=["split", "requests"])
@FAST
@given(df=mutated(SPLIT, SPLIT_KINDS))
def test_a_split_reader_returns_a_valid_split_or_names_the_damage(tmp_path, contract, max_len, df):
    got, back = judged(df, tmp_path / "split.parquet", contract, lambda t: split_ok(t, max_len))
    if got is not None:
        pd.testing.assert_frame_equal(got, back)


# --- the profile: summary and rows -----------------------------------------------------------------------------

PARTS = ("vision_ms", "prefill_ms", "decode_ms_per_token", "total_ms")
STATS = ("median", "p10", "p90", "adj_median")
TIER_TABLE = {t: {"visual_tokens": v, "num_images": 1, "image_size": 16 * v, "prompt_tokens": v + 2}
              for t, v in zip(TIERS, (1, 4, 16))}
CONFIGS = [KnobConfig("low", 4, 12), KnobConfig("high", 8, 16)]


def summary_base() -> pd.DataFrame:
    rows = []
    for k in CONFIGS:
        for text, out in ((3, 1), (3, 2), (9, 2)):
            row = {"config": k.label, "tier": k.tier, "top_k": k.top_k, "num_blocks": k.num_blocks, "text_tokens": text,
                   "output_tokens": out, "repeats": 3, "errors": 0}
            for i, part in enumerate(PARTS):
                for j, stat in enumerate(STATS):
                    row[f"{part}_{stat}"] = math.nan if part == "decode_ms_per_token" and out == 1 else 1.0 + i + j / 4
            rows.append(row)
    return pd.DataFrame(rows)


SUMMARY = summary_base()
SUMMARY_KINDS = {c: "float" for c in SUMMARY.columns if c.endswith(STATS)} | {
    c: "int" for c in ("top_k", "num_blocks", "text_tokens", "output_tokens", "repeats", "errors")}


def timings_ok(df: pd.DataFrame, measured: pd.Series, columns: list[str]) -> bool:
    """The rows ``measured`` marks: at least one, each labelled by its own knobs, each timing positive and finite
    (decode's NaN allowed for one output token); the other rows' timings null or positive and finite."""
    ok = df[measured]
    if ok.empty:
        return False
    for _, row in ok.iterrows():
        if row["config"] != label(row["tier"], row["top_k"], row["num_blocks"]):
            return False
        for c in columns:
            may_be_nan = c.startswith("decode") and row["output_tokens"] == 1
            if not (within(row[c], 0.0, above=True) or (may_be_nan and is_null(row[c]))):
                return False
    return all(is_null(v) or (np.isfinite(v) and v > 0) for c in columns for v in df.loc[~measured, c])


def summary_ok(df: pd.DataFrame) -> bool:
    """What fit_estimator and train_controller need of a profile summary: knobs and lengths as integers naming
    one cell each, its label their own; every latency statistic a number, positive and finite where the cell was
    measured (repeats > 0), decode's NaN only for one output token; at least one measured cell."""
    needed = ["config", "tier", "top_k", "num_blocks", "text_tokens", "output_tokens", "repeats",
              *(f"{p}_{s}" for p in PARTS for s in STATS[:3])]
    ints = ("top_k", "num_blocks", "text_tokens", "output_tokens", "repeats")
    if not columns_ok(df, needed) or not all(integers(df[c]) for c in ints):
        return False
    stats = [c for c in df.columns if c.endswith(STATS) and c.startswith(PARTS)]
    if not (df["config"].map(is_str).all() and df["tier"].isin(TIERS).all() and all(numeric(df[c]) for c in stats)):
        return False
    if not ((df["top_k"] >= 1) & (df["num_blocks"] >= 1) & (df["text_tokens"] >= 0) & (df["output_tokens"] >= 1)
            & (df["repeats"] >= 0)).all() or df.duplicated(["config", "text_tokens", "output_tokens"]).any():
        return False
    return timings_ok(df, df["repeats"] > 0, stats)


@FAST
@given(df=mutated(SUMMARY, SUMMARY_KINDS))
def test_the_profile_summary_reader_and_its_first_users_never_take_a_damaged_summary(tmp_path, df):
    got, _ = judged(df, tmp_path / "summary.parquet", PROFILE_SUMMARY, summary_ok)
    if got is not None:  # what the stages do first with it: the estimator's splits and features, the spread
        make_splits(feature_frame(got, TIER_TABLE), EstimatorParams(), seed=0)
        spread = latency_spread(got, CONFIGS).numpy()
        assert np.isfinite(spread).all() and (spread > 0).all()


ROWS = pd.DataFrame([
    {"config": k.label, "tier": k.tier, "top_k": k.top_k, "num_blocks": k.num_blocks, "visual_tokens": 1,
     "text_tokens": 3, "input_tokens": 6, "output_tokens": out, "batch_size": 1, "round": r, "order": i,
     "vision_ms": 1.0, "prefill_ms": 2.0, "decode_ms_per_token": math.nan if out == 1 else 0.5, "total_ms": 3.5,
     "error": None, "device": "cpu", "host": "vm", "worker": 0}
    for r in range(2) for i, (k, out) in enumerate((k, out) for k in CONFIGS for out in (1, 2))])
ROWS_KINDS = {c: "int" for c in ("top_k", "num_blocks", "visual_tokens", "text_tokens", "input_tokens",
                                 "output_tokens", "batch_size", "round", "order", "worker")} | {p: "float" for p in PARTS}


def rows_ok(df: pd.DataFrame) -> bool:
    """A profile's measurements: one per (round, configuration, lengths), each timed in positive finite ms or
    failed with its error (decode NaN for one output token), on a named device; at least one not failed."""
    ints = ("top_k", "num_blocks", "text_tokens", "output_tokens", "input_tokens", "round", "order")
    if not columns_ok(df, [*ints, *PARTS, "config", "tier", "error", "device"]) or not all(
            integers(df[c]) for c in ints) or not all(numeric(df[p]) for p in PARTS):
        return False
    lows = {"top_k": 1, "num_blocks": 1, "text_tokens": 0, "output_tokens": 1, "input_tokens": 1, "round": 0,
            "order": 0}
    if not all((df[c] >= low).all() for c, low in lows.items()) or not df["tier"].isin(TIERS).all():
        return False
    if not (df["config"].map(is_str).all() and df["device"].map(is_str).all()
            and df["error"].map(lambda e: is_null(e) or is_str(e)).all()):
        return False
    if df.duplicated(["round", "config", "text_tokens", "output_tokens"]).any():
        return False
    return timings_ok(df, df["error"].isna(), list(PARTS))


@FAST
@given(df=mutated(ROWS, ROWS_KINDS))
def test_the_profile_rows_reader_names_every_damage(tmp_path, df):
    judged(df, tmp_path / "latency.parquet", PROFILE_ROWS, rows_ok)


# --- validate's requests ---------------------------------------------------------------------------------------

def requests_base() -> pd.DataFrame:
    rows = []
    for s in ("s0", "s1"):
        for kind, budget, k in (("controller", 20.0, CONFIGS[0]), ("controller", 30.0, CONFIGS[1]),
                                ("fixed", math.nan, CONFIGS[0]), ("fixed", math.nan, CONFIGS[1])):
            rows.append({"sample_id": s, "question_type": "color", "kind": kind, "budget_ms": budget,
                         "controller_budget_ms": budget * 0.9 if kind == "controller" else math.nan,
                         "config": k.label, "tier": k.tier, "top_k": k.top_k, "num_blocks": k.num_blocks,
                         "answer": "red", "score": 1.0, "latency_ms": 12.5, "controller_ms": 0.4,
                         "estimated_ms": 11.0, "rollout_score": 1.0, "order": len(rows) % 4, "repeat": 0,
                         "request_error": None})
    frame = pd.DataFrame(rows)
    failed = {"sample_id": "s2", "question_type": "shape", "kind": "error", "request_error": "image: does not decode"}
    return pd.concat([frame, pd.DataFrame([failed])], ignore_index=True)


REQUESTS = requests_base()
REQUESTS_KINDS = {c: "float" for c in ("budget_ms", "controller_budget_ms", "top_k", "num_blocks", "score",
                                       "latency_ms", "controller_ms", "estimated_ms", "rollout_score", "order",
                                       "repeat")}


def requests_ok(df: pd.DataFrame) -> bool:
    """What the summary and plots need of validate's requests: every measured request's knobs (its label their
    own), answer, score in [0, 1] and non-negative times; a budget on a controller request, none needed on a fixed
    one; an error row exactly where the error says why; each (sample, kind, budget, configuration, repeat) once."""
    floats = list(REQUESTS_KINDS)
    needed = ["sample_id", "question_type", "kind", "config", "tier", "answer", *floats]
    if not columns_ok(df, needed) or not all(numeric(df[c]) for c in floats):
        return False
    error = df["request_error"] if "request_error" in df else pd.Series([None] * len(df), index=df.index)
    if not (df["sample_id"].map(is_str).all() and df["question_type"].map(is_str).all()
            and df["kind"].isin(["controller", "fixed", "error"]).all() and error.map(
                lambda e: is_null(e) or is_str(e)).all()):
        return False
    if ((df["kind"] == "error") != error.notna()).any() or (
            (df["kind"] == "controller") & df["budget_ms"].isna()).any():
        return False
    if not all(is_null(v) or within(v, 0.0) for v in df["budget_ms"]) or not all(
            is_null(v) or within(v) for v in df["controller_budget_ms"]):
        return False
    for _, r in df[error.isna()].iterrows():
        if not (is_str(r["config"]) and r["tier"] in TIERS and is_str(r["answer"]) and within(r["top_k"], 1)
                and within(r["num_blocks"], 1) and r["config"] == label(r["tier"], r["top_k"], r["num_blocks"])):
            return False
        if not (within(r["score"], 0, 1) and within(r["rollout_score"], 0, 1) and within(r["order"], 0)
                and within(r["repeat"], 0) and all(within(r[c], 0) for c in ("latency_ms", "controller_ms",
                                                                             "estimated_ms"))):
            return False
    return not df.duplicated(["sample_id", "kind", "budget_ms", "config", "repeat"]).any()


@FAST
@given(df=mutated(REQUESTS, REQUESTS_KINDS))
def test_the_requests_reader_names_every_damage(tmp_path, df):
    judged(df, tmp_path / "requests.parquet", VALIDATE_REQUESTS, requests_ok)


# --- the properties can fail -----------------------------------------------------------------------------------

#: The profile summary's contract as it was before these tests (its decode columns nullable, as one output token
#: needs): without its repeats, its drift-corrected medians (what the estimator fits by default), its tiers and a
#: bound above 0 ms (a median of 0 divides the spread by 0).
EARLIER_SUMMARY = TableContract("profile summary", (
    Column("config", "string"), Column("tier", "string"), Column("top_k", "int", low=1),
    Column("num_blocks", "int", low=1), Column("text_tokens", "int", low=0), Column("output_tokens", "int", low=0),
    *(Column(f"{p}_{s}", "float", low=0.0, nullable=p == "decode_ms_per_token") for p in PARTS for s in STATS[:3])),
    key=("config", "text_tokens", "output_tokens"))


def test_the_generator_finds_a_summary_the_earlier_contract_let_through_and_the_contract_now_names_it(tmp_path):
    def slips_through(df: pd.DataFrame) -> bool:
        path = write(df, tmp_path / "t.parquet")
        return read(path, EARLIER_SUMMARY) is not None and not summary_ok(pd.read_parquet(path))

    found = find(mutated(SUMMARY, SUMMARY_KINDS), slips_through,
                 settings=settings(max_examples=1000, deadline=None, database=None, phases=[Phase.generate], derandomize=True,
                                   suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]))
    assert read(write(found, tmp_path / "t.parquet"), PROFILE_SUMMARY) is None
