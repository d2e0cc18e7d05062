"""Property-based test of the accuracy table's reader (``AccuracyTable.load``, what tradeoff, train_controller and
validate call): rollouts and features damaged apart or together (tests/contract_mutations.py), and the ways the
two disagree, give the dense arrays an oracle computes apart from the library, or the named input error."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from knobctl.contracts import TIERS
from knobctl.knobs import KnobConfig
from knobctl.params import InputError
from knobctl.table.accuracy_table import AccuracyTable
from tests.contract_mutations import integers, is_null, is_str, label, mutated, numeric, vector_ok, within, write

FAST = settings(max_examples=80, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
CONFIGS = [KnobConfig(t, k, b) for t in ("low", "high") for k, b in ((4, 12), (8, 16))]
DIM = 4


def base() -> tuple[pd.DataFrame, pd.DataFrame]:
    rows = pd.DataFrame([{"sample_id": f"s{i}", "question_type": "color", "config": k.label, "tier": k.tier,
                          "top_k": k.top_k, "num_blocks": k.num_blocks, "prediction": "red",
                          "score": (i + j) % 3 / 2, "input_tokens": 8 + j, "output_tokens": 2, "error": None}
                         for i in range(3) for j, k in enumerate(CONFIGS)])
    feats = pd.DataFrame({"sample_id": ["s0", "s1", "s2"], "question_type": ["color"] * 3,
                          "language": [np.full(DIM, 0.1 * i) for i in range(3)],
                          "vision_low": [np.full(DIM, 0.2 * i) for i in range(3)],
                          "vision_high": [np.full(DIM, 0.3 * i) for i in range(3)]})
    return rows, feats


ROWS_KINDS = {"top_k": "int", "num_blocks": "int", "score": "float", "input_tokens": "float",
              "output_tokens": "float"}
FEATS_KINDS = {"language": "list_float", "vision_low": "list_float", "vision_high": "list_float"}


def fail_sample(rows: pd.DataFrame, feats: pd.DataFrame, sid: str, features: bool) -> tuple[pd.DataFrame, ...]:
    """The sample's every rollout an error row, as rollout_part writes one (and its features NaN if asked)."""
    rows, feats = rows.copy(), feats.copy()
    at = rows["sample_id"] == sid
    rows["error"] = rows["error"].astype(object) if "error" in rows else None
    rows.loc[at, ["score", "input_tokens", "output_tokens"]] = (math.nan, -1, -1)
    rows.loc[at, "error"] = "image: the image does not decode"
    if features:
        for c in ("language", "vision_low", "vision_high"):
            feats[c] = [np.full(DIM, math.nan) if s == sid else v for s, v in zip(feats["sample_id"], feats[c])]
    return rows, feats


@st.composite
def tables(draw: st.DrawFn) -> tuple[pd.DataFrame, pd.DataFrame]:
    rows, feats = base()
    for _ in range(draw(st.integers(0, 2))):
        sid = draw(st.sampled_from(["s0", "s1", "s2"]))
        op = draw(st.sampled_from(["fail", "fail_rows", "nan_vector", "drop_config", "swap", "no_error_column"]))
        if op in ("fail", "fail_rows"):
            rows, feats = fail_sample(rows, feats, sid, op == "fail")
        elif op == "nan_vector":
            column = draw(st.sampled_from(["language", "vision_low", "vision_high"]))
            feats = feats.assign(**{column: [np.full(DIM, math.nan) if s == sid else v
                                             for s, v in zip(feats["sample_id"], feats[column])]})
        elif op == "drop_config":  # a subset of the grid: allowed
            rows = rows[rows["config"] != draw(st.sampled_from([k.label for k in CONFIGS]))].reset_index(drop=True)
        elif op == "swap":  # one sample's configurations in another order than the first sample's
            at = np.flatnonzero(rows["sample_id"].to_numpy() == sid)
            if len(at) > 1:
                order = np.arange(len(rows))
                order[at[0]], order[at[1]] = at[1], at[0]
                rows = rows.iloc[order].reset_index(drop=True)
        else:
            rows = rows.drop(columns=["error"], errors="ignore")
    if draw(st.booleans()):
        rows = draw(mutated(rows, ROWS_KINDS))
    if draw(st.booleans()):
        feats = draw(mutated(feats, FEATS_KINDS, dim=DIM))
    return rows, feats


def rows_valid(r: pd.DataFrame) -> pd.Series | None:
    """The rollouts' own contract; the rows that failed, or None if it is broken."""
    needed = ["sample_id", "config", "tier", "top_k", "num_blocks", "score", "input_tokens", "output_tokens"]
    if len(r) == 0 or not set(needed) <= set(r.columns) or not (integers(r["top_k"]) and integers(r["num_blocks"])):
        return None
    failed = r["error"].notna() if "error" in r else pd.Series(False, index=r.index)
    if "error" in r and not r["error"].map(lambda e: is_null(e) or is_str(e)).all():
        return None
    if not (r["sample_id"].map(is_str).all() and r["config"].map(is_str).all() and r["tier"].isin(TIERS).all()
            and (r["top_k"] >= 1).all() and (r["num_blocks"] >= 1).all()
            and all(numeric(r[c]) for c in ("score", "input_tokens", "output_tokens"))):
        return None
    for _, x in r[~failed].iterrows():
        if not (x["config"] == label(x["tier"], x["top_k"], x["num_blocks"]) and within(x["score"], 0, 1)
                and within(x["input_tokens"], 1) and within(x["output_tokens"], 0)):
            return None
    return None if r.duplicated(["sample_id", "config"]).any() else failed


def expected(r: pd.DataFrame, f: pd.DataFrame) -> dict | None:
    """What AccuracyTable.load must return for these frames (as read back), or None where it must refuse."""
    failed = rows_valid(r)
    vectors = [c for c in ("language", *(f"vision_{t}" for t in TIERS)) if c in f]
    if failed is None or len(f) == 0 or not {"sample_id", "question_type", "language"} <= set(f.columns):
        return None
    if not (f["sample_id"].map(is_str).all() and f["question_type"].map(is_str).all()) or f["sample_id"].duplicated().any():
        return None
    if not all(f[c].map(vector_ok).all() for c in vectors):
        return None
    ids = f["sample_id"].to_numpy()
    first = r[r["sample_id"] == ids[0]]
    labels = first["config"].tolist()
    s, c = len(ids), len(labels)
    if c == 0 or len(r) != s * c or not (r["sample_id"].to_numpy().reshape(s, c) == ids[:, None]).all() or not (
            r["config"].to_numpy().reshape(s, c) == np.array(labels, dtype=object)).all():
        return None
    tiers = list(dict.fromkeys(first["tier"]))
    used = ["language", *(f"vision_{t}" for t in tiers)]
    if not set(used) <= set(f.columns) or len({len(v) for u in used for v in f[u]}) != 1:
        return None
    gone = failed.to_numpy().reshape(s, c).all(1)
    blank = np.array([any(np.isnan(f[u].iloc[i]).any() for u in used) for i in range(s)])
    if (blank & ~gone).any() or gone.all():
        return None
    keep = ~gone
    return {"sample_ids": ids[keep], "configs": [KnobConfig(t, int(k), int(b)) for t, k, b in first[
                ["tier", "top_k", "num_blocks"]].itertuples(index=False)],
            "scores": r["score"].to_numpy(np.float32).reshape(s, c)[keep],
            "language": np.stack(f["language"].to_numpy())[keep].astype(np.float32),
            "vision": np.stack([np.stack(f[f"vision_{t}"].to_numpy()) for t in tiers], 1)[keep].astype(np.float32)}


@FAST
@given(pair=tables())
def test_the_accuracy_table_reader_gives_the_oracles_arrays_or_names_the_damage(tmp_path, pair):
    rows, feats = pair
    write(rows, tmp_path / "rollouts.parquet")
    write(feats, tmp_path / "features.parquet")
    back = pd.read_parquet(tmp_path / "rollouts.parquet"), pd.read_parquet(tmp_path / "features.parquet")
    want = expected(*back)
    try:
        got = AccuracyTable.load(tmp_path)
    except InputError as exc:
        assert want is None, f"refused a valid table ({exc}):\n{back[0]}\n{back[1]}"
        return
    assert want is not None, f"accepted a damaged table:\n{back[0]}\n{back[1]}"
    assert list(got.sample_ids) == list(want["sample_ids"]) and list(got.configs) == want["configs"]
    np.testing.assert_array_equal(got.scores, want["scores"])
    np.testing.assert_array_equal(got.language, want["language"])
    np.testing.assert_array_equal(got.vision, want["vision"])
    assert np.isfinite(got.language).all() and np.isfinite(got.vision).all()
