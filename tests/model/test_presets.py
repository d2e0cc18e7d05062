"""Presets: the true-size molmoe-1b-shape builds on the meta device and takes every knob."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import LlavaForConditionalGeneration

from knobctl.knobs import KnobGrid
from knobctl.model.families import family_of
from knobctl.model.images import tier_pixels
from knobctl.model.llava_layout import LlavaLayout
from knobctl.model.presets import (
    MOLMOE_TIERS,
    TINY_TIERS,
    TierSpec,
    molmoe_1b_shape_config,
    preset_config,
    qwen3_vl_30b_a3b_shape_config,
)
from knobctl.model.runtime import Runtime, load_runtime
from knobctl.model.tokenizer import build_word_tokenizer


@pytest.fixture(scope="module")
def molmoe_meta() -> Runtime:
    config, spec = preset_config("molmoe-1b-shape")
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    layout = LlavaLayout.of(config, spec, build_word_tokenizer([]), "molmoe-1b-shape")
    return Runtime(model=model, spec=spec, source="molmoe-1b-shape", layout=layout)


def test_molmoe_shape_dimensions():
    cfg = molmoe_1b_shape_config()
    t, v = cfg.text_config, cfg.vision_config
    assert (t.hidden_size, t.num_hidden_layers, t.num_attention_heads, t.num_experts, t.intermediate_size,
            t.num_experts_per_tok, t.vocab_size) == (2048, 16, 16, 64, 1024, 8, 50304)
    assert (v.hidden_size, v.num_hidden_layers, v.image_size, v.patch_size) == (1024, 24, 336, 14)


def test_molmoe_parameter_count_within_3_percent(molmoe_meta):
    total = sum(p.numel() for p in molmoe_meta.model.parameters())
    assert abs(total - 7.2e9) / 7.2e9 < 0.03, total


def test_molmoe_tier_tokens_follow_molmo(molmoe_meta):
    assert {t: molmoe_meta.visual_tokens(t) for t in ("low", "medium", "high")} == {"low": 432, "medium": 1008, "high": 1872}


def test_molmoe_vision_path_emits_the_tier_tokens_on_meta(molmoe_meta):
    img = torch.zeros(1, 3, 200, 300)
    for tier, n in (("low", 432), ("high", 1872)):
        out = molmoe_meta.encode_images(img, tier)
        assert tuple(out.embeds.shape) == (1, n, 2048)


def test_molmoe_accepts_every_knob_of_the_grid(molmoe_meta):
    grid = KnobGrid()
    for cfg in grid.configs():
        with molmoe_meta.knobs_applied(cfg):
            assert len(molmoe_meta.lm.layers) == cfg.num_blocks
            assert {r.top_k for r in molmoe_meta._routers[1:]} == {cfg.top_k}
            assert molmoe_meta._routers[0].top_k == 8  # the decision block keeps the model's own top-k
            assert len(molmoe_meta._routers) == 16
    assert len(molmoe_meta.lm.layers) == 16


def test_tier_pixels_cuts_global_image_plus_crops():
    img = torch.arange(2 * 3 * 8 * 12, dtype=torch.float32).reshape(2, 3, 8, 12)
    spec = TierSpec(image_size=4, crop_grid=(2, 3))
    out = tier_pixels(img, spec)
    assert out.shape == (2 * 7, 3, 4, 4)
    # The image is exactly 2x3 crops of 4x4 already, so crop (1, 2) is a plain slice of the input.
    torch.testing.assert_close(out[6], img[0, :, 4:8, 8:12])


def test_tiny_tiers_and_unknown_preset():
    assert [TINY_TIERS[t].num_tokens(4) for t in ("low", "medium", "high")] == [1, 4, 16]  # 4 px patches
    assert MOLMOE_TIERS["medium"].num_images == 7
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        preset_config("huge")
    with pytest.raises(ValueError, match="does not divide"):
        TierSpec(image_size=48, pool=2).tokens_per_image(16)


def test_block_order_reads_the_order_of_a_json_file(tmp_path):
    from knobctl.model.presets import ModelParams
    from knobctl.model.spec import parse_block_order
    from tests.conftest import make_runtime

    order = [0, 15, 1, 14, 2, 13, 3, 12, 4, 11, 5, 10, 6, 9, 7, 8]
    path = tmp_path / "importance.json"
    path.write_text(json.dumps({"order": order, "rank_by": "loglik"}))
    assert parse_block_order(str(path)) == tuple(order) and parse_block_order(path) == tuple(order)
    assert ModelParams(block_order=str(path)).block_order == str(path)  # kept as written, read at load
    # train_base parses the section before block_importance has written the file: no error then.
    assert ModelParams(block_order=str(tmp_path / "not_yet.json")).block_order.endswith("not_yet.json")
    rt = make_runtime(block_order=str(path))
    assert rt.spec.block_order == tuple(order) and rt.spec.blocks_for(4, 16) == [0, 1, 14, 15]


@pytest.mark.parametrize(("content", "fragment"), [
    (None, "there is no file {path}: run `dvc repro block_importance`"),
    ("{not json", "{path} is not valid JSON"),
    ('{"ordre": [0, 1]}', "{path} has no `order` key holding a list of block indices (found None)"),
    ('{"order": [0, "1"]}', "{path} has no `order` key"),
    ("[0, 1, 2]", "{path} has no `order` key"),
])
def test_a_missing_or_malformed_block_order_file_is_named_with_the_fix(tmp_path, content, fragment):
    from knobctl.model.spec import parse_block_order
    from knobctl.params import ParamsError

    path = tmp_path / "importance.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ParamsError) as err:
        parse_block_order(str(path))
    assert fragment.format(path=path) in str(err.value) and "dvc repro block_importance" in str(err.value)


def test_a_block_order_file_of_another_model_is_named(tmp_path):
    from tests.conftest import make_runtime

    path = tmp_path / "importance.json"
    path.write_text(json.dumps({"order": [0, 2, 1, 3]}))
    with pytest.raises(ValueError, match=f"{path}: block_order must be 'first' or a ranked list of every block 0..15"):
        make_runtime(block_order=str(path))
    path.write_text(json.dumps({"order": [3, *range(3), *range(4, 16)]}))
    with pytest.raises(ValueError, match=f"{path}: block_order must start with block 0"):
        make_runtime(block_order=str(path))


def shape_parameters(model_class, config, parts: dict[str, str], top_k: int, experts: int) -> dict[str, float]:
    """A shape preset's parameter counts, built on the meta device: each of ``parts`` (name -> parameter-name
    prefix, outside the language model), ``text`` (everything else) and ``active`` (text with ``top_k`` of its
    ``experts`` routed experts per token)."""
    with torch.device("meta"):
        model = model_class(config)
    sizes = {name: p.numel() for name, p in model.named_parameters()}
    out = {part: sum(n for name, n in sizes.items() if name.startswith(prefix)) for part, prefix in parts.items()}
    routed = sum(n for name, n in sizes.items() if ".mlp.experts." in name)
    out["text"] = sum(sizes.values()) - sum(out.values())
    out["active"] = out["text"] - routed + routed * top_k / experts
    return out


def test_qwen3_vl_30b_a3b_shape_has_the_published_parameter_counts():
    """30.5 B parameters in the language model and 3.3 B active per token (8 of 128 experts), as published."""
    from transformers import Qwen3VLMoeForConditionalGeneration

    config = qwen3_vl_30b_a3b_shape_config()
    n = shape_parameters(Qwen3VLMoeForConditionalGeneration, config, {"vision": "model.visual."}, 8, 128)
    text, active, vision = n["text"], n["active"], n["vision"]
    assert abs(text / 30.5e9 - 1) < 0.01 and abs(active / 3.3e9 - 1) < 0.03, (text, active)
    assert 0.4e9 < vision < 0.7e9
    assert family_of(json.loads(config.to_json_string())).deepstack


def test_the_qwen3_vl_shape_preset_loads_as_a_family_runtime_on_meta():
    """``profile_latency.source: qwen3-vl-30b-a3b-shape`` on a GPU: the same runtime, built here on the meta
    device (no memory), with the family's tiers, prompt markers and knob bounds."""
    from knobctl.knobs import KnobGrid
    from knobctl.params import ParamsError

    rt = load_runtime("qwen3-vl-30b-a3b-shape", device="meta", dtype=torch.bfloat16)
    assert rt.family.model_type == "qwen3_vl_moe" and rt.num_layers == 48 and rt.num_experts == 128
    assert abs(sum(p.numel() for p in rt.lm.parameters()) / 30.2e9 - 1) < 0.01  # LM without its head
    assert {t: v["visual_tokens"] for t, v in rt.tier_table().items()} == {"low": 256, "medium": 576, "high": 1225}
    start, image, end = (rt.tokenizer.convert_tokens_to_ids(t) for t in rt.family.image_markers)
    assert (start, image, end) == (151652, 151655, 151653) and rt.ids["[EOS]"] == 151645
    assert rt.prompt_ids(["w1 w2"], 3) == [[start, image, image, image, end, 1, 2]]
    rt.validate_grid(KnobGrid(("low", "medium", "high"), (4, 5, 6, 7, 8), (40, 44, 48)))
    with pytest.raises(ParamsError, match="knobs.num_blocks"):
        rt.validate_grid(KnobGrid(("low",), (8,), (40, 49)))
