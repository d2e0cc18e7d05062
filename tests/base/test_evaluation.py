"""Evaluation at knob configurations: accuracy overall and per question type, corner metrics."""

from __future__ import annotations

import numpy as np
import pytest

from knobctl.base.evaluation import EvalParams, corner_frame, corner_headline, evaluate
from knobctl.base.training import train_base
from knobctl.knobs import KnobConfig
from knobctl.model.presets import ModelParams
from knobctl.params import ParamsError
from tests.base.conftest import DIMS, GRID, quick


def test_evaluate_reports_accuracy_per_type(train_df):
    rt, _ = train_base(train_df, GRID, ModelParams(dims=DIMS), quick(steps=1, batch_size=4), seed=0)
    df = train_df.head(30)
    res = evaluate(rt, df, [KnobConfig("low", 4, 12)])
    r = res["low/k4/b12"]
    assert r["n"] == 30 and 0.0 <= r["accuracy"] <= 1.0
    preds = rt.answer(list(df["image"]), df["question"].tolist(), KnobConfig("low", 4, 12))
    manual = np.mean([p == a[0] for p, a in zip(preds, df["answers"])])
    assert r["accuracy"] == pytest.approx(manual, abs=1e-4)
    assert set(r["per_question_type"]) <= {"color", "shape", "yes/no"}


def test_corner_headline_and_the_csv_of_every_corner_and_type():
    results = {"high/k8/b16": {"tier": "high", "top_k": 8, "num_blocks": 16, "accuracy": 0.9, "n": 10,
                               "per_question_type": {"color": 1.0, "shape": 0.8}},
               "low/k4/b12": {"tier": "low", "top_k": 4, "num_blocks": 12, "accuracy": 0.5, "n": 10,
                              "per_question_type": {"color": 0.7, "shape": 0.3}}}
    m = corner_headline(results, KnobConfig("high", 8, 16), KnobConfig("low", 4, 12))
    assert m == {"full_accuracy": 0.9, "smallest_accuracy": 0.5, "corner_min": 0.5, "corner_max": 0.9}
    frame = corner_frame(results)
    assert len(frame) == 6 and frame.loc[frame["question_type"] == "shape", "accuracy"].tolist() == [0.8, 0.3]


def test_eval_params():
    assert EvalParams.from_params({"batch_size": 8}).batch_size == 8
    with pytest.raises(ParamsError, match="eval_base.batch_size='abc': expected an integer"):
        EvalParams.from_params({"batch_size": "abc"})


def test_eval_params_cap_is_checked():
    assert EvalParams().max_samples == 3000 and EvalParams(max_samples=None).max_samples is None
    with pytest.raises(ParamsError, match="eval_base.max_samples"):
        EvalParams(max_samples=0)
