"""`dvc repro` on a tiny random Qwen3-VL-MoE or InternVL (Qwen3-MoE) checkpoint saved to a local folder as the hub lays one out:
``model.source`` names the folder, train_base adopts it, and every later stage runs on it (accuracy near
zero is expected; the plumbing is the point)."""

from __future__ import annotations

import json
import sys

import pandas as pd
import pytest

from knobctl.io import read_provenance
from tests.conftest import TINY, copy_repo, run
from tests.model.test_family_runtime import save_hub_checkpoint

#: The tiny model has 4 blocks and 8 experts; its tiers are a few visual tokens each.
FAMILY = {
    "knobs": {"top_k": [2, 4], "num_blocks": [3, 4]},
    "accuracy_table": {**TINY["accuracy_table"], "num_samples": 6, "part_size": 3, "batch_size": 3,
                       "max_new_tokens": 3},
    "train_controller": {**TINY["train_controller"], "steps": 10},
    "block_importance": {**TINY["block_importance"], "num_samples": 4, "batch_size": 4},
}


#: Per family: visual tokens per tier (InternVL: a tile, a 2 x 2 grid, a 3 x 3 grid, with thumbnails) and its name
CASES = {"qwen3_vl_moe": ({"low": 4, "medium": 16, "high": 36}, "Qwen3-VL-MoE"),
         "internvl": ({"low": 4, "medium": 20, "high": 40}, "InternVL")}


@pytest.mark.slow
@pytest.mark.parametrize("family", list(CASES))
def test_dvc_repro_runs_every_stage_on_a_hub_layout_folder(tmp_path, family):
    model = save_hub_checkpoint(tmp_path / f"{family}-tiny", family)
    tiers, name = CASES[family]
    overlay = {**TINY, **FAMILY, "model": {"source": str(model), "tier_tokens": tiers}}
    repo = copy_repo(tmp_path / "repo", overlay)
    run([sys.executable, "-m", "dvc", "repro"], repo)

    pointer = json.loads((repo / "models/base/knobctl_source.json").read_text())
    assert pointer["source"] == str(model) and pointer["model_type"] == family
    assert not list((repo / "models/base").glob("*.safetensors"))  # recorded, not copied
    base = json.loads((repo / "metrics/base.json").read_text())
    adopted = json.loads((repo / "plots/base/train_base.json").read_text())["adopted"]
    assert adopted["fingerprint"] == pointer["fingerprint"] and 0 <= base["headline"]["full_accuracy"] <= 1
    profile = pd.read_parquet(repo / "data/profile/latency.parquet")
    assert len(profile) == 12 * 3 * 2 * 2 and profile["error"].isna().all() and (profile["total_ms"] > 0).all()
    meta = read_provenance(repo / "data/profile/summary.parquet")
    assert [meta["tiers"][t]["visual_tokens"] for t in ("low", "medium", "high")] == list(tiers.values())
    rows = pd.read_parquet(repo / "data/rollouts/rollouts.parquet")
    assert len(rows) == 6 * 12 and rows["error"].isna().all() and rows["prediction"].notna().all()
    assert rows["output_tokens"].between(1, 3).all()
    # the prompt is the checkpoint's chat template around the question: the tiers differ by their visual tokens
    high = rows[rows["config"] == "high/k4/b4"]["input_tokens"].to_numpy()
    low = rows[rows["config"] == "low/k4/b4"]["input_tokens"].to_numpy()
    assert (high - low == tiers["high"] - tiers["low"]).all()
    meta = read_provenance(repo / "data/rollouts/rollouts.parquet")
    assert meta["tier_tokens"] == tiers and meta["feature_dim"] == 64
    order = json.loads((repo / "data/block_importance/importance.json").read_text())["order"]
    assert order[0] == 0 and sorted(order) == [0, 1, 2, 3]
    assert json.loads((repo / "metrics/train.json").read_text())["headline"]
    requests = pd.read_parquet(repo / "data/validate/requests.parquet")
    assert len(requests) > 0 and (requests["latency_ms"] > 0).all()
    assert f"Model family: {name}" in (repo / "reports/summary.md").read_text()
