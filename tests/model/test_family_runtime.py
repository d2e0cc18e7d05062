"""A tiny random Qwen3-VL-MoE checkpoint saved to a local folder as the hub lays one out (no knobctl file),
loaded by load_family_model and answering with knobs, against the family's stock processor and generate."""

from __future__ import annotations

import json

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen3VLProcessor

from knobctl.knobs import KnobConfig
from knobctl.model.checkpoint import CheckpointError
from knobctl.model.families import UnsupportedModel, knobs_applied
from knobctl.model.family_runtime import load_family_model
from tests.model.test_families import IMAGE, image_processor, picture, tiny

SPECIALS = ["<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|im_start|>", "<|im_end|>"]
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m.role }} {% for c in m.content %}{% if c.type == 'image' %}"
            "<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c.text }}{% endif %}{% endfor %}<|im_end|>"
            "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant {% endif %}")


def word_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"<unk>": 0, **{f"w{i}": i for i in range(1, IMAGE)}, "user": 248, "assistant": 249,
             **{s: IMAGE + i for i, s in enumerate(SPECIALS)}}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", additional_special_tokens=SPECIALS)
    tok.chat_template = TEMPLATE
    return tok


class ImageOnlyProcessor(Qwen3VLProcessor):
    """The family's stock processor without its video processor (which needs torchvision)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                         chat_template=chat_template)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """What a download of the family holds: config, safetensors weights, tokenizer with its chat template,
    the image processor's config."""
    path = tmp_path_factory.mktemp("qwen3_vl_moe")
    tiny("qwen3_vl_moe", seed=3).save_pretrained(path, safe_serialization=True)
    word_tokenizer().save_pretrained(path)
    image_processor("qwen3_vl_moe", 1280).save_pretrained(path)
    assert not list(path.glob("knobctl*"))
    return path


def stock_answer(model, tokenizer, question: str, max_tokens: int) -> str:
    processor = ImageOnlyProcessor(image_processor=image_processor("qwen3_vl_moe", max_tokens), tokenizer=tokenizer)
    text = tokenizer.apply_chat_template([{"role": "user", "content": [{"type": "image"},
                                                                       {"type": "text", "text": question}]}],
                                         tokenize=False, add_generation_prompt=True)
    x = processor(images=[picture()], text=[text], return_tensors="pt")
    out = model.generate(**x, max_new_tokens=6, do_sample=False)
    return tokenizer.decode(out[0, x["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def test_a_hub_layout_checkpoint_answers_as_the_stock_processor_and_generate_do(checkpoint):
    fm = load_family_model(checkpoint)
    assert fm.family.model_type == "qwen3_vl_moe" and fm.num_layers == 4 and fm.tiers["high"] == 1280
    question = "w3 w7 w9"
    full = fm.answer([picture()], [question], KnobConfig("high", 4, 4), max_new_tokens=6)
    assert full == [stock_answer(fm.model, fm.tokenizer, question, 1280)]
    reduced = KnobConfig("low", 1, 2)
    ours = fm.answer([picture()], [question], reduced, max_new_tokens=6)
    with knobs_applied(fm.model, fm.family, range(2), 1):
        assert ours == [stock_answer(fm.model, fm.tokenizer, question, 256)]
    assert ours != full  # the knobs changed the answer, so the two comparisons are not one


def test_the_tier_sets_the_visual_tokens_in_input_ids(checkpoint):
    fm = load_family_model(checkpoint, tiers={"low": 16, "medium": 64, "high": 256})
    counts = []
    for tier in ("low", "medium", "high"):
        fm.answer([picture(640, 480)], ["w1"], KnobConfig(tier, 4, 4), max_new_tokens=1)
        counts += fm.last_visual_tokens
    assert counts[0] <= 16 < counts[1] <= 64 < counts[2] <= 256
    with pytest.raises(ValueError, match="tier 'ultra' is not defined"):
        fm.inputs(picture(), "w1", "ultra")


def test_unsupported_remote_code_and_knobctl_folders_are_refused_before_building(tmp_path, checkpoint):
    config = json.loads((checkpoint / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModel": "evil.Model"}}))
    with pytest.raises(CheckpointError, match="remote code"):
        load_family_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "internvl"}))
    with pytest.raises(UnsupportedModel, match="'internvl' is not a supported"):
        load_family_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava", "text_config": {"model_type": "olmoe"}}))
    with pytest.raises(CheckpointError, match="load_runtime"):
        load_family_model(tmp_path)
    with pytest.raises(CheckpointError, match="has no config.json"):
        load_family_model(tmp_path / "missing")
    assert torch.get_default_dtype() == torch.float32
