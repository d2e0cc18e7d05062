"""InternVL with a Qwen3-MoE language model (InternVL3.5-30B-A3B's layout): tiers as caps on tiles, the image's
markers as the stock processor writes them, 1-D positions, and knobctl's decoding, rollouts and knob scopes on a
tiny random folder saved as the hub lays it out; the true-size shape preset counted on the meta device."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from knobctl.knobs import KnobConfig
from knobctl.model.internvl_layout import InternVLLayout, max_patches_for
from knobctl.model.presets import internvl3_5_30b_a3b_shape_config
from knobctl.model.runtime import load_runtime
from knobctl.table.rollouts import rollout_batch
from tests.model.test_families import IMAGE, TILE_TOKENS, image_processor, picture
from tests.model.test_family_runtime import QUESTIONS, assert_cached_decoding_equals_recomputation, save_hub_checkpoint
from tests.model.test_presets import shape_parameters

#: A tile, a 2 x 2 grid and its thumbnail, a 3 x 3 grid and its thumbnail.
TIERS = {"low": 4, "medium": 20, "high": 40}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    path = save_hub_checkpoint(tmp_path_factory.mktemp("internvl"), "internvl", seed=4)
    image_processor("internvl", 5 * TILE_TOKENS).save_pretrained(path)  # as released: max_patches 4, 2 x 2
    return path


def test_a_tier_caps_the_tiles_and_the_high_tier_is_the_checkpoints_own(folder):
    own = load_runtime(folder, device="cpu")
    assert isinstance(own.layout, InternVLLayout) and own.layout.tile_tokens == TILE_TOKENS
    assert own.layout.tiers == {"low": 20, "medium": 20, "high": 20}  # the family's lower caps exceed its own
    assert own.layout.max_patches("high") == 4
    rt = load_runtime(folder, device="cpu", tier_tokens=TIERS)
    assert [max_patches_for(t, TILE_TOKENS) for t in TIERS.values()] == [1, 4, 9]
    assert rt.image_size == 56 * 3  # a square that fills the 3 x 3 grid of 56-px tiles
    square = torch.from_numpy(np.array(picture(rt.image_size, rt.image_size)))[None]  # [1, S, S, 3]
    for tier, budget in TIERS.items():
        visual = rt.encode_images(square, tier)
        assert visual.num_tokens == rt.visual_tokens(tier) == budget, tier
        inputs = rt.embed(visual, rt.prompt_ids(["w1 w2"], visual.num_tokens))
        ids = inputs["input_ids"][0].tolist()
        assert ids.count(IMAGE) == budget and ids[ids.index(IMAGE) - 1] == 252 and ids[ids.index(IMAGE) + budget] == 253
        assert inputs["position_ids"].shape == inputs["input_ids"].shape  # 1-D positions
    wide = rt.encode_images([picture(640, 480)], "high").num_tokens  # 4 x 3 tiles would be 13: the 9-tile cap holds
    assert wide <= TIERS["high"]


def test_cached_decoding_equals_recomputation_and_rollouts_equal_answers(folder):
    rt = load_runtime(folder, device="cpu", tier_tokens=TIERS, block_order=[0, 2, 1, 3])
    assert_cached_decoding_equals_recomputation(rt)
    images = torch.from_numpy(np.stack([np.array(picture(rt.image_size, rt.image_size))] * 3))
    configs = [KnobConfig(t, k, n) for t in ("low", "high") for k in (1, 4) for n in (2, 4)]
    qids = rt.tokenizer(QUESTIONS, add_special_tokens=False)["input_ids"]
    res = rollout_batch(rt, images, qids, configs, 5)
    for knobs in configs:
        assert rt.decode(res.tokens[knobs]) == rt.answer(images, QUESTIONS, knobs, max_new_tokens=5), knobs
    assert len({tuple(rt.decode(t)) for t in res.tokens.values()}) >= 4


def test_knobs_are_restored_after_an_exception(folder):
    rt = load_runtime(folder, device="cpu", tier_tokens=TIERS)
    layers = rt.lm.layers
    with pytest.raises(RuntimeError, match="inside"), rt.knobs_applied(KnobConfig("low", 1, 2)):
        assert len(rt.lm.layers) == 2 and layers[3].mlp.gate.top_k == 1 and layers[0].mlp.gate.top_k == 4
        raise RuntimeError("inside")
    assert rt.lm.layers is layers and all(layer.mlp.gate.top_k == 4 for layer in layers)


def test_internvl3_5_30b_a3b_shape_has_the_published_parameter_counts():
    """Qwen3-30B-A3B: 30.5 B parameters and 3.3 B active per token (8 of 128 experts); InternViT-300M."""
    from transformers import InternVLForConditionalGeneration

    n = shape_parameters(InternVLForConditionalGeneration, internvl3_5_30b_a3b_shape_config(),
                         {"vision": "model.vision_tower.", "projector": "model.multi_modal_projector."}, 8, 128)
    text, active, vision = n["text"], n["active"], n["vision"]
    assert abs(text / 30.5e9 - 1) < 0.01 and abs(active / 3.3e9 - 1) < 0.03, (text, active)
    assert abs(vision / 0.3e9 - 1) < 0.05


def test_the_internvl_shape_preset_loads_as_a_runtime_on_meta():
    rt = load_runtime("internvl3.5-30b-a3b-shape", device="meta", dtype=torch.bfloat16)
    assert rt.family.model_type == "internvl" and rt.num_layers == 48 and rt.num_experts == 128
    assert {t: v["visual_tokens"] for t, v in rt.tier_table().items()} == {"low": 256, "medium": 1280, "high": 2560}
    assert rt.layout.tiers["high"] == 13 * 256  # 12 tiles and a thumbnail, as released
    assert rt.prompt_ids(["w1 w2"], 2) == [[151669, 151671, 151671, 151670, 1, 2]]
    assert json.loads(internvl3_5_30b_a3b_shape_config().to_json_string())["text_config"]["model_type"] == "qwen3_moe"
