"""Saved checkpoints: broken or code-carrying folders are refused by name; stock transformers' view of one."""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration

from knobctl.knobs import KnobConfig
from knobctl.model.checkpoint import CheckpointError, model_card
from knobctl.model.decoding import generate
from knobctl.model.presets import EOS, PAD, preset_config
from knobctl.model.runtime import Runtime, load_runtime, save_runtime
from tests.conftest import TEST_DIMS, VOCAB, make_runtime

QUESTIONS = ["what color is the shape ?", "is there a red circle in the image ?", "is there a ?", "what ?"]
FULL = KnobConfig("high", 8, 16)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Runtime, Path]:
    rt = make_runtime()
    path = tmp_path_factory.mktemp("ckpt") / "base"
    save_runtime(rt, path)
    return rt, path


@pytest.fixture()
def copy(saved: tuple[Runtime, Path], tmp_path: Path) -> Path:
    """A private copy of the saved checkpoint, free to damage."""
    return Path(shutil.copytree(saved[1], tmp_path / "base"))


def edit_json(file: Path, change: Callable[[dict], None]) -> None:
    obj = json.loads(file.read_text())
    change(obj)
    file.write_text(json.dumps(obj))


def truncate(file: Path, keep: float) -> None:
    data = file.read_bytes()
    file.write_bytes(data[: int(len(data) * keep)])


# --------------------------------------------------------------------------- bad artifacts


@pytest.mark.parametrize("keep", [0.5, 0.999, 0.0001])
def test_truncated_weights_name_the_file_and_the_rebuild(copy, keep):
    truncate(copy / "model.safetensors", keep)
    with pytest.raises(CheckpointError) as err:
        load_runtime(copy, device="cpu")
    msg = str(err.value)
    assert str(copy / "model.safetensors") in msg and "truncated or corrupt" in msg
    assert "dvc repro train_base" in msg


def test_missing_weights_are_named_and_pickles_are_not_a_fallback(copy):
    (copy / "model.safetensors").rename(copy / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"model\.safetensors is missing.*dvc repro train_base"):
        load_runtime(copy, device="cpu")


@pytest.mark.parametrize(
    "where",
    [lambda c: c, lambda c: c["text_config"]],
    ids=["top-level", "sub-config"],
)
def test_config_asking_for_remote_code_is_refused(copy, where):
    edit_json(copy / "config.json", lambda c: where(c).update(auto_map={"AutoModel": "evil.Model"}))
    with pytest.raises(CheckpointError) as err:
        load_runtime(copy, device="cpu")
    msg = str(err.value)
    assert str(copy / "config.json") in msg and "remote code" in msg and "never runs code" in msg


def test_tokenizer_config_asking_for_remote_code_is_refused(copy):
    edit_json(copy / "tokenizer_config.json", lambda c: c.update(auto_map={"AutoTokenizer": ["evil.Tok", None]}))
    with pytest.raises(CheckpointError, match=r"tokenizer_config\.json asks for remote code"):
        load_runtime(copy, device="cpu")


def test_there_is_no_switch_to_trust_remote_code(copy):
    with pytest.raises(TypeError, match="trust_remote_code"):
        load_runtime(copy, device="cpu", trust_remote_code=True)


@pytest.mark.parametrize(
    "name, damage, fragment",
    [
        ("tokenizer.json", Path.unlink, "has no tokenizer.json"),
        ("knobctl.json", Path.unlink, "has no knobctl.json"),
        ("config.json", Path.unlink, "has no config.json"),
        ("tokenizer.json", lambda f: truncate(f, 0.5), "tokenizer.json does not load"),
        ("knobctl.json", lambda f: truncate(f, 0.5), "knobctl.json is not a valid knob spec"),
        ("knobctl.json", lambda f: f.write_text("{}"), "knobctl.json is not a valid knob spec"),
        ("config.json", lambda f: truncate(f, 0.5), "config.json is not readable JSON"),
    ],
)
def test_missing_or_broken_files_are_named(copy, name, damage, fragment):
    damage(copy / name)
    with pytest.raises(ValueError) as err:
        load_runtime(copy, device="cpu")
    assert fragment in str(err.value) and str(copy) in str(err.value)


# --------------------------------------------------------------------------- stock transformers


def test_config_states_the_full_tiers_visual_tokens(saved):
    rt, path = saved
    assert json.loads((path / "config.json").read_text())["image_seq_length"] == rt.visual_tokens("high") == 16
    assert preset_config("molmoe-1b-shape")[0].image_seq_length == 144  # per view: 12x12 pooled patches


def test_stock_transformers_loads_the_weights_but_does_not_pool(saved, images):
    """The pooled model: stock Llava projects all 8x8 patches where knobctl feeds 2x2-pooled ones."""
    rt, path = saved
    stock = LlavaForConditionalGeneration.from_pretrained(path, local_files_only=True).eval()
    theirs = stock.state_dict()
    assert all(torch.equal(w, theirs[k]) for k, w in rt.model.state_dict().items())

    pixels = rt.layout.pixel_values(rt.model, images[:1], "high")
    with torch.no_grad():
        stock_feats = stock.get_image_features(pixel_values=pixels).pooler_output[0]  # [64, H]
    assert stock_feats.shape[0] == 64 and rt.encode_images(images[:1], "high").num_tokens == 16

    prompt = torch.tensor(rt.prompt_ids(QUESTIONS[:1], rt.visual_tokens("high")))
    with pytest.raises(ValueError, match="Image features and image tokens do not match"):
        stock.generate(input_ids=prompt, pixel_values=pixels, attention_mask=torch.ones_like(prompt),
                       max_new_tokens=2, do_sample=False)
    with pytest.raises(OSError, match="preprocessor_config.json"):
        AutoProcessor.from_pretrained(path, local_files_only=True)

    card = (path / "README.md").read_text()
    assert "cannot reproduce" in card and "8x8 CLIP patch grid 2x2" in card and "all 64 patches" in card


def test_stock_transformers_reproduces_knobctl_when_nothing_is_pooled(tmp_path, images):
    """With 1x1 pooling knobctl's pipeline is stock Llava's: same greedy tokens at the full
    configuration, so pooling is the only step stock transformers lacks for the default model."""
    torch.manual_seed(0)
    rt = load_runtime("tiny", device="cpu", vocab=VOCAB, dims=dataclasses.replace(TEST_DIMS, vision_pool=1))
    save_runtime(rt, tmp_path / "ckpt")
    stock = LlavaForConditionalGeneration.from_pretrained(tmp_path / "ckpt", local_files_only=True).eval()
    steps = rt.spec.max_new_tokens

    with torch.no_grad(), rt.knobs_applied(FULL):
        visual = rt.encode_images(images, FULL.tier)
        inputs = rt.embed(visual, rt.prompt_ids(QUESTIONS, visual.num_tokens))
        ours = generate(rt, inputs, steps)
    theirs = stock.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                            pixel_values=rt.layout.pixel_values(rt.model, images, FULL.tier), max_new_tokens=steps, do_sample=False,
                            eos_token_id=rt.ids[EOS], pad_token_id=rt.ids[PAD])
    assert torch.equal(theirs[:, inputs["input_ids"].shape[1]:], ours)
    assert rt.decode(ours) == rt.answer(images, QUESTIONS, FULL)
    assert "cannot reproduce" not in (tmp_path / "ckpt" / "README.md").read_text()


def test_card_of_the_true_size_preset_names_crops_and_pooling():
    config, spec = preset_config("molmoe-1b-shape")
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    card = model_card(model.config, spec)
    assert "24x24 CLIP patch grid 2x2" in card and "13 views per image" in card and "x 1872 question-words" in card


def _head(tensors: dict) -> str:
    """The LM head's key as save_pretrained writes it (a legacy name that loading converts)."""
    return next(k for k in tensors if k.endswith("lm_head.weight"))


def _rewrite_weights(path: Path, change: Callable[[dict], None]) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(path / "model.safetensors")
    change(tensors)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize("damage,expected", [
    (lambda p: edit_json(p / "config.json", lambda c: c["text_config"].update(num_hidden_layers=18)),
     r"missing from the weights .* \(first: model\.language_model\.layers\.16\."),
    (lambda p: edit_json(p / "config.json", lambda c: c["vision_config"].update(num_hidden_layers=6)),
     r"missing from the weights .* \(first: model\.vision_tower\.(vision_model\.)?encoder\.layers\.1\."),
    (lambda p: _rewrite_weights(p, lambda t: t.update(extra=torch.zeros(2))),
     r"1 tensors in the weights but not in the config \(first: extra\)"),
    (lambda p: _rewrite_weights(p, lambda t: t.pop(_head(t))),
     r"1 tensors missing from the weights .* \(first: lm_head\.weight\)"),
    (lambda p: _rewrite_weights(p, lambda t: t.update({_head(t): torch.zeros(3, 3)})),
     r"weights do not load into the model config\.json describes \(RuntimeError"),
])
def test_config_that_does_not_match_its_weights_is_refused_by_name(copy, damage, expected):
    """transformers would fill the gaps with random weights and only warn."""
    damage(copy)
    with pytest.raises(CheckpointError, match=rf"{copy}: .*{expected}"):
        load_runtime(copy, device="cpu")
