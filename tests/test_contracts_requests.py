"""Bad requests are rows, not crashes: an image that does not decode, is cut short or declares too many pixels,
and a question longer than the model reads, each become that sample's error rows in the rollouts (and its
error row in validate's requests), counted, while every other sample is answered as before."""

from __future__ import annotations

import io
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from benchmarks.bad_input_cases import png_bomb
from knobctl.contracts import FEATURES, ROLLOUTS, VALIDATE_REQUESTS, TableContractError
from knobctl.knobs import KnobGrid
from knobctl.model.screen import request_caps
from knobctl.params import InputError, ParamsError
from knobctl.table.accuracy_table import AccuracyTable
from knobctl.table.rollouts import RolloutParams, rollout_part
from knobctl.table.summary import summarize
from knobctl.validate.measure import ValidateParams
from knobctl.validate.run import failed_samples
from tests.conftest import make_runtime, validation_frames, vqa_frame

CONFIGS = KnobGrid(tiers=("low", "high"), top_k=(4, 8), num_blocks=(12, 16)).configs()
P = RolloutParams(batch_size=3, max_new_tokens=3)


@pytest.fixture(scope="module")
def rt():
    return make_runtime()


@pytest.fixture(scope="module")
def frame():
    return vqa_frame(7)


def damaged(frame: pd.DataFrame) -> pd.DataFrame:
    big = io.BytesIO()
    Image.new("RGB", (300, 200), "red").save(big, format="PNG")  # 60,000 pixels: above a cap of 50,000
    df = frame.copy()
    df.loc[1, "image"] = b"not an image"
    df.loc[2, "image"] = frame["image"].iloc[2][:60]  # cut short
    df.loc[3, "question"] = "what color is the shape ? " * 20  # 120 tokens: above 64 positions - 18 - 3
    df.loc[4, "image"] = big.getvalue()
    df.loc[5, "image"] = png_bomb()  # 1.6 billion pixels declared: PIL refuses it before our cap
    return df


def test_the_caps_come_from_the_model_unless_params_set_them(rt):
    caps = request_caps(rt, None, None, 4, "accuracy_table")
    prompt = max(t["prompt_tokens"] for t in rt.tier_table().values())
    assert caps.max_question_tokens == rt.config.text_config.max_position_embeddings - prompt - 4 == 42
    assert caps.max_image_pixels == 40_000_000 and "the model's 64 positions" in caps.source
    caps = request_caps(rt, 1000, 7, 4, "validate")
    assert (caps.max_image_pixels, caps.max_question_tokens, caps.source) == (1000, 7, "validate.max_question_tokens")
    for cls, name in ((RolloutParams, "accuracy_table"), (ValidateParams, "validate")):
        assert cls.from_params({"max_image_pixels": 10**6, "max_question_tokens": 64}).max_question_tokens == 64
        with pytest.raises(ParamsError, match=rf"{name}.max_question_tokens=0: use an integer >= 1"):
            cls.from_params({"max_question_tokens": 0})
        with pytest.raises(ParamsError, match=rf"{name}.max_image_pixels=1.5: expected an integer"):
            cls.from_params({"max_image_pixels": 1.5})


def test_bad_requests_become_error_rows_and_the_others_keep_their_answers(rt, frame):
    clean_rows, clean_feats = rollout_part(rt, frame, CONFIGS, P)
    rows, feats = rollout_part(rt, damaged(frame), CONFIGS,
                               RolloutParams(batch_size=3, max_new_tokens=3, max_image_pixels=50_000))
    assert rows["sample_id"].tolist() == clean_rows["sample_id"].tolist()  # sample-major, in the part's order
    assert rows["config"].tolist() == clean_rows["config"].tolist()
    errors = rows.drop_duplicates("sample_id").set_index("sample_id")["error"]
    assert errors["t/0"] is None and errors["t/6"] is None
    assert errors["t/1"].startswith("image: the image does not decode (UnidentifiedImageError")
    assert "0x" not in errors["t/1"]  # no memory address: a rerun writes the same bytes
    assert errors["t/2"].startswith("image: the image does not decode")
    assert errors["t/3"].startswith("question: 120 tokens, more than the cap of 43 (the model's 64 positions")
    assert errors["t/4"] == ("image: the image declares 300x200 pixels, more than 50,000 (the cap of "
                             "accuracy_table.max_image_pixels)")
    assert errors["t/5"].startswith("image: the image does not decode (DecompressionBombError")
    bad = rows["error"].notna()
    assert rows.loc[bad, "score"].isna().all() and (rows.loc[bad, "input_tokens"] == -1).all()
    ok = ~bad
    assert rows.loc[ok, "prediction"].tolist() == clean_rows.loc[ok, "prediction"].tolist()
    assert np.isnan(np.stack(feats["language"].iloc[1:6])).all()
    ROLLOUTS.check(rows, "rollouts.parquet")  # the writer's checks hold the error rows
    FEATURES.check(feats, "features.parquet")
    table = AccuracyTable.from_frames(rows, feats)  # what every reader sees: the failed samples left out
    assert list(table.sample_ids) == ["t/0", "t/6"] and np.isfinite(table.language).all()
    np.testing.assert_array_equal(table.scores, AccuracyTable.from_frames(clean_rows, clean_feats).scores[[0, 6]])
    summary = summarize(rows, CONFIGS)
    assert summary["error_samples"] == 5 and summary["samples"] == 7


def test_without_bad_requests_the_rows_are_those_of_before(rt, frame):
    """The screened path is the old one when nothing fails: same batches, same frames."""
    rows, feats = rollout_part(rt, frame, CONFIGS, P)
    again, again_feats = rollout_part(rt, frame, CONFIGS, RolloutParams(batch_size=3, max_new_tokens=3,
                                                                        max_image_pixels=64 * 64))
    pd.testing.assert_frame_equal(rows, again)
    pd.testing.assert_frame_equal(feats, again_feats)


def test_a_sample_that_failed_with_finite_features_or_nan_features_without_failing_is_refused(rt, frame):
    rows, feats = rollout_part(rt, damaged(frame), CONFIGS, P)
    fixed = feats.copy()
    fixed.loc[0, "language"] = np.full(len(feats["language"].iloc[0]), np.nan, dtype=np.float32)
    with pytest.raises(TableContractError, match=r"sample 't/0' has NaN features but answers in the rollouts"):
        AccuracyTable.from_frames(rows, fixed)
    every = rows.assign(error="image: x", score=np.nan)
    with pytest.raises(TableContractError, match="every one of the table's 7 samples failed"):
        AccuracyTable.from_frames(every, feats)


def test_validate_counts_failed_samples_and_writes_their_error_rows():
    rows = pd.DataFrame({"sample_id": ["a", "a", "b", "b"], "question_type": ["color"] * 4,
                         "error": [None, None, "image: x", "image: x"]})
    assert failed_samples(rows).to_dict("records") == [{"sample_id": "b", "question_type": "color",
                                                        "error": "image: x"}]
    req, _ = validation_frames()
    req = req.assign(question_type="color", tier=req["config"].str.split("/").str[0],
                     top_k=req["config"].str.extract(r"k(\d+)")[0].astype(int),
                     num_blocks=req["config"].str.extract(r"b(\d+)")[0].astype(int), answer="x", order=0, repeat=0)
    errors = pd.DataFrame([{"sample_id": "c", "question_type": "shape", "request_error": "question: 90 tokens"}])
    table = pd.concat([req, errors.assign(kind="error")], ignore_index=True)
    assert VALIDATE_REQUESTS.check(table, "requests.parquet") is table
    with pytest.raises(TableContractError, match="rows break a rule"):  # an error on a measured row
        VALIDATE_REQUESTS.check(table.assign(request_error="x"), "requests.parquet")
    with pytest.raises(TableContractError, match="column 'score'"):
        VALIDATE_REQUESTS.check(table.assign(score=table["score"].where(table["kind"] != "fixed")),
                                "requests.parquet")


def test_the_fit_estimator_stage_names_a_profile_without_its_tier_table(tmp_path, monkeypatch):
    import importlib.util

    from tests.test_contracts import summary

    path = tmp_path / "summary.parquet"
    summary().to_parquet(path)  # no knobctl metadata: no tier table
    spec = importlib.util.spec_from_file_location("fit_estimator_stage", "stages/fit_estimator.py")
    stage = importlib.util.module_from_spec(spec)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the stage puts its checkout's src first
    spec.loader.exec_module(stage)
    with pytest.raises(InputError, match=r"summary.parquet has no tier table in its metadata; rerun `dvc repro "
                                         r"profile_latency`"):
        stage.main(["--profile", str(path), "--out", str(tmp_path / "est"), "--metrics", str(tmp_path / "m.json"),
                    "--plots", str(tmp_path / "plots")])


def test_eval_base_and_block_importance_leave_out_what_the_model_cannot_take_and_count_it(rt, frame):
    from knobctl.base.evaluation import evaluate
    from knobctl.base.importance import ImportanceParams, importance_samples
    from knobctl.knobs import KnobConfig
    from knobctl.model.screen import askable

    picked = askable(rt, damaged(frame), "eval_base")
    # the 300x200 image is under the model's own pixel cap (only accuracy_table and validate set a lower one)
    assert picked.errors["sample_id"].tolist() == frame["sample_id"].iloc[[1, 2, 3, 5]].tolist()
    assert picked.errors["error"].str.startswith(("image:", "question:")).all()
    assert picked.asked["sample_id"].tolist() == frame["sample_id"].iloc[[0, 4, 6]].tolist()
    full = KnobConfig("high", 8, 16)
    clean = evaluate(rt, frame.iloc[[0, 4, 6]].reset_index(drop=True), [full], batch_size=3)
    assert evaluate(rt, picked.asked, [full], batch_size=3) == clean  # the others answered as if alone
    assert evaluate(rt, picked.asked, [full], batch_size=3, images=picked.images) == clean  # decoded once
    assert askable(rt, frame, "eval_base").errors.empty
    with pytest.raises(InputError, match="every one of the 2 samples eval_base selected failed, e.g. .*image"):
        askable(rt, damaged(frame).iloc[[1, 2]], "eval_base")
    chosen = importance_samples(rt, damaged(frame), ImportanceParams(num_samples=4), seed=0)
    assert len(chosen.asked) + len(chosen.errors) == 4
