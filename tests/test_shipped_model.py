"""The shipped base model: committed to git as dvc.lock records it, built for params.yaml, and it answers its own
workload (a fresh clone's `dvc repro` starts from it instead of retraining)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from knobctl.knobs import KnobConfig
from knobctl.model.presets import ModelParams
from knobctl.model.runtime import load_runtime
from knobctl.vqa.metric import vqa_score
from knobctl.vqa.mixed import mixed_rows
from knobctl.vqa.sources import DataParams, decode_images
from tests.conftest import ROOT

BASE = ROOT / "models/base"


def test_models_base_is_the_dvc_lock_entry_and_outside_the_dvc_cache():
    """`dvc repro` skips train_base only while the committed folder hashes to its dvc.lock entry."""
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        [stage] = repo.stage.collect("train_base")
        out = next(o for o in stage.outs if o.def_path == "models/base")
        assert out.use_cache is False  # in git, not in the DVC cache: a clone has it without a DVC remote
        assert out.status() == {}, "models/base differs from dvc.lock: `dvc commit train_base` after retraining"


@pytest.fixture(scope="module")
def shipped():
    return load_runtime(BASE, device="cpu")


def test_shipped_model_is_built_for_the_default_params(shipped):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    dims = ModelParams.from_params(params["model"]).dims
    text, vision = shipped.config.text_config, shipped.config.vision_config
    assert (text.hidden_size, text.num_hidden_layers, text.num_experts, text.num_experts_per_tok) == (
        dims.hidden_size, dims.num_layers, dims.num_experts, dims.top_k)
    assert (vision.patch_size, vision.num_hidden_layers) == (dims.patch_size, dims.vision_layers)
    assert {t: shipped.spec.tiers[t].num_tokens(vision.patch_size) for t in ("low", "medium", "high")} == {
        "low": 1, "medium": 4, "high": 16}


def test_shipped_model_answers_its_workload_and_its_knobs_cost(shipped):
    """On 30 freshly generated test images (not in its training split): every question type right at the full
    configuration, and the two resources each cost what the workload says: the low tier the pattern, 12 blocks
    none of the colours."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    rows = mixed_rows("test", 30, params["seed"], DataParams.from_params(params["prepare_data"]).mixed)
    images = torch.from_numpy(decode_images([r[2] for r in rows], size=shipped.image_size))
    questions, answers, types = [r[3] for r in rows], [r[4] for r in rows], np.array([r[5] for r in rows])

    def accuracy(knobs: KnobConfig) -> dict[str, float]:
        scores = np.array([vqa_score(a, ans) for a, ans in zip(shipped.answer(images, questions, knobs), answers)])
        return {t: float(scores[types == t].mean()) for t in sorted(set(types))}

    full = accuracy(KnobConfig("high", 8, 16))
    assert min(full.values()) >= 0.8, full
    low = accuracy(KnobConfig("low", 8, 16))
    assert low["color"] >= 0.9 and low["pattern"] <= full["pattern"] - 0.3, (full, low)
    assert accuracy(KnobConfig("high", 8, 12))["color"] >= 0.9
