"""Tiny random Qwen3-VL-MoE and GLM-4.5V checkpoints saved to local folders as the hub lays them out (no
knobctl file), loaded by load_runtime and run through knobctl's own decoding, rollouts and two-stage flow,
against the family's stock processor and generate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen3VLProcessor

from knobctl.controller.policy import Controller, ControllerConfig
from knobctl.controller.two_stage import answer_controlled
from knobctl.io import checkpoint_hash
from knobctl.knobs import KnobConfig
from knobctl.model.checkpoint import CheckpointError, write_source
from knobctl.model.decoding import continue_greedy, generate, prefill, visual_extras
from knobctl.model.families import UnsupportedModel, knobs_applied
from knobctl.model.family_layout import FamilyLayout
from knobctl.model.runtime import load_runtime
from knobctl.model.timing import answer_fixed
from knobctl.table.rollouts import rollout_batch
from tests.model.test_families import IMAGE, TILE_TOKENS, image_processor, picture, tiny

#: Visual tokens per tier of the tests (the family defaults, 256 / 576 / 1280, are slow on a CPU).
TIERS = {"low": 4, "medium": 16, "high": 36}
MARKERS = {"qwen3_vl_moe": ["<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|im_start|>",
                            "<|im_end|>"],
           "glm4v_moe": ["<|image|>", "<|video|>", "<|begin_of_image|>", "<|end_of_image|>", "<|user|>",
                         "<|assistant|>"],
           "internvl": ["<IMG_CONTEXT>", "<video>", "<img>", "</img>", "<|im_start|>", "<|im_end|>"]}
TEMPLATES = {
    "qwen3_vl_moe": ("{% for m in messages %}<|im_start|>{{ m.role }} {% for c in m.content %}{% if c.type == 'image' %}"
                     "<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c.text }}{% endif %}{% endfor %}"
                     "<|im_end|>{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant {% endif %}"),
    "glm4v_moe": ("{% for m in messages %}<|user|> {% for c in m.content %}{% if c.type == 'image' %}"
                  "<|begin_of_image|><|image|><|end_of_image|>{% else %}{{ c.text }}{% endif %}{% endfor %}"
                  "{% endfor %}{% if add_generation_prompt %}<|assistant|> {% endif %}"),
    # InternVL's template holds the context token once; its processor adds <img> and </img> around the copies
    "internvl": ("{% for m in messages %}<|im_start|>{{ m.role }} {% for c in m.content %}{% if c.type == 'image' %}"
                 "<IMG_CONTEXT> {% else %}{{ c.text }}{% endif %}{% endfor %}<|im_end|>{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant {% endif %}"),
}
# GLM-4.5V's turn ends where the user's starts
EOS = {"qwen3_vl_moe": "<|im_end|>", "glm4v_moe": "<|user|>", "internvl": "<|im_end|>"}
QUESTIONS = ["w3 w7 w9", "w12 w5", "w40 w41 w42 w43"]


def word_tokenizer(family: str) -> PreTrainedTokenizerFast:
    specials = MARKERS[family]
    vocab = {"<unk>": 0, **{f"w{i}": i for i in range(1, 248)}, "user": 248, "assistant": 249,
             **{s: IMAGE + i for i, s in enumerate(specials)}}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token=EOS[family],
                                  additional_special_tokens=specials)
    tok.chat_template = TEMPLATES[family]
    return tok


def save_hub_checkpoint(path: Path, family: str, seed: int = 3, **text) -> Path:
    """What a download of the family holds: config, safetensors weights, generation config, tokenizer with its
    chat template, the image processor's config; nothing of knobctl's. ``text``: text config overrides."""
    model = tiny(family, seed=seed, **text)
    tok = word_tokenizer(family)
    model.generation_config.eos_token_id = [tok.convert_tokens_to_ids(EOS[family]), 0]
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    image_processor(family, 1280).save_pretrained(path)
    assert not list(path.glob("knobctl*"))
    return path


@pytest.fixture(scope="module", params=["qwen3_vl_moe", "glm4v_moe", "internvl"])
def checkpoint(request, tmp_path_factory) -> Path:
    return save_hub_checkpoint(tmp_path_factory.mktemp(request.param), request.param)


@pytest.fixture(scope="module")
def qwen(tmp_path_factory) -> Path:
    return save_hub_checkpoint(tmp_path_factory.mktemp("qwen"), "qwen3_vl_moe", seed=5)


class ImageOnlyProcessor(Qwen3VLProcessor):
    """Qwen3-VL's stock processor without its video processor (which needs torchvision)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                         chat_template=chat_template)


def stock_inputs(family: str, tokenizer, question: str, tokens: int, image, processor=None) -> dict[str, torch.Tensor]:
    """The request as the family's processor lays it out: ``processor`` as it is, or the checkpoint's (4 visual
    tokens or more) capped at ``tokens``."""
    processor = processor or image_processor(family, tokens)
    text = tokenizer.apply_chat_template([{"role": "user", "content": [{"type": "image"},
                                                                       {"type": "text", "text": question}]}],
                                         tokenize=False, add_generation_prompt=True)
    if family == "qwen3_vl_moe":
        return ImageOnlyProcessor(image_processor=processor, tokenizer=tokenizer)(images=[image], text=[text],
                                                                                  return_tensors="pt")
    pixels = processor(images=[image], return_tensors="pt")
    placeholder = MARKERS[family][0]
    if family == "internvl":  # InternVLProcessor's expansion, without its video processor (torchvision)
        n = int(pixels.pop("num_patches").sum()) * TILE_TOKENS
        ids = tokenizer(text.replace(placeholder, f"<img>{placeholder * n}</img>"), add_special_tokens=False,
                        return_tensors="pt")["input_ids"]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), **pixels}
    n = int(pixels["image_grid_thw"].prod(-1).sum()) // 4  # merge 2 x 2
    ids = tokenizer(text.replace(placeholder, placeholder * n), add_special_tokens=False,
                    return_tensors="pt")["input_ids"]
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "mm_token_type_ids": (ids == IMAGE).int(),
            **pixels}


def stock_answer(rt, family: str, question: str, tokens: int, steps: int, image=None, processor=None) -> str:
    x = stock_inputs(family, rt.tokenizer, question, tokens, picture() if image is None else image, processor)
    out = rt.model.generate(**x, max_new_tokens=steps, do_sample=False)
    return rt.tokenizer.decode(out[0, x["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def test_a_hub_checkpoint_answers_as_the_stock_processor_and_generate_do(checkpoint):
    family = json.loads((checkpoint / "config.json").read_text())["model_type"]
    rt = load_runtime(checkpoint, device="cpu", tier_tokens=TIERS)
    assert rt.family.model_type == family and rt.num_layers == 4 and isinstance(rt.layout, FamilyLayout)
    assert rt.ids["[EOS]"] == rt.tokenizer.convert_tokens_to_ids(EOS[family])
    answers = {}
    for knobs in (KnobConfig("high", 4, 4), KnobConfig("low", 1, 2), KnobConfig("medium", 2, 3)):
        ours = rt.answer([picture()] * 2, [QUESTIONS[0], QUESTIONS[1]], knobs, max_new_tokens=6)
        with knobs_applied(rt.model, rt.family, range(knobs.num_blocks), knobs.top_k):
            stock = [stock_answer(rt, family, q, TIERS[knobs.tier], 6) for q in QUESTIONS[:2]]
        assert ours == stock, knobs
        answers[knobs] = ours
    assert len({tuple(a) for a in answers.values()}) == 3  # the knobs changed the answers: three comparisons


def test_the_tier_sets_the_visual_tokens_that_enter_the_language_model(checkpoint):
    rt = load_runtime(checkpoint, device="cpu", tier_tokens=TIERS)
    if rt.family.model_type == "internvl":
        pytest.skip("InternVL's tiers are tiles: tests/model/test_internvl.py")
    square = torch.from_numpy(np.array(picture(rt.image_size, rt.image_size)))[None]  # [1, S, S, 3]
    for tier, budget in TIERS.items():
        visual = rt.encode_images(square, tier)
        inputs = rt.embed(visual, rt.prompt_ids(["w1 w2"], visual.num_tokens))
        assert int((inputs["input_ids"] == IMAGE).sum()) == visual.num_tokens == rt.visual_tokens(tier) == budget
        assert inputs["position_ids"].shape[0] == 3  # M-RoPE
        wide = rt.encode_images([picture(640, 480)], tier).num_tokens  # the aspect is kept, the budget too
        assert 0.5 * budget <= wide <= budget
    assert len(rt.encode_images(square, "high").deepstack) == (2 if rt.family.deepstack else 0)
    with pytest.raises(ValueError, match="tier 'ultra' is not defined"):
        rt.encode_images(square, "ultra")


def assert_cached_decoding_equals_recomputation(rt) -> None:
    """Under two knob settings with blocks skipped, decoding from the KV cache gives the tokens of rerunning the
    whole sequence at every step."""
    images = torch.from_numpy(np.stack([np.array(picture(rt.image_size, rt.image_size))] * 3))
    for knobs in (KnobConfig("medium", 2, 2), KnobConfig("high", 1, 3)):
        with torch.no_grad(), rt.knobs_applied(knobs):
            visual = rt.encode_images(images, knobs.tier)
            inputs = rt.embed(visual, rt.prompt_ids(QUESTIONS, visual.num_tokens))
            cached = generate(rt, inputs, 6, min_new_tokens=6)  # [B, 6]
            first = cached[:, 0]
            recomputed = continue_greedy(rt, first, None, inputs["attention_mask"], inputs["position_ids"], 6, 6,
                                         embeds=inputs["inputs_embeds"], extras=visual_extras(inputs))
        assert torch.equal(cached, recomputed), knobs


def test_cached_decoding_equals_recomputation_with_blocks_skipped(qwen):
    assert_cached_decoding_equals_recomputation(load_runtime(qwen, device="cpu", tier_tokens=TIERS))


def test_rollouts_equal_answers_under_a_ranked_block_order_that_skips_a_deepstack_layer(qwen):
    """Block counts 2 / 3 / 4 run [0, 2] / [0, 1, 2] / all: the 2-block rollout branches off the deepest
    prefill after block 0, and DeepStack's second feature must enter before block 2 in both paths."""
    rt = load_runtime(qwen, device="cpu", tier_tokens=TIERS, block_order=[0, 2, 1, 3])
    images = torch.from_numpy(np.stack([np.array(picture(rt.image_size, rt.image_size))] * 3))
    configs = [KnobConfig(t, k, n) for t in ("low", "high") for k in (1, 4) for n in (2, 3, 4)]
    qids = rt.tokenizer(QUESTIONS, add_special_tokens=False)["input_ids"]
    res = rollout_batch(rt, images, qids, configs, 5)
    for knobs in configs:
        assert rt.decode(res.tokens[knobs]) == rt.answer(images, QUESTIONS, knobs, max_new_tokens=5), knobs
    assert len({tuple(rt.decode(t)) for t in res.tokens.values()}) >= 4
    knobs = KnobConfig("high", 2, 2)  # blocks 0 and 2: the stock model with block 1 skipped, its feature moved
    with torch.no_grad(), knobs_applied(rt.model, rt.family, [0, 2], 2):
        stock = rt.model(**stock_inputs("qwen3_vl_moe", rt.tokenizer, QUESTIONS[2], TIERS["high"], picture()))
    with torch.no_grad(), rt.knobs_applied(knobs):
        visual = rt.encode_images([picture()], "high")
        hidden = prefill(rt, rt.embed(visual, rt.prompt_ids(QUESTIONS[2:], visual.num_tokens)))  # [1, L, H]
    torch.testing.assert_close(rt.model.lm_head(hidden), stock.logits, atol=1e-5, rtol=1e-5)


def test_the_two_stage_flow_equals_the_chosen_knobs_run_directly(qwen):
    rt = load_runtime(qwen, device="cpu", tier_tokens=TIERS)
    seen = set()
    for seed in range(3):
        torch.manual_seed(seed)
        cfg = ControllerConfig(language_dim=64, vision_dim=64, tiers=("low", "medium", "high"), top_k=(1, 2, 4),
                               num_blocks=(2, 3, 4), budget_low_ms=0.0, budget_high_ms=100.0, hidden=16)
        ctrl = Controller(cfg)
        with torch.no_grad():  # large output layers: different budgets and inputs pick different knobs
            for stage in (ctrl.stage1, ctrl.stage2):
                stage[-1].weight.mul_(50.0)
        for question in QUESTIONS:
            for budget in (5.0, 50.0, 95.0):
                image = torch.from_numpy(np.array(picture(rt.image_size, rt.image_size)))[None]
                res = answer_controlled(rt, ctrl.eval(), image, question, budget, max_new_tokens=5)
                direct, _ = answer_fixed(rt, image, question, res.knobs, max_new_tokens=5)
                assert res.answer == direct, (res.knobs, question)
                seen.add(res.knobs)
    assert len(seen) >= 4 and len({k.num_blocks for k in seen}) >= 2


def test_knobs_are_restored_after_an_exception(qwen):
    rt = load_runtime(qwen, device="cpu", tier_tokens=TIERS)
    layers = rt.lm.layers
    with pytest.raises(RuntimeError, match="inside"), rt.knobs_applied(KnobConfig("low", 1, 2)):
        assert len(rt.lm.layers) == 2 and layers[3].mlp.gate.top_k == 1
        raise RuntimeError("inside")
    assert rt.lm.layers is layers and all(layer.mlp.gate.top_k == 4 for layer in layers)


def test_unsupported_and_remote_code_folders_are_refused_before_building(tmp_path, qwen):
    config = json.loads((qwen / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModel": "evil.Model"}}))
    with pytest.raises(CheckpointError, match="remote code"):
        load_runtime(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "mllama"}))
    with pytest.raises(UnsupportedModel, match="'mllama' is not a supported.*qwen3_vl_moe"):
        load_runtime(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(config))  # no weights next to it
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_runtime(tmp_path)
    assert torch.get_default_dtype() == torch.float32


def test_model_source_is_recorded_not_copied_and_a_changed_folder_is_refused(tmp_path, qwen):
    folder = tmp_path / "download"
    shutil.copytree(qwen, folder)
    record = write_source(tmp_path / "base", folder)
    assert [p.name for p in (tmp_path / "base").iterdir()] == ["knobctl_source.json"]
    assert record["model_type"] == "qwen3_vl_moe" and record["source"] == str(folder)
    via = load_runtime(tmp_path / "base", device="cpu", tier_tokens=TIERS)
    direct = load_runtime(folder, device="cpu", tier_tokens=TIERS)
    knobs = KnobConfig("medium", 2, 3)
    assert via.answer([picture()], [QUESTIONS[0]], knobs) == direct.answer([picture()], [QUESTIONS[0]], knobs)
    assert checkpoint_hash(tmp_path / "base") != checkpoint_hash(folder)  # the record's hash: cheap at 60 GB
    (folder / "generation_config.json").write_text((folder / "generation_config.json").read_text() + "\n")
    with pytest.raises(CheckpointError, match="changed since train_base adopted it"):
        load_runtime(tmp_path / "base")
    shutil.rmtree(folder)
    with pytest.raises(CheckpointError, match="not a folder here"):
        load_runtime(tmp_path / "base")
    with pytest.raises(CheckpointError, match="has no config.json"):
        write_source(tmp_path / "other", tmp_path / "base")


def test_a_group_limited_router_bounds_the_grid(tmp_path):
    """GLM-4.5V routes within topk_group of n_group expert groups: 1 of 2 groups of 4 experts keeps at most 4."""
    from knobctl.knobs import KnobGrid
    from knobctl.params import InputError

    folder = save_hub_checkpoint(tmp_path / "glm", "glm4v_moe", n_group=2, topk_group=1, num_experts_per_tok=2)
    rt = load_runtime(folder, device="cpu", tier_tokens=TIERS)
    assert rt.num_experts == 4
    rt.validate_grid(KnobGrid(("low",), (2, 4), (3, 4)))
    with pytest.raises(InputError, match="knobs.top_k=5 is outside 1..4 .*topk_group of n_group"):
        rt.validate_grid(KnobGrid(("low",), (4, 5), (3, 4)))
