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


def test_the_stage_run_scores_the_seeded_test_subset_at_every_corner_and_counts_what_it_cannot_ask(tmp_path):
    from knobctl.base.evaluation import corners_on_test
    from knobctl.model.runtime import save_runtime
    from knobctl.vqa.sources import select_samples
    from tests.conftest import make_runtime, vqa_frame

    rt = make_runtime(seed=1)
    save_runtime(rt, tmp_path / "model")
    test = vqa_frame(9, seed=4)
    test.loc[test.index[2], "image"] = b"not a png"  # this sample is counted, not run
    test.to_parquet(tmp_path / "test.parquet")
    own = EvalParams(batch_size=4, max_samples=8, num_threads=1)
    run = corners_on_test(str(tmp_path / "model"), tmp_path, GRID, own, ModelParams(), seed=0)
    chosen = select_samples(test, 8, 0, "test")
    asked = chosen[chosen["image"] != b"not a png"]
    h = run.metrics["headline"]
    assert h["questions"] == len(asked) == 7 and h["error_samples"] == len(chosen) - len(asked) == 1
    direct = evaluate(rt, asked, GRID.corners())
    assert h["full_accuracy"] == direct[GRID.full.label]["accuracy"]
    assert h["smallest_accuracy"] == direct[GRID.smallest.label]["accuracy"]
    assert sorted(run.corners.query("question_type == 'all'")["config"]) == sorted(k.label for k in GRID.corners())
    assert run.line().startswith(f"eval_base: test accuracy full {h['full_accuracy']:.3f}")
