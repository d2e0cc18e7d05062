"""End to end: `dvc repro` on tiny params in a temporary copy of the repository."""

from __future__ import annotations

import json
import sys

import pandas as pd
import pytest
import yaml

from knobctl.io import read_provenance
from knobctl.knobs import KnobConfig
from tests.conftest import ROOT, TINY, run  # noqa: F401  (re-exported for the other end-to-end tests)


@pytest.mark.slow
def test_repro_writes_every_output(repo):
    for split in ("train", "val", "test"):
        df = pd.read_parquet(repo / "data/vqa" / f"{split}.parquet")
        assert len(df) > 0 and {"sample_id", "image", "answers", "question_type"} <= set(df.columns)
        meta = read_provenance(repo / "data/vqa" / f"{split}.parquet")
        assert meta["split"] == split and {"numpy", "pillow", "pyarrow", "params_hash"} <= set(meta)
        # same params, same bytes, on every machine: nothing of the run, the host or torch
        assert not {"timestamp", "git_commit", "machine", "python", "torch"} & set(meta)
    files = {p.name for p in (repo / "models/base").iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "knobctl.json"} <= files
    base = json.loads((repo / "metrics/base.json").read_text())
    assert base["headline"]["steps"] == 4 and 0 <= base["headline"]["full_accuracy"] <= 1
    assert list(base) == ["headline"]  # how the run went is beside the plots
    assert json.loads((repo / "plots/base/train_base.json").read_text())["train_samples"] > 0
    test = json.loads((repo / "metrics/base_test.json").read_text())
    assert test["headline"]["questions"] == len(pd.read_parquet(repo / "data/vqa/test.parquet"))
    val, corners = pd.read_csv(repo / "plots/base/val_corners.csv"), pd.read_csv(repo / "plots/base/test_corners.csv")
    assert set(corners["config"]) == set(val["config"]) and len(set(corners["config"])) == 8
    full = corners[(corners["config"] == "high/k8/b16") & (corners["question_type"] == "all")]["accuracy"]
    assert full.tolist() == [test["headline"]["full_accuracy"]]
    assert not (repo / ".knobctl_cache/train_base").exists()


@pytest.mark.slow
def test_repro_measures_block_importance(repo):
    result = json.loads((repo / "data/block_importance/importance.json").read_text())
    assert result["order"][0] == 0 and sorted(result["order"]) == list(range(16)) and result["n_samples"] == 6
    assert [c["num_blocks"] for c in result["curve"]] == [16, 15, 14, 13, 12] and len(result["per_block"]) == 16
    metrics = json.loads((repo / "metrics/block_importance.json").read_text())
    assert list(metrics) == ["headline"] and "drop4_accuracy_cost_pct" in metrics["headline"]



@pytest.mark.slow
def test_repro_writes_the_tradeoff_section(repo):
    t = json.loads((repo / "plots/tradeoff/tradeoff.json").read_text())
    assert [r["tier"] for r in t["knobs"]["tier"]] == ["low", "medium", "high"]
    assert [r["num_blocks"] for r in t["knobs"]["num_blocks"]] == [12, 16] and t["samples"] == 5
    assert t["full_vs_smallest"]["full"] == "high/k8/b16" and t["full_vs_smallest"]["smallest"] == "low/k4/b12"
    assert len(t["headroom"]) == 3 and t["block_importance"]["order"][0] == 0
    fronts = [r["latency_ms"] for r in t["pareto_front"]]
    assert fronts == sorted(fronts) and len(fronts) >= 1
    metrics = json.loads((repo / "metrics/tradeoff.json").read_text())
    assert list(metrics) == ["headline"] and metrics["headline"]["goals_measured"] >= 8
    assert all(g["name"] and g["goal"] for g in t["goals"])
    report = (repo / "reports/summary.md").read_text()
    assert "## Trade-off of the model's knobs" in report and "MolmoE-1B" in report

@pytest.mark.slow
def test_repro_profiles_latency_and_fits_the_estimator(repo):
    from knobctl.latency.estimator import LatencyEstimator

    rows = pd.read_parquet(repo / "data/profile/latency.parquet")
    assert len(rows) == 12 * 3 * 2 * 2 and rows["error"].isna().all() and (rows["total_ms"] > 0).all()
    meta = read_provenance(repo / "data/profile/summary.parquet")
    assert meta["model"] == "models/base" and len(meta["model_hash"]) == 16
    profile = json.loads((repo / "metrics/profile.json").read_text())
    assert list(profile) == ["headline"] and 0 <= profile["headline"]["median_cv_total"] < 1
    stats = json.loads((repo / "data/profile/stats.json").read_text())
    assert stats["rows"] == len(rows) and stats["configurations"] == 12
    assert stats["median_cv"]["total_ms"] == pytest.approx(profile["headline"]["median_cv_total"], abs=1e-4)
    est = json.loads((repo / "models/latency_estimator/evaluation.json").read_text())
    assert set(est) >= {"configs", "lengths"} and est["lengths"]["held_out"] == ["6"]
    assert len(est["configs"]["held_out"]) == 2 and est["configs"]["total_ms"]["n"] == 2 * 3 * 2
    headline = json.loads((repo / "metrics/estimator.json").read_text())["headline"]
    assert headline["configs_total_mape"] == round(est["configs"]["total_ms"]["mape"], 4)
    assert set(headline) == {f"{s}_total_{m}" for s in ("configs", "lengths") for m in ("mape", "within_10pct", "r2")}
    plot = pd.read_csv(repo / "plots/estimator/total_ms.csv")
    assert len(plot) == 12 and {"measured_ms", "predicted_ms"} <= set(plot.columns)
    table = LatencyEstimator.load(repo / "models/latency_estimator").dense_table(
        [KnobConfig("low", 4, 12), KnobConfig("high", 8, 16)], [3, 9], [2, 3])
    assert table.shape == (2, 2, 2) and (table > 0).all()


@pytest.mark.slow
def test_repro_builds_the_accuracy_table(repo):
    rows = pd.read_parquet(repo / "data/rollouts/rollouts.parquet")
    assert len(rows) == 5 * 12 and rows["error"].isna().all() and rows["score"].between(0, 1).all()
    assert rows.groupby("sample_id").size().eq(12).all() and (rows["output_tokens"] >= 1).all()
    feats = pd.read_parquet(repo / "data/rollouts/features.parquet")
    assert len(feats) == 5 and {"language", "vision_low", "vision_medium", "vision_high"} <= set(feats.columns)
    assert len(feats["vision_high"].iloc[0]) == 2 * 32
    meta = read_provenance(repo / "data/rollouts/rollouts.parquet")
    assert meta["split"] == "val" and meta["samples"] == 5 and "timestamp" not in meta
    metrics = json.loads((repo / "metrics/accuracy_table.json").read_text())
    h = metrics["headline"]
    assert list(metrics) == ["headline"] and len(pd.read_csv(repo / "plots/accuracy_table/per_config.csv")) == 12
    assert h["oracle_accuracy"] >= h["best_static_accuracy"] and h["samples"] == 5
    full = json.loads((repo / "data/rollouts/summary.json").read_text())
    assert full["rollouts"] == 60 and full["best_static"]["config"] == h["best_static_config"]
    assert {k: h[k] for k in full["headline"]} == full["headline"] and full["model"]["family"] == "llava"
    assert not any((repo / ".knobctl_cache/rollouts").glob("*/rows-*"))


@pytest.mark.slow
def test_repro_trains_the_controller(repo):
    from knobctl.controller.policy import Controller

    ctrl = Controller.load(repo / "models/controller")
    feats = pd.read_parquet(repo / "data/rollouts/features.parquet")
    import numpy as np

    chosen = ctrl.choose(np.stack(feats["language"]), np.stack(
        [np.stack(feats[f"vision_{t}"]) for t in ctrl.config.tiers], axis=1), 30.0, text_tokens=10)
    assert len(chosen) == 5 and all(isinstance(k, KnobConfig) for k in chosen)
    assert ctrl.config.fit_mask and ctrl.fit_latency_ms.shape == (ctrl.config.fit_rows, 12)
    assert (ctrl.fit_latency_ms > 0).all()
    metrics = json.loads((repo / "metrics/train.json").read_text())
    assert list(metrics) == ["headline"] and metrics["headline"]["budgets_with_static"] <= 3
    detail = json.loads((repo / "plots/train/training.json").read_text())
    assert detail["steps"] == 20 and len(detail["goals"]) == 4
    assert detail["rollouts"] == 20 * 8 * 4 and len(detail["evaluation"]) == 3 and detail["reward"]["gamma"] == 2.0
    assert {"entropy_tier", "entropy_top_k", "entropy_num_blocks", "zero_variance_share"} <= set(detail["final"])
    assert {k: detail["headline"][k] for k in metrics["headline"]} == metrics["headline"]
    budgets = pd.read_csv(repo / "plots/train/budgets.csv")
    assert budgets["budget"].tolist() == ["b0", "b1", "b2"]
    assert budgets["controller_accuracy"].tolist() == [e["controller_accuracy"] for e in detail["evaluation"]]
    curves = pd.read_csv(repo / "plots/train/curves.csv")
    assert curves["step"].tolist() == [5, 10, 15, 20]


@pytest.mark.slow
def test_repro_validates_on_the_real_model_and_writes_the_report(repo):
    from knobctl.io import checkpoint_hash, read_provenance
    from knobctl.validate.summary import METHODS

    full = json.loads((repo / "data/validate/summary.json").read_text())
    s = full["summary"]
    assert s["samples"] == 3 and len(s["budgets"]) == 3 and s["budgets"] == sorted(s["budgets"])
    metrics = json.loads((repo / "metrics/validate.json").read_text())
    assert list(metrics) == ["headline"] and metrics["headline"]["goals_measured"] <= len(full["goals"]) == 6
    accuracy = pd.read_csv(repo / "plots/validate/accuracy.csv")
    assert accuracy["controller"].tolist() == [e["controller"]["accuracy"] for e in full["per_budget"].values()]
    gains = pd.read_csv(repo / "plots/validate/gain_over_lookup.csv")
    assert gains["budget_ms"].tolist() == s["budgets"]
    assert s["controller_overhead_ms"] > 0 and s["calibration"]["scale"] > 0
    # batch-1 measured answers equal the batched test rollouts', so the choices made on them are scored fairly
    assert s["requests_differing_from_rollouts"] == 0
    for entry in full["per_budget"].values():
        assert entry["controller"] is not None
        assert entry["best_measured"]["accuracy_within_budget"] >= entry["smallest"]["accuracy_within_budget"]
        assert set(entry) == {"budget_ms", "fit_share", "controller_vs_lookup", "controller_vs_random", *METHODS}
        lo, hi = entry["controller_vs_lookup"]["ci95"]
        assert lo <= entry["controller_vs_lookup"]["gain"] <= hi
    requests = pd.read_parquet(repo / "data/validate/requests.parquet")
    meta = read_provenance(repo / "data/validate/requests.parquet")  # which controller, trained with what
    assert meta["controller_hash"] == checkpoint_hash(repo / "models/controller")
    assert meta["controller_trained_with"]["reward"] == yaml.safe_load((repo / "params.yaml").read_text())["reward"]
    ctrl = requests[requests["kind"] == "controller"]
    assert len(ctrl) == 3 * 3 and (ctrl["latency_ms"] > ctrl["controller_ms"]).all()
    assert requests["score"].between(0, 1).all() and (requests["estimated_ms"] > 0).all()
    # deadlines follow the machine: each sample's speed is the tracker's median over the burst's, one per sample
    assert (requests["speed"] > 0).all() and (requests.groupby("sample_id")["speed"].nunique() == 1).all()
    assert s["calibration"]["typical"] > 0
    assert accuracy["budget_ms"].tolist() == s["budgets"] and "best_measured" in accuracy.columns
    for name in ("accuracy", "latency", "choices", "pareto"):
        assert (repo / f"plots/validate/{name}.png").read_bytes()[:4] == b"\x89PNG"
    report = (repo / "reports/summary.md").read_text()
    assert "## Goals" in report and report.count("\n| ") >= 5 + 3 and "../plots/validate/accuracy.png" in report
    assert not any((repo / ".knobctl_cache/validate").glob("*/part-*"))


@pytest.mark.slow
def test_params_wiring_reruns_only_dependent_stages(repo):
    assert "up to date" in run([sys.executable, "-m", "dvc", "status"], repo).lower()
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["eval_base"]["batch_size"] = 32
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = run([sys.executable, "-m", "dvc", "status"], repo)
    assert "eval_base" in status and "train_base" not in status and "prepare_data" not in status
    assert "profile_latency" not in status and "fit_estimator" not in status
    params["fit_estimator"]["num_leaves"] = 7
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = run([sys.executable, "-m", "dvc", "status"], repo)
    assert "fit_estimator" in status and "profile_latency" not in status and "train_base" not in status
    params["profile_latency"]["rounds"] = 3
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = run([sys.executable, "-m", "dvc", "status"], repo)
    assert "profile_latency" in status and "train_base" not in status and "accuracy_table" not in status
    params["accuracy_table"]["num_samples"] = 4
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = run([sys.executable, "-m", "dvc", "status"], repo)
    assert "accuracy_table" in status and "train_base" not in status


@pytest.mark.slow
def test_reward_weights_rerun_only_controller_training(repo):
    def stale() -> set[str]:
        status = run([sys.executable, "-m", "dvc", "status"], repo)
        return {line.strip().rstrip(":") for line in status.splitlines()
                if line.strip().endswith(":") and not line.startswith((" ", "\t"))}

    before = stale()  # earlier tests may have edited other sections
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["reward"]["gamma"] = 3.0
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert "train_controller" not in before and stale() == before | {"train_controller"}


@pytest.mark.slow
def test_model_loads_through_public_api(repo):
    from knobctl import KnobConfig, load_runtime

    rt = load_runtime(repo / "models/base", device="cpu")
    test = pd.read_parquet(repo / "data/vqa/test.parquet").head(5)
    out = rt.answer(list(test["image"]), test["question"].tolist(), KnobConfig("high", 8, 16))
    assert len(out) == 5 and all(isinstance(a, str) for a in out)
