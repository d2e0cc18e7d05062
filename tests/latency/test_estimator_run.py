"""The fit_estimator stage's run: scored and fitted from a profile summary on disk, written as one set."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from knobctl.io import write_parquet
from knobctl.latency.estimator import EstimatorParams, LatencyEstimator
from knobctl.latency.estimator_eval import estimator_headline, evaluate
from knobctl.latency.estimator_run import fit_from_profile, write_estimator
from knobctl.latency.request import PARTS, request_ms
from knobctl.params import InputError
from tests.latency.test_estimator import TIERS, synthetic_summary


def as_profiled(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary as profile_latency writes it: the total beside the parts, each with its p10 and p90."""
    summary["total_ms_median"] = request_ms(summary["vision_ms_median"], summary["prefill_ms_median"],
                                            summary["decode_ms_per_token_median"], summary["output_tokens"])
    for part in (*PARTS, "total_ms"):
        summary[f"{part}_p10"], summary[f"{part}_p90"] = summary[f"{part}_median"] * 0.9, summary[f"{part}_median"] * 1.1
    return summary


@pytest.fixture(scope="module")
def profile(tmp_path_factory):
    path = tmp_path_factory.mktemp("profile") / "summary.parquet"
    write_parquet(path, as_profiled(synthetic_summary(noise=0.01)), {"tiers": TIERS, "device": "cpu",
                                                                      "dtype": "float32"})
    return path


def test_the_run_scores_then_fits_what_the_library_does_on_the_same_table(profile):
    run = fit_from_profile(profile, EstimatorParams(), seed=0)
    expected, points = evaluate(synthetic_summary(noise=0.01), TIERS, EstimatorParams(), 0)
    assert run.evaluation["configs"] == expected["configs"] and run.evaluation["lengths"] == expected["lengths"]
    assert run.evaluation["profile"] == {"device": "cpu", "dtype": "float32", "model": None, "batch_size": None}
    assert run.evaluation["configs"]["total_ms"]["within_10pct"] >= 0.95  # a smooth law, 1% noise
    pd.testing.assert_frame_equal(run.points, points)
    assert run.line().startswith("fit_estimator: held-out configurations: total within 10% ")


def test_the_set_written_loads_back_and_holds_the_headline_and_one_csv_per_part(profile, tmp_path):
    run = fit_from_profile(profile, EstimatorParams(), seed=0)
    write_estimator(run, tmp_path / "est", tmp_path / "metrics.json", tmp_path / "plots")
    loaded = LatencyEstimator.load(tmp_path / "est")
    t = synthetic_summary()
    cells = (t["tier"], t["top_k"], t["num_blocks"], t["text_tokens"], t["output_tokens"])
    assert (loaded.predict_total(*cells) == run.estimator.predict_total(*cells)).all()
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"headline": estimator_headline(run.evaluation)}
    csvs = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert csvs == ["decode_ms_per_token.csv", "prefill_ms.csv", "total_ms.csv", "vision_ms.csv"]
    held = pd.read_csv(tmp_path / "plots" / "total_ms.csv")
    assert list(held.columns) == ["config", "text_tokens", "output_tokens", "measured_ms", "predicted_ms"]
    assert set(held["config"]) == set(run.evaluation["configs"]["held_out"])


def test_a_profile_without_its_tier_table_asks_for_a_new_profile(tmp_path):
    path = tmp_path / "summary.parquet"
    write_parquet(path, as_profiled(synthetic_summary()), {"device": "cpu"})
    with pytest.raises(InputError, match="no tier table in its metadata; rerun `dvc repro profile_latency`"):
        fit_from_profile(path, EstimatorParams(), seed=0)
