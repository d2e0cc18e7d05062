"""Knob adapters on tiny random Qwen3-VL-MoE and GLM-4.5V (glm4v_moe) models built from configs, on CPU:
work counted per knob with hooks, cached decoding against recomputation under the same knobs, DeepStack
under skipped blocks, restoring after an exception, and refusing unsupported configs before building."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from transformers import (
    Glm4vImageProcessorPil,
    Glm4vMoeConfig,
    Glm4vMoeForConditionalGeneration,
    GotOcr2ImageProcessorPil,
    InternVLConfig,
    InternVLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
    Qwen3VLMoeConfig,
    Qwen3VLMoeForConditionalGeneration,
)

from knobctl.model.checkpoint import CheckpointError
from knobctl.model.families import (
    FAMILIES,
    UnsupportedModel,
    check_top_k,
    decoder,
    family_of,
    knobs_applied,
    max_top_k,
)
from knobctl.params import InputError

IMAGE, VIDEO, START, END = 250, 251, 252, 253


def qwen_config(patch: int = 16, **text) -> Qwen3VLMoeConfig:
    rope = {"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 1, 1], "mrope_interleaved": True}
    return Qwen3VLMoeConfig(
        text_config={"vocab_size": 256, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4,
                     "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "moe_intermediate_size": 16,
                     "num_experts": 8, "num_experts_per_tok": 4, "decoder_sparse_step": 1, "mlp_only_layers": [],
                     "max_position_embeddings": 512, "tie_word_embeddings": False,
                     "initializer_range": 0.2,  # large enough that top_k and skipped blocks change tokens
                     "rope_parameters": rope, **text},
        vision_config={"depth": 3, "hidden_size": 32, "intermediate_size": 64, "num_heads": 4, "patch_size": patch,
                       "spatial_merge_size": 2, "temporal_patch_size": 2, "out_hidden_size": 32,
                       "num_position_embeddings": 64, "deepstack_visual_indexes": [0, 1]},
        image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=START, vision_end_token_id=END)


def glm_config(patch: int = 14, **text) -> Glm4vMoeConfig:
    rope = {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5, "mrope_section": [2, 1, 1]}
    return Glm4vMoeConfig(
        text_config={"vocab_size": 256, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4,
                     "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "moe_intermediate_size": 16,
                     "n_routed_experts": 8, "num_experts_per_tok": 4, "n_shared_experts": 1, "norm_topk_prob": True,
                     "routed_scaling_factor": 1.0, "first_k_dense_replace": 1, "max_position_embeddings": 512,
                     "initializer_range": 0.2, "n_group": 1, "topk_group": 1, "rope_parameters": rope, **text},
        vision_config={"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 4, "image_size": 56,
                       "patch_size": patch, "spatial_merge_size": 2, "temporal_patch_size": 2, "out_hidden_size": 32},
        image_token_id=IMAGE, video_token_id=VIDEO, image_start_token_id=START, image_end_token_id=END,
        video_start_token_id=254, video_end_token_id=255)


def internvl_config(patch: int = 14, **text) -> InternVLConfig:
    """InternVL with a Qwen3-MoE language model: tiles of 4 x 4 ``patch``-px patches, pixel-shuffled to 2 x 2
    visual tokens."""
    return InternVLConfig(
        vision_config={"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
                       "image_size": [4 * patch, 4 * patch], "patch_size": [patch, patch]},
        text_config={"model_type": "qwen3_moe", "vocab_size": 256, "hidden_size": 32, "intermediate_size": 64,
                     "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
                     "moe_intermediate_size": 16, "num_experts": 8, "num_experts_per_tok": 4, "decoder_sparse_step": 1,
                     "mlp_only_layers": [], "norm_topk_prob": True, "max_position_embeddings": 512,
                     "initializer_range": 0.2, "tie_word_embeddings": False, **text},
        image_token_id=IMAGE, downsample_ratio=0.5, vision_feature_layer=-1, vision_feature_select_strategy="default",
        tie_word_embeddings=False)


#: The released checkpoints' patch sizes.
PATCH = {"qwen3_vl_moe": 16, "glm4v_moe": 14, "internvl": 14}
#: Visual tokens per tile of the tiny InternVL (a 2 x 2 shuffle of 4 x 4 patches).
TILE_TOKENS = 4


def processor_size(family: str, max_tokens: int, patch: int | None = None, min_tokens: int = 4) -> dict[str, int]:
    """The processor's size for ``min_tokens`` to ``max_tokens`` visual tokens per image, counted by hand: merge 2,
    and GLM's resize counts a still image once per temporal patch (2)."""
    per_token = ((patch or PATCH[family]) * 2) ** 2 * (2 if family == "glm4v_moe" else 1)
    return {"shortest_edge": min_tokens * per_token, "longest_edge": max_tokens * per_token}


def image_processor(family: str, max_tokens: int, patch: int | None = None):
    """The family's image processor with the tier setting for at most ``max_tokens`` visual tokens (InternVL: a
    grid of ``max_tokens / 4 - 1`` tiles with its thumbnail, counted by hand)."""
    if family == "internvl":
        side = 4 * (patch or PATCH[family])
        tiles = max_tokens // TILE_TOKENS
        return GotOcr2ImageProcessorPil(size={"height": side, "width": side}, crop_to_patches=True, min_patches=1,
                                        max_patches=1 if tiles <= 2 else tiles - 1, image_mean=[0.5] * 3,
                                        image_std=[0.5] * 3)
    size, patch = processor_size(family, max_tokens, patch), patch or PATCH[family]
    if family == "qwen3_vl_moe":
        return Qwen2VLImageProcessorPil(patch_size=patch, temporal_patch_size=2, merge_size=2, size=size,
                                        image_mean=[0.5] * 3, image_std=[0.5] * 3)
    return Glm4vImageProcessorPil(patch_size=patch, temporal_patch_size=2, merge_size=2, size=size)


BUILD = {"qwen3_vl_moe": (qwen_config, Qwen3VLMoeForConditionalGeneration),
         "glm4v_moe": (glm_config, Glm4vMoeForConditionalGeneration),
         "internvl": (internvl_config, InternVLForConditionalGeneration)}


def tiny(family: str, seed: int = 0, patch: int | None = None, **text) -> nn.Module:
    make_config, model_class = BUILD[family]
    torch.manual_seed(seed)
    model = model_class(make_config(patch or PATCH[family], **text)).eval()
    model.set_experts_implementation("eager")
    return model


def picture(width: int = 224, height: int = 160) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8))


def inputs_for(family: str, max_tokens: int = 64, image: Image.Image | None = None) -> dict[str, torch.Tensor]:
    """Prompt ids by hand (a word, the image's tokens between its start and end markers, three words) and
    the image processor's pixels: what the family's processor would give, without its tokenizer."""
    pixels = image_processor(family, max_tokens)(images=[image or picture()], return_tensors="pt")
    if family == "internvl":  # 1-D positions: no token types
        n = int(pixels.pop("num_patches").sum()) * TILE_TOKENS
        ids = torch.tensor([[5, START] + [IMAGE] * n + [END, 1, 2, 3]])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), **pixels}
    n = int(pixels["image_grid_thw"].prod(-1).sum()) // 4  # merge 2 x 2
    ids = torch.tensor([[5, START] + [IMAGE] * n + [END, 1, 2, 3]])
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "mm_token_type_ids": (ids == IMAGE).int(),
            **pixels}


def regrown(model: nn.Module, inputs: dict[str, torch.Tensor], ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """The prompt and the tokens generated after it, for a forward without a cache. A generated token may be the
    image token's id: M-RoPE families mark only the prompt's image slots by token type; InternVL, which counts
    image tokens by id, gets the prompt's embeddings with the image features in place and the answer's after."""
    if "mm_token_type_ids" in inputs:
        kinds = torch.zeros_like(ids, dtype=inputs["mm_token_type_ids"].dtype)
        kinds[:, : inputs["input_ids"].shape[1]] = inputs["mm_token_type_ids"]
        return {**inputs, "input_ids": ids, "attention_mask": torch.ones_like(ids), "mm_token_type_ids": kinds}
    prompt = inputs["input_ids"]
    feats = model.model.get_image_features(inputs["pixel_values"], vision_feature_layer=-1,
                                           vision_feature_select_strategy="default").pooler_output  # [tiles, t, H]
    embeds = model.get_input_embeddings()(ids)  # [1, L, H]
    slots = torch.zeros_like(ids, dtype=torch.bool)
    slots[:, : prompt.shape[1]] = prompt == IMAGE
    embeds = embeds.masked_scatter(slots[..., None], feats.reshape(-1, feats.shape[-1]))
    return {"inputs_embeds": embeds, "attention_mask": torch.ones_like(ids)}


class Work:
    """Hooks counting decoder layer calls and (token, expert) evaluations per original layer index."""

    def __init__(self, model: nn.Module):
        self.calls: dict[int, int] = {}
        self.experts: dict[int, list[int]] = {}
        for i, layer in enumerate(decoder(model).layers):
            layer.register_forward_pre_hook(lambda m, a, i=i: self.calls.__setitem__(i, self.calls.get(i, 0) + 1))
            if hasattr(layer.mlp, "experts"):
                layer.mlp.experts.register_forward_pre_hook(lambda m, a, i=i: self._count(i, m, a[1]))

    def _count(self, i: int, experts: nn.Module, index: torch.Tensor) -> None:
        tokens, evaluated = self.experts.setdefault(i, [0, 0])
        self.experts[i] = [tokens + index.shape[0], evaluated + int((index < experts.num_experts).sum())]

    def per_token(self) -> dict[int, float]:
        return {i: e / t for i, (t, e) in sorted(self.experts.items())}


@pytest.mark.parametrize("family", ["qwen3_vl_moe", "glm4v_moe", "internvl"])
def test_experts_per_token_follow_top_k_after_the_decision_block(family):
    model, inputs = tiny(family), inputs_for(family)
    work = Work(model)
    routed = [1, 2, 3] if family == "glm4v_moe" else [0, 1, 2, 3]  # GLM-4.5V's block 0 is dense
    for k in (4, 2, 1):
        work.experts.clear()
        with torch.no_grad(), knobs_applied(model, FAMILIES[family], range(4), k):
            model(**inputs)
        per_token = work.per_token()
        assert sorted(per_token) == routed
        assert all(per_token[i] == (4 if i == 0 else k) for i in routed), (k, per_token)
    assert all(layer.mlp.gate.top_k == 4 for layer in decoder(model).layers if hasattr(layer.mlp, "gate"))


@pytest.mark.parametrize("family", ["qwen3_vl_moe", "glm4v_moe", "internvl"])
@pytest.mark.parametrize(("blocks", "top_k"), [([0, 1, 3], 2), ([0, 2], 4)])
def test_skipped_blocks_never_run_and_cached_decoding_equals_recomputation(family, blocks, top_k):
    model, inputs = tiny(family, seed=1), inputs_for(family)
    work = Work(model)
    steps = 5
    with torch.no_grad(), knobs_applied(model, FAMILIES[family], blocks, top_k):
        cached = model.generate(**inputs, max_new_tokens=steps, min_new_tokens=steps, do_sample=False)
        calls = dict(work.calls)
        ids, recomputed = inputs["input_ids"], []
        for _ in range(steps):  # the whole prompt and answer again at every step, no cache
            logits = model(**regrown(model, inputs, ids), use_cache=False).logits
            token = logits[:, -1].argmax(-1, keepdim=True)  # [1, 1]
            ids = torch.cat([ids, token], 1)
            recomputed.append(int(token))
        full = model.generate(**inputs, max_new_tokens=steps, min_new_tokens=steps, do_sample=False)
    assert calls == {b: steps for b in blocks}  # prefill + 4 decode steps, on the kept blocks only
    assert cached[0, -steps:].tolist() == recomputed
    assert len(decoder(model).layers) == 4
    stock = model.generate(**inputs, max_new_tokens=steps, min_new_tokens=steps, do_sample=False)
    assert not torch.equal(full, stock) or top_k == 4 and len(blocks) == 4  # the knobs changed the answer


def test_deepstack_features_stay_on_their_original_blocks_when_blocks_are_skipped():
    """Keeping blocks 0, 2, 3 must equal the full model with block 1 an identity: DeepStack's second feature
    (meant for after block 1) is added after block 0, not after block 2."""

    class Identity(nn.Module):
        def forward(self, hidden_states, *args, **kwargs):
            return hidden_states

    model, inputs = tiny("qwen3_vl_moe", seed=2), inputs_for("qwen3_vl_moe")
    with torch.no_grad():
        with knobs_applied(model, FAMILIES["qwen3_vl_moe"], [0, 2, 3], 4):
            skipped = model(**inputs).logits
        layers = decoder(model).layers
        kept = layers[1]
        layers[1] = Identity()
        reference = model(**inputs).logits
        layers[1] = kept
        shifted = model(**inputs).logits  # sanity: block 1 matters
    assert torch.allclose(skipped, reference, atol=1e-5)
    assert not torch.allclose(shifted, reference, atol=1e-3)


def test_knobs_are_restored_after_an_exception_and_block_0_is_required():
    model = tiny("qwen3_vl_moe")
    layers = decoder(model).layers
    with pytest.raises(RuntimeError, match="inside"), knobs_applied(model, FAMILIES["qwen3_vl_moe"], [0, 3], 1):
        assert len(decoder(model).layers) == 2 and layers[3].mlp.gate.top_k == 1 and layers[0].mlp.gate.top_k == 4
        assert decoder(model)._forward_pre_hooks
        raise RuntimeError("inside")
    assert decoder(model).layers is layers and all(layer.mlp.gate.top_k == 4 for layer in layers)
    assert not decoder(model)._forward_pre_hooks and not decoder(model)._forward_hooks
    assert not any(layer._forward_hooks or layer._forward_pre_hooks for layer in layers)
    with pytest.raises(ValueError, match="skip block 0"), knobs_applied(model, FAMILIES["qwen3_vl_moe"], [1, 2], 4):
        pass
    with pytest.raises(ValueError, match="top_k=9 is outside 1..8"), knobs_applied(model, FAMILIES["qwen3_vl_moe"],
                                                                                   [0, 1], 9):
        pass


@pytest.mark.parametrize("family", ["qwen3_vl_moe", "glm4v_moe"])
def test_the_tier_setting_bounds_the_visual_tokens_that_enter_the_language_model(family):
    image = picture(640, 480)
    counts = []
    for max_tokens in (16, 64, 256):
        inputs = inputs_for(family, max_tokens, image)
        counts.append(int((inputs["input_ids"] == IMAGE).sum()))
        assert counts[-1] <= max_tokens
        with torch.no_grad():  # the model itself checks the image tokens against the features
            tiny(family)(**inputs)
    assert counts[0] < counts[1] < counts[2] and counts[2] > 0.7 * 256
    assert dict(FAMILIES[family].tier_tokens) == {"low": 256, "medium": 576, "high": 1280}


def test_group_limited_routers_bound_top_k():
    config = json.loads(glm_config(n_group=2, topk_group=1).to_json_string())
    family = family_of(config)
    assert max_top_k(config, family) == 4  # one group of 4 experts out of 2 x 4
    check_top_k(config, family, [1, 4], "glm")
    with pytest.raises(InputError, match="knobs.top_k=5 is outside 1..4 .*topk_group"):
        check_top_k(config, family, [4, 5], "glm")
    qwen = json.loads(qwen_config().to_json_string())
    assert max_top_k(qwen, family_of(qwen)) == 8


def test_family_of_reads_config_json_and_names_the_supported_families():
    assert family_of(json.loads(qwen_config().to_json_string())).model_type == "qwen3_vl_moe"
    assert family_of({"model_type": "llava", "text_config": {"model_type": "olmoe"}}).model_type == "llava"
    with pytest.raises(UnsupportedModel, match="'mllama' is not a supported .*qwen3_vl_moe.*glm4v_moe"):
        family_of({"model_type": "mllama", "text_config": {"model_type": "mllama_text_model"}})
    with pytest.raises(UnsupportedModel, match="text model is 'llama'.*top-k MoE"):
        family_of({"model_type": "llava", "text_config": {"model_type": "llama"}})


def test_a_broken_true_size_hub_folder_is_refused_before_any_weights_are_built(tmp_path, monkeypatch):
    """A Qwen3-VL-30B-A3B directory whose weights did not download: config.json and the safetensors headers
    decide, in milliseconds, before the 30 B parameter model is built."""
    import transformers

    from knobctl.model import runtime

    def never(*args, **kwargs):
        raise AssertionError("a model was built")

    monkeypatch.setattr(transformers.LlavaForConditionalGeneration, "from_pretrained", never)
    monkeypatch.setattr(transformers.Qwen3VLMoeForConditionalGeneration, "from_pretrained", never)
    config = qwen_config(num_hidden_layers=48, hidden_size=2048, num_experts=128, num_experts_per_tok=8)
    (tmp_path / "config.json").write_text(config.to_json_string())
    with pytest.raises(CheckpointError, match="model.safetensors is missing"):
        runtime.load_runtime(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "idefics3", "text_config": {}}))
    with pytest.raises(UnsupportedModel, match="idefics3.*supports: llava"):
        runtime.load_runtime(tmp_path)
