"""The accuracy table on disk: shards, resume after a kill, merge, and the summary metrics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import knobctl.table.accuracy_table as at
from knobctl.io import write_parquet_atomic
from knobctl.knobs import KnobGrid
from knobctl.table.accuracy_table import AccuracyTable, PartPlan, merge_parts, run_parts
from knobctl.table.rollouts import RolloutParams
from knobctl.table.summary import per_config_table, summarize, table_metrics
from tests.conftest import make_runtime, vqa_frame

CONFIGS = KnobGrid(tiers=("low", "high"), top_k=(4, 8), num_blocks=(12, 16)).configs()
P = RolloutParams(part_size=3, batch_size=2, max_new_tokens=3)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    rt, samples = make_runtime(), vqa_frame(8)
    plan = PartPlan(tmp_path_factory.mktemp("whole"), len(samples), P.part_size)
    run_parts(rt, samples, CONFIGS, P, plan, range(plan.num_parts), progress=False)
    return rt, samples, merge_parts(plan)


def test_parts_and_shards():
    plan = PartPlan(directory=None, num_samples=8, part_size=3)
    assert plan.num_parts == 3
    assert plan.shard_parts(0, 2) == [0, 2] and plan.shard_parts(1, 2) == [1]
    with pytest.raises(ValueError, match="need 0 <= shard < num_shards"):
        plan.shard_parts(2, 2)


def test_shards_merge_into_the_uninterrupted_table(setup, tmp_path):
    rt, samples, (rows, feats) = setup
    assert len(rows) == 8 * len(CONFIGS) and list(feats["sample_id"]) == list(samples["sample_id"])
    plan = PartPlan(tmp_path, len(samples), P.part_size)
    run_parts(rt, samples, CONFIGS, P, plan, plan.shard_parts(1, 2), progress=False)
    with pytest.raises(FileNotFoundError, match=r"2 of 3 parts are not done .* \(first: \[0, 2\]\)"):
        merge_parts(plan)
    run_parts(rt, samples, CONFIGS, P, plan, plan.shard_parts(0, 2), progress=False)
    sharded_rows, sharded_feats = merge_parts(plan)
    pd.testing.assert_frame_equal(sharded_rows, rows)
    pd.testing.assert_frame_equal(sharded_feats, feats)


def test_a_killed_run_resumes_without_redoing_parts_and_gives_the_same_table(setup, tmp_path, monkeypatch):
    rt, samples, (rows, feats) = setup
    plan = PartPlan(tmp_path, len(samples), P.part_size)
    calls = []
    real = at.rollout_part

    def killed_on_second_part(rt_, part, *a, **kw):
        calls.append(part["sample_id"].iloc[0])
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process dies while part 1 is running
        return real(rt_, part, *a, **kw)

    monkeypatch.setattr(at, "rollout_part", killed_on_second_part)
    with pytest.raises(KeyboardInterrupt):
        run_parts(rt, samples, CONFIGS, P, plan, range(plan.num_parts), progress=False)
    assert plan.missing() == [1, 2] and not list(tmp_path.glob("*.tmp"))
    calls.clear()
    monkeypatch.setattr(at, "rollout_part", lambda *a, **kw: (calls.append(a[1]["sample_id"].iloc[0]), real(*a, **kw))[1])
    ran = run_parts(rt, samples, CONFIGS, P, plan, range(plan.num_parts), progress=False)
    assert calls == ["t/3", "t/6"] and ran == 5 * len(CONFIGS)  # parts 1 and 2 only
    resumed_rows, resumed_feats = merge_parts(plan)
    pd.testing.assert_frame_equal(resumed_rows, rows)
    pd.testing.assert_frame_equal(resumed_feats, feats)
    assert run_parts(rt, samples, CONFIGS, P, plan, range(plan.num_parts), progress=False) == 0


def _table(scores: dict[str, list[float]], types: list[str]) -> pd.DataFrame:
    """Hand-made rows: scores[config label] per sample."""
    rows = []
    for i, qtype in enumerate(types):
        for k in CONFIGS:
            s = scores.get(k.label, [0.0] * len(types))[i]
            rows.append({"sample_id": f"s{i}", "question_type": qtype, "config": k.label, **k.as_dict(),
                         "prediction": "x", "score": s, "input_tokens": 5, "output_tokens": 2, "error": None})
    return pd.DataFrame(rows)


def test_summary_on_a_hand_made_table():
    table = _table({"high/k8/b16": [1, 1, 0, 0.3], "low/k4/b12": [0, 0, 1, 0.3], "high/k4/b12": [1, 1, 0, 0.6]},
                   ["color", "color", "shape", "yes/no"])
    table.loc[(table["sample_id"] == "s3") & (table["config"] == "low/k8/b16"), ["score", "error", "prediction"]] = (
        np.nan, "RuntimeError: x", None)
    m = summarize(table, CONFIGS)  # s3's low/k8/b16 is an error row: a wrong answer
    assert m["samples"] == 4 and m["rollouts"] == 32 and m["error_rows"] == 1 and m["error_samples"] == 1
    assert m["full_config"] == "high/k8/b16" and m["full_accuracy"] == pytest.approx(2.3 / 4)
    assert m["smallest_config"] == "low/k4/b12" and m["smallest_accuracy"] == pytest.approx(1.3 / 4)
    assert m["best_static"] == {"config": "high/k4/b12", "accuracy": pytest.approx(2.6 / 4)}
    assert m["oracle_accuracy"] == pytest.approx((1 + 1 + 1 + 0.6) / 4)
    assert m["per_question_type"]["color"] == {"samples": 2, "full": 1.0, "smallest": 0.0,
                                              "mean_over_configs": pytest.approx(0.25), "oracle": 1.0}
    assert m["per_question_type"]["shape"]["oracle"] == 1.0 and m["per_question_type"]["shape"]["full"] == 0.0
    plot = per_config_table(table, CONFIGS)
    assert plot.set_index("config").loc["high/k4/b12", "accuracy"] == pytest.approx(0.65)
    assert table_metrics(m) == {"headline": {**m["headline"], "best_static_config": "high/k4/b12", "samples": 4,
                                             "error_samples": 1}}


def test_summary_counts_an_error_row_as_a_wrong_answer():
    table = _table({"high/k8/b16": [1, 0.6]}, ["color", "color"])
    table.loc[(table["sample_id"] == "s1") & (table["config"] == "high/k8/b16"), ["score", "error"]] = (np.nan, "E")
    m = summarize(table, CONFIGS)
    assert m["full_accuracy"] == 0.5  # the error is a wrong answer, as in every stage, not a sample left out
    assert m["oracle_accuracy"] == 0.5  # s1's other configurations score 0 too
    assert per_config_table(table, CONFIGS).set_index("config").loc["high/k8/b16", "accuracy"] == 0.5


def test_dense_arrays_for_lookups(setup):
    _, samples, (rows, feats) = setup
    table = AccuracyTable.from_frames(rows, feats)
    assert table.configs == tuple(CONFIGS) and table.tiers == ("low", "high")
    assert table.scores.shape == (8, 8) and table.vision.shape == (8, 2, 64) and table.language.shape == (8, 64)
    i, j = 5, CONFIGS.index(CONFIGS[6])
    cell = rows[(rows["sample_id"] == samples["sample_id"].iloc[i]) & (rows["config"] == CONFIGS[6].label)]
    assert table.scores[i, j] == cell["score"].item() and table.output_tokens[i, j] == cell["output_tokens"].item()
    np.testing.assert_array_equal(table.vision[i, 1], feats["vision_high"].iloc[i])
    with pytest.raises(ValueError, match="not 8 samples x 8 configurations"):
        AccuracyTable.from_frames(rows.iloc[:-1], feats)


def _cut_short(path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _done_plan(directory, rows: pd.DataFrame, feats: pd.DataFrame) -> PartPlan:
    """Every part of the uninterrupted table on disk, as run_parts leaves them (without rolling out again)."""
    plan = PartPlan(directory, len(feats), P.part_size)
    for i in range(plan.num_parts):
        lo, hi = i * P.part_size, (i + 1) * P.part_size
        write_parquet_atomic(plan.features_path(i), feats.iloc[lo:hi])
        write_parquet_atomic(plan.rows_path(i), rows.iloc[lo * len(CONFIGS) : hi * len(CONFIGS)])
    assert plan.missing() == []
    return plan


@pytest.mark.parametrize("name", ["rows-00001.parquet", "features-00001.parquet"])
def test_a_damaged_part_is_recomputed_not_merged(setup, tmp_path, monkeypatch, capsys, name):
    rt, samples, (rows, feats) = setup
    plan = _done_plan(tmp_path, rows, feats)
    _cut_short(tmp_path / name)  # a copy or a full disk that cut the file short
    assert plan.missing() == [1] and plan.damage(1) and not plan.done(1)
    with pytest.raises(at.DamagedPartError, match=rf"part 1: {name}"):
        merge_parts(plan)
    calls = []
    real = at.rollout_part
    monkeypatch.setattr(at, "rollout_part", lambda *a, **kw: (calls.append(a[1]["sample_id"].iloc[0]), real(*a, **kw))[1])
    ran = run_parts(rt, samples, CONFIGS, P, plan, range(plan.num_parts), progress=False)
    assert calls == ["t/3"] and ran == 3 * len(CONFIGS)  # only the damaged part, and all of it
    err = capsys.readouterr().err
    assert f"part 1 in {tmp_path} is damaged ({name}" in err and "recomputing" in err
    again_rows, again_feats = merge_parts(plan)
    pd.testing.assert_frame_equal(again_rows, rows)
    pd.testing.assert_frame_equal(again_feats, feats)


def test_a_part_of_the_wrong_size_is_damaged(setup, tmp_path):
    _, _, (rows, feats) = setup
    plan = _done_plan(tmp_path, rows, feats)
    assert plan.done(2) and plan.part_samples(2) == 2
    pd.read_parquet(plan.features_path(2)).iloc[:1].to_parquet(plan.features_path(2))  # one sample short
    assert plan.damage(2) == ["features-00002.parquet: 1 rows for a part of 2 samples"] and not plan.done(2)


def test_merge_names_a_part_damaged_inside_its_data(setup, tmp_path, monkeypatch):
    _, _, (rows, feats) = setup
    plan = _done_plan(tmp_path, rows, feats)
    real = pd.read_parquet

    def unreadable_rows_of_part_0(path, *a, **kw):
        if str(path).endswith("rows-00000.parquet"):
            raise OSError("Corrupt snappy compressed data.")
        return real(path, *a, **kw)

    monkeypatch.setattr(pd, "read_parquet", unreadable_rows_of_part_0)  # footer fine, data not
    with pytest.raises(at.DamagedPartError, match=r"rows-00000\.parquet cannot be read .*Corrupt snappy.*rerun"):
        merge_parts(plan)
