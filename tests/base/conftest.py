"""Shared by the base-training tests: small dimensions, a 2x2x2 grid, quick params, a small train split."""

from __future__ import annotations

import pytest

from knobctl.base.training import TrainBaseParams
from knobctl.knobs import KnobGrid
from knobctl.model.presets import TinyDims
from knobctl.vqa.sources import DataParams, prepare

DIMS = TinyDims(hidden_size=32, expert_intermediate=16, vision_hidden=32, vision_layers=1, vision_intermediate=64,
                num_heads=2, vision_heads=2, patch_size=8, vision_pool=2)
GRID = KnobGrid(tiers=("low", "high"), top_k=(4, 8), num_blocks=(12, 16))


@pytest.fixture(scope="module")
def train_df():
    return prepare(DataParams(source="easy_vqa", max_train_images=40, max_test_images=2), seed=0)["train"]


def quick(**kw) -> TrainBaseParams:
    return TrainBaseParams(**{"vision_warmstart_steps": 2, **kw})
