"""Every stage from the profile to validation on a tiny random Qwen3-VL-MoE checkpoint saved to a local folder
as the hub lays one out: the stages' own scripts, pointed at the folder (accuracy near zero is expected;
the plumbing is the point)."""

from __future__ import annotations

import json
import shutil
import sys

import pandas as pd
import pytest
import yaml

from knobctl.io import read_provenance
from tests.conftest import run
from tests.model.test_family_runtime import save_hub_checkpoint

#: The tiny model has 4 blocks and 8 experts; its tiers are a few visual tokens each.
OVERLAY = {
    "knobs": {"top_k": [2, 4], "num_blocks": [3, 4]},
    "model": {"tier_tokens": {"low": 4, "medium": 16, "high": 36}},
    "profile_latency": {"text_tokens": [3, 6, 9], "output_tokens": [2, 3], "rounds": 2, "warmup_rounds": 0},
    "accuracy_table": {"num_samples": 6, "part_size": 3, "batch_size": 3, "max_new_tokens": 3},
    "train_controller": {"steps": 10, "batch_size": 8, "group_size": 4, "log_every": 5, "eval_budgets": 3,
                         "eval_fraction": 0.4},
    "validate": {"num_samples": 3, "num_budgets": 3, "warmup_requests": 1, "calibration_requests": 3, "batch_size": 3},
}


@pytest.mark.slow
def test_every_stage_runs_on_a_hub_layout_qwen3_vl_moe_checkpoint(repo, tmp_path):
    """``repo`` is the tiny pipeline's copy (its data/vqa is reused); the stages write under tmp_path."""
    model = save_hub_checkpoint(tmp_path / "Qwen3-VL-tiny", "qwen3_vl_moe")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for name, values in OVERLAY.items():
        params[name] = {**params[name], **values}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = tmp_path / "out"

    def stage(name: str, *args: str) -> str:
        return run([sys.executable, str(repo / "stages" / f"{name}.py"), "--params", str(tmp_path / "params.yaml"),
                    *args], tmp_path)

    stage("profile_latency", "--set", f"source={model}", "--out", f"{out}/profile", "--metrics", f"{out}/profile.json",
          "--cache", f"{out}/cache/profile")
    stage("fit_estimator", "--profile", f"{out}/profile/summary.parquet", "--out", f"{out}/estimator", "--metrics",
          f"{out}/estimator.json", "--plots", f"{out}/plots/estimator")
    stage("accuracy_table", "--model", str(model), "--data", str(repo / "data/vqa"), "--out", f"{out}/rollouts",
          "--metrics", f"{out}/accuracy_table.json", "--plots", f"{out}/plots/rollouts", "--cache", f"{out}/cache/rollouts")
    stage("train_controller", "--rollouts", f"{out}/rollouts", "--estimator", f"{out}/estimator", "--profile",
          f"{out}/profile", "--data", str(repo / "data/vqa"), "--out", f"{out}/controller", "--metrics",
          f"{out}/train.json", "--plots", f"{out}/plots/train")
    printed = stage("validate", "--model", str(model), "--controller", f"{out}/controller", "--estimator",
                    f"{out}/estimator", "--rollouts", f"{out}/rollouts", "--data", str(repo / "data/vqa"), "--out",
                    f"{out}/validate", "--metrics", f"{out}/validate.json", "--plots", f"{out}/plots/validate",
                    "--cache", f"{out}/cache/validate")

    profile = pd.read_parquet(out / "profile/latency.parquet")
    assert len(profile) == 12 * 3 * 2 * 2 and profile["error"].isna().all() and (profile["total_ms"] > 0).all()
    tiers = read_provenance(out / "profile/summary.parquet")["tiers"]
    assert [tiers[t]["visual_tokens"] for t in ("low", "medium", "high")] == [4, 16, 36]
    visual = profile.groupby("tier")["visual_tokens"].first() if "visual_tokens" in profile else None
    assert visual is None or visual.to_dict() == {"high": 36, "low": 4, "medium": 16}
    rows = pd.read_parquet(out / "rollouts/rollouts.parquet")
    assert len(rows) == 6 * 12 and rows["error"].isna().all() and rows["prediction"].notna().all()
    assert (rows["output_tokens"].between(1, 3)).all()
    # the prompt is the checkpoint's chat template around the question: tiers differ by their visual tokens
    prompt = rows[rows["config"] == "high/k4/b4"]["input_tokens"].to_numpy() - \
        rows[rows["config"] == "low/k4/b4"]["input_tokens"].to_numpy()
    assert (prompt == 36 - 4).all()
    meta = read_provenance(out / "rollouts/rollouts.parquet")
    assert meta["tier_tokens"] == {"low": 4, "medium": 16, "high": 36} and meta["feature_dim"] == 64
    assert (out / "controller").is_dir() and json.loads((out / "train.json").read_text())["headline"]
    requests = pd.read_parquet(out / "validate/requests.parquet")
    assert len(requests) > 0 and (requests["latency_ms"] > 0).all()
    summary = json.loads((out / "validate.json").read_text())
    assert summary["headline"] and "validate:" in printed
    shutil.rmtree(out / "cache", ignore_errors=True)
