"""Table contracts: every bad table named by file, column, rows and what is allowed; good tables pass."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from knobctl.contracts import PROFILE_SUMMARY, ROLLOUTS, VQA_SPLIT, TableContractError, read_table, table_provenance


def split(n: int = 3) -> pd.DataFrame:
    return pd.DataFrame({"sample_id": [f"s{i}" for i in range(n)], "image": [b"png"] * n,
                         "question": ["what color is the shape?"] * n, "answers": [["red"] * 10] * n,
                         "question_type": ["color"] * n})


def rollouts() -> pd.DataFrame:
    return pd.DataFrame({"sample_id": ["a", "a", "b", "b"], "config": ["low/k4/b12", "high/k8/b16"] * 2,
                         "tier": ["low", "high"] * 2, "top_k": [4, 8] * 2, "num_blocks": [12, 16] * 2,
                         "score": [1.0, 0.0, np.nan, 1.0], "input_tokens": [10, 25, -1, 25],
                         "output_tokens": [2, 2, -1, 2], "error": [None, None, "DataError: x", None]})


def summary() -> pd.DataFrame:
    row = {"config": "low/k4/b12", "tier": "low", "top_k": 4, "num_blocks": 12, "text_tokens": 5, "output_tokens": 2,
           "repeats": 3}
    row |= {f"{p}_{s}": 1.0 for p in ("vision_ms", "prefill_ms", "decode_ms_per_token", "total_ms")
            for s in ("median", "p10", "p90")}
    return pd.DataFrame([row, row | {"text_tokens": 9}])


def write(tmp_path, df: pd.DataFrame, name: str = "t.parquet"):
    path = tmp_path / name
    df.to_parquet(path)
    return path


def test_good_tables_pass_unchanged(tmp_path):
    for df, contract in ((split(), VQA_SPLIT), (rollouts(), ROLLOUTS), (summary(), PROFILE_SUMMARY)):
        back = read_table(write(tmp_path, df), contract)
        assert back.shape == df.shape and back.iloc[:, 0].tolist() == df.iloc[:, 0].tolist()


@pytest.mark.parametrize("change,message", [
    # an answers string would be scored character by character
    (lambda d: d.assign(answers=["red"] * 3), r"column 'answers' is large_string, allowed: a list of strings"),
    (lambda d: d.assign(sample_id=["s0", "s0", "s1"]), r"2 rows repeat a key \(sample_id\), e\.g\. \{'sample_id': 's0'\}"),
    (lambda d: d.assign(answers=[["red"], [], ["blue"]]), r"column 'answers': 1 of 3 rows break it .*not empty"),
    (lambda d: d.assign(answers=[["red"], None, ["blue"]]), r"column 'answers': 1 of 3 rows .*no nulls"),
    (lambda d: d.drop(columns=["question"]), r"column 'question' is missing"),
    (lambda d: d.iloc[:0], r"it has 0 rows"),
    (lambda d: d.assign(question=["x" * 100_000] * 3), r"column 'question': 3 of 3 rows .*at most 1,000 characters"),
])
def test_bad_vqa_splits_are_named(tmp_path, change, message):
    path = write(tmp_path, change(split()))
    with pytest.raises(TableContractError, match=rf"{path} \(VQA split table\): {message}.*dvc repro prepare_data"):
        read_table(path, VQA_SPLIT)


@pytest.mark.parametrize("column,value,message", [
    ("score", 5.0, r"column 'score': 1 of 4 rows break it \(e\.g\. 5\.0\); allowed: float, in \[0\.0, 1\.0\]"),
    ("input_tokens", -1, r"column 'input_tokens': 1 of 4 rows break it \(e\.g\. -1\)"),
    ("score", np.inf, r"column 'score': 1 of 4 rows"),
])
def test_out_of_range_rollouts_are_named(tmp_path, column, value, message):
    df = rollouts()
    df.loc[1, column] = value
    with pytest.raises(TableContractError, match=message):
        read_table(write(tmp_path, df), ROLLOUTS)


@pytest.mark.parametrize("value", [-3.0, np.inf, np.nan])
def test_a_profile_summary_with_a_negative_infinite_or_missing_latency_is_refused(tmp_path, value):
    df = summary()
    df.loc[0, "total_ms_median"] = value
    with pytest.raises(TableContractError, match=r"column 'total_ms_median': 1 of 2 rows .*finite"):
        read_table(write(tmp_path, df), PROFILE_SUMMARY)


def test_truncated_empty_and_missing_files_are_named(tmp_path):
    path = write(tmp_path, rollouts())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(TableContractError, match=rf"{path} \(rollouts table\) is not a readable Parquet file"):
        read_table(path, ROLLOUTS)
    path.write_bytes(b"")
    with pytest.raises(TableContractError, match="is not a readable Parquet file"):
        read_table(path, ROLLOUTS)
    with pytest.raises(TableContractError, match=r"nothing\.parquet \(rollouts table\) not found.*accuracy_table"):
        read_table(tmp_path / "nothing.parquet", ROLLOUTS)


def test_a_writer_checks_a_frame_before_writing():
    df = rollouts().assign(score=[0.0, 2.0, 1.0, 1.0])
    with pytest.raises(TableContractError, match=r"data/rollouts/rollouts\.parquet \(rollouts table\): column 'score'"):
        ROLLOUTS.check(df, "data/rollouts/rollouts.parquet")


def test_the_contracts_tiers_are_the_knobs():
    from knobctl.contracts import TIERS
    from knobctl.knobs import TIER_ORDER

    assert TIERS == tuple(TIER_ORDER)


def test_a_profile_summary_may_lack_decode_for_one_token_and_latency_for_a_cell_that_failed(tmp_path):
    df = summary().assign(output_tokens=[1, 2])
    df.loc[0, "decode_ms_per_token_median"] = np.nan  # one output token: no decode step
    read_table(write(tmp_path, df), PROFILE_SUMMARY)
    df.loc[1, "decode_ms_per_token_median"] = np.nan
    with pytest.raises(TableContractError, match=r"decode_ms_per_token NaN only where output_tokens is 1"):
        read_table(write(tmp_path, df), PROFILE_SUMMARY)
    df.loc[1, ["repeats", "total_ms_median"]] = (0, np.nan)  # every repeat of the cell raised
    read_table(write(tmp_path, df), PROFILE_SUMMARY)
    with pytest.raises(TableContractError, match="at least one measurement that did not fail"):
        read_table(write(tmp_path, df.assign(repeats=0)), PROFILE_SUMMARY)


@pytest.mark.parametrize("column,value", [("total_ms_adj_median", -1.0), ("vision_ms_adj_median", np.nan),
                                          ("prefill_ms_median", 0.0), ("tier", "huge")])
def test_what_the_estimator_fits_is_checked_too(tmp_path, column, value):
    df = summary().assign(total_ms_adj_median=2.0, vision_ms_adj_median=1.0)
    df.loc[0, column] = value
    with pytest.raises(TableContractError, match=rf"column '{column}'"):
        read_table(write(tmp_path, df), PROFILE_SUMMARY)


@pytest.mark.parametrize(("raw", "message"), [(b"{not json", "cannot be read .*JSONDecodeError"),
                                              (b"[1, 2]", "is a list, not a JSON object")])
def test_a_table_whose_knobctl_metadata_is_not_a_json_object_is_named(tmp_path, raw, message):
    path = tmp_path / "rollouts.parquet"
    table = pa.table({"x": [1]})
    pq.write_table(table.replace_schema_metadata({b"knobctl": b'{"model": "m"}'}), path)
    assert table_provenance(path) == {"model": "m"}
    pq.write_table(table.replace_schema_metadata({b"knobctl": raw}), path)
    with pytest.raises(TableContractError, match=f"{path}: its knobctl metadata {message}"):
        table_provenance(path)
