"""LightGBM latency estimator: accuracy on a known latency law, monotonicity, honest splits, round trip."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from knobctl.knobs import KnobGrid
from knobctl.latency.estimator import EstimatorParams, LatencyEstimator
from knobctl.latency.estimator_eval import evaluate, holdout_configs, make_splits
from knobctl.latency.request import request_ms
from knobctl.weights import ArtifactMismatch
from tests.conftest import rehash

TIERS = {"low": {"visual_tokens": 1, "num_images": 1, "image_size": 16, "prompt_tokens": 3},
         "medium": {"visual_tokens": 4, "num_images": 1, "image_size": 32, "prompt_tokens": 6},
         "high": {"visual_tokens": 16, "num_images": 1, "image_size": 64, "prompt_tokens": 18}}
GRID = KnobGrid.from_params({})
TEXT = [4, 10, 16]
OUT = [2, 6]


def law(tier, k, b, text, out):
    """A latency law with the shape measured on this CPU: blocks dominate, top-k and length add a little."""
    vis = TIERS[tier]["visual_tokens"]
    inp = vis + text + 2
    vision = 2.0 + 0.05 * vis
    prefill = 0.9 * b + 0.15 * k + 0.02 * inp * b / 16
    decode = 0.8 * b + 0.1 * k + 0.01 * (inp + out / 2)
    return vision, prefill, decode


def synthetic_summary(noise: float = 0.0, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for kc, t, o in itertools.product(GRID.configs(), TEXT, OUT):
        v, p, d = (x * (1 + noise * rng.standard_normal()) for x in law(kc.tier, kc.top_k, kc.num_blocks, t, o))
        rows.append({"config": kc.label, "tier": kc.tier, "top_k": kc.top_k, "num_blocks": kc.num_blocks,
                     "visual_tokens": TIERS[kc.tier]["visual_tokens"], "text_tokens": t,
                     "input_tokens": TIERS[kc.tier]["visual_tokens"] + t + 2, "output_tokens": o, "repeats": 3,
                     "vision_ms_median": v, "prefill_ms_median": p, "decode_ms_per_token_median": d})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def fitted() -> LatencyEstimator:
    return LatencyEstimator.fit(synthetic_summary(noise=0.01), TIERS, EstimatorParams(), seed=0)


def test_held_out_configurations_and_lengths_are_predicted_within_10_percent():
    metrics, points = evaluate(synthetic_summary(noise=0.01), TIERS, EstimatorParams(), seed=0)
    assert metrics["configs"]["test_rows"] == 15 * len(TEXT) * len(OUT)
    assert metrics["configs"]["total_ms"]["within_10pct"] >= 0.95
    assert metrics["lengths"]["total_ms"]["within_10pct"] >= 0.95
    assert metrics["configs"]["total_ms"]["mape"] < 0.05
    for part in ("vision_ms", "prefill_ms", "decode_ms_per_token", "total_ms"):
        assert set(metrics["configs"][part]) == {"n", "mape", "r2", "within_5pct", "within_10pct",
                                                 "median_abs_pct_error"}
    assert set(points["split"]) == {"configs", "lengths"} and (points["predicted_ms"] > 0).all()


def test_held_out_splits_share_nothing_with_training():
    summary = synthetic_summary()
    configs, lengths = make_splits(summary, EstimatorParams(holdout_config_fraction=0.2), seed=3)
    assert set(configs.train["config"]).isdisjoint(configs.test["config"])
    assert set(configs.test["config"]) == set(holdout_configs(summary["config"].unique().tolist(), 0.2, 3))
    assert set(lengths.train["text_tokens"]).isdisjoint(lengths.test["text_tokens"])
    assert set(lengths.train["config"]).isdisjoint(configs.test["config"])
    assert set(lengths.test["text_tokens"]) == {10}  # default: every length but the shortest and longest
    assert len(configs.train) + len(configs.test) == len(summary)


def test_holdout_lengths_must_have_been_profiled():
    with pytest.raises(ValueError, match="holdout_text_tokens"):
        make_splits(synthetic_summary(), EstimatorParams(holdout_text_tokens=(7,)), seed=0)


def test_predictions_never_fall_when_work_grows():
    est = LatencyEstimator.fit(synthetic_summary(noise=0.08, seed=4), TIERS, EstimatorParams(), seed=0)
    ks, bs, ts, tiers = np.arange(4, 9), np.arange(12, 17), np.arange(1, 30), ["low", "medium", "high"]
    grid = np.array(list(itertools.product(range(3), range(5), range(5), range(len(ts)))))
    pred = est.predict(np.array(tiers, dtype=object)[grid[:, 0]], ks[grid[:, 1]], bs[grid[:, 2]], ts[grid[:, 3]], 4)
    cube = {part: pred[part].to_numpy().reshape(3, 5, 5, len(ts)) for part in ("prefill_ms", "decode_ms_per_token",
                                                                             "vision_ms", "total_ms")}
    for part, c in cube.items():
        for axis in range(4):
            assert (np.diff(c, axis=axis) >= -1e-9).all(), (part, axis)


def test_save_load_round_trip_and_dense_table(fitted, tmp_path):
    fitted.save(tmp_path / "est")
    files = sorted(p.name for p in (tmp_path / "est").iterdir())
    assert files == ["decode_ms_per_token.txt", "estimator.json", "manifest.json", "prefill_ms.txt", "vision_ms.txt"]
    loaded = LatencyEstimator.load(tmp_path / "est")
    configs = GRID.configs()
    table = loaded.dense_table(configs, [3, 10, 20], [1, 2, 8])  # [C, T, O]
    assert table.shape == (75, 3, 3)
    ref = fitted.predict_total(configs[7].tier, configs[7].top_k, configs[7].num_blocks, 20, 8)[0]
    assert table[7, 2, 2] == pytest.approx(ref)
    parts = fitted.predict("high", 8, 16, 10, [1, 2, 8])
    assert np.allclose(parts["total_ms"], request_ms(parts["vision_ms"], parts["prefill_ms"],
                                                     parts["decode_ms_per_token"], [1, 2, 8]))
    assert parts["total_ms"].iloc[0] == pytest.approx(parts["vision_ms"].iloc[0] + parts["prefill_ms"].iloc[0])
    v, p, d = law("high", 8, 16, 10, 6)
    assert fitted.predict_total("high", 8, 16, 10, 6)[0] == pytest.approx(v + p + 5 * d, rel=0.05)


def test_predict_is_vectorised_over_requests_and_configurations(fitted):
    n = 4000
    rng = np.random.default_rng(0)
    configs = GRID.configs()
    idx = rng.integers(0, len(configs), n)
    out = fitted.predict(np.array([configs[i].tier for i in idx], dtype=object), [configs[i].top_k for i in idx],
                         [configs[i].num_blocks for i in idx], rng.integers(4, 17, n), 2)
    assert len(out) == n and np.isfinite(out["total_ms"]).all()


def test_load_names_the_missing_stage(tmp_path):
    with pytest.raises(FileNotFoundError, match="fit_estimator"):
        LatencyEstimator.load(tmp_path)


def test_old_tier_table_asks_for_a_new_profile(fitted):
    old = {t: {k: v for k, v in d.items() if k != "prompt_tokens"} for t, d in TIERS.items()}
    with pytest.raises(ValueError, match="prompt_tokens"):
        LatencyEstimator.fit(synthetic_summary(), old, EstimatorParams(), seed=0)


def test_unknown_tier_is_rejected(fitted):
    with pytest.raises(ValueError, match="ultra"):
        fitted.predict("ultra", 8, 16, 10, 2)


@pytest.mark.parametrize("bad, word", [({"holdout_config_fraction": 1.0}, "holdout_config_fraction"),
                                       ({"num_leaves": 0}, "num_leaves"), ({"lr": 0.1}, "unknown keys")])
def test_bad_params_name_the_key(bad, word):
    with pytest.raises(ValueError, match=word):
        EstimatorParams.from_params(bad)


def test_fits_the_drift_corrected_medians_when_present():
    from knobctl.latency.estimator import target_column

    summary = synthetic_summary().assign(total_ms_adj_median=1.0, prefill_ms_adj_median=1.0)
    assert target_column(summary, "prefill_ms", "drift_corrected") == "prefill_ms_adj_median"
    assert target_column(summary, "prefill_ms", "raw") == "prefill_ms_median"
    assert target_column(summary, "vision_ms", "drift_corrected") == "vision_ms_median"  # absent: plain median
    with pytest.raises(ValueError, match="target"):
        EstimatorParams.from_params({"target": "mean"})


@pytest.mark.parametrize("damage,message", [
    (lambda d: (d / "total_ms.txt").write_text("x"), None),  # not a part the estimator reads: ignored
    (lambda d: (d / "prefill_ms.txt").write_text((d / "prefill_ms.txt").read_text()[:2000]),
     r"prefill_ms\.txt is not a whole LightGBM model \(truncated\?\)"),
    (lambda d: (d / "vision_ms.txt").write_text(""), r"vision_ms\.txt is not a whole LightGBM model"),
    (lambda d: (d / "vision_ms.txt").unlink(), r"vision_ms\.txt not found"),
    (lambda d: (d / "estimator.json").write_text("{not json"), r"estimator\.json is not the estimator's spec"),
])
def test_a_damaged_estimator_is_named_not_aborted(fitted, tmp_path, damage, message):
    """LightGBM aborts the whole process on a truncated model file; the loader checks the file first."""
    from knobctl.latency.estimator import EstimatorError

    fitted.save(tmp_path / "est")
    damage(tmp_path / "est")
    if message is not None:  # the manifest names the damaged file before LightGBM parses anything
        with pytest.raises(ArtifactMismatch, match=r"(is missing|is not the file manifest\.json names).*fit_estimator"):
            LatencyEstimator.load(tmp_path / "est")
        rehash(tmp_path / "est")  # and behind it, the loader's own checks
    if message is None:
        assert LatencyEstimator.load(tmp_path / "est").predict_total("high", 8, 16, 5, 2).shape == (1,)
        return
    with pytest.raises(EstimatorError, match=rf"{tmp_path / 'est'}/{message}.*dvc repro fit_estimator"
                       if "estimator.json" not in message else message):
        LatencyEstimator.load(tmp_path / "est")


def test_an_estimator_fitted_on_other_features_is_refused(fitted, tmp_path):
    import json

    fitted.save(tmp_path / "est")
    path = tmp_path / "est" / "manifest.json"
    manifest = json.loads(path.read_text())
    assert manifest["features"]["prefill_ms"] == ["input_tokens", "visual_tokens", "top_k", "num_blocks", "batch_size"]
    manifest["features"]["prefill_ms"] = manifest["features"]["prefill_ms"][:-1]
    path.write_text(json.dumps(manifest))
    with pytest.raises(ArtifactMismatch, match="fitted on other features.*dvc repro fit_estimator"):
        LatencyEstimator.load(tmp_path / "est")
