"""The block_importance stage's run: its provenance names the checkpoint and no clock, and a sample the model
cannot take is counted in the metrics, not measured."""

from __future__ import annotations

from knobctl.base.importance_run import run_importance
from knobctl.knobs import KnobGrid
from knobctl.model.runtime import save_runtime
from tests.base.test_importance import IDENTITY, identity_runtime
from tests.conftest import vqa_frame


def test_the_run_ranks_the_identity_block_last_and_counts_the_sample_it_cannot_ask(tmp_path):
    save_runtime(identity_runtime(), tmp_path / "model")
    split = vqa_frame(9, seed=2)
    split.loc[split.index[0], "image"] = b"\x89PNG truncated"
    split.to_parquet(tmp_path / "train.parquet")
    own = {"source": str(tmp_path / "model"), "num_samples": 9, "batch_size": 8, "rank_by": "kl", "num_threads": 1}
    grid = KnobGrid(tiers=("low", "high"), top_k=(4, 8), num_blocks=(14, 16))
    run = run_importance(own, grid, None, seed=0, data=tmp_path)
    assert run.result["order"][0] == 0 and run.result["order"][-1] == IDENTITY and run.result["n_samples"] == 8
    prov = run.result["provenance"]
    assert prov["model"] == str(tmp_path / "model") and prov["seed"] == 0 and "timestamp" not in prov
    assert run.metrics["headline"]["error_samples"] == 1
    assert run.line.startswith("block_importance: 8 samples in ")
