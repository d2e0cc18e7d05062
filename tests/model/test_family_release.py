"""The full configuration is the checkpoint as released: tiny random Qwen3-VL-MoE and GLM-4.5V folders whose
processor patch size (8) is not the family's released one and whose tokenizer is byte-level BPE, loaded with no
tier override, answer as the stock processor (loaded from the folder, untouched) and ``generate`` do, for a
square and a non-square image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import transformers
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from knobctl.knobs import KnobConfig
from knobctl.model.families import FAMILIES
from knobctl.model.runtime import load_runtime
from knobctl.params import InputError
from tests.model.test_families import IMAGE, image_processor, processor_size, tiny
from tests.model.test_family_runtime import EOS, MARKERS, stock_answer, stock_inputs

PATCH = 8  # the released checkpoints have 16 (Qwen3-VL) and 14 (GLM-4.5V)
CAP = 40  # visual tokens per image the saved processor allows
#: The families' released templates in outline: a line break after each role, the image ahead of the question.
TEMPLATES = {
    "qwen3_vl_moe": ("{% for m in messages %}<|im_start|>{{ m.role }}\n{% for c in m.content %}{% if c.type == 'image' %}"
                     "<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c.text }}{% endif %}{% endfor %}"
                     "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"),
    "glm4v_moe": ("[gMASK]<sop>{% for m in messages %}<|user|>\n{% for c in m.content %}{% if c.type == 'image' %}"
                  "<|begin_of_image|><|image|><|end_of_image|>{% else %}{{ c.text }}{% endif %}{% endfor %}"
                  "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"),
    "internvl": ("{% for m in messages %}<|im_start|>{{ m.role }}\n{% for c in m.content %}{% if c.type == 'image' %}"
                 "<IMG_CONTEXT>\n{% else %}{{ c.text }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"),
}
MERGES = [("W", "h"), ("Wh", "a"), ("Wha", "t"), ("Ġ", "c"), ("o", "l"), ("ol", "o"), ("Ġ", "i"), ("Ġi", "s"),
          ("Ġ", "t"), ("Ġt", "h"), ("Ġth", "e"), ("s", "h"), ("a", "p"), ("ap", "e")]
QUESTIONS = ["What colour is the shape?", "How many\nshapes are there"]
VOCAB = 600


def bpe_tokenizer(family: str, template: str | None = None, merges=MERGES) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (GPT-2's pre-tokenizer, as Qwen's and GLM's are) with the family's markers at
    the ids the tiny configs give them."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {c: 260 + i for i, c in enumerate(alphabet)}
    for a, b in merges:
        vocab.setdefault(a + b, 260 + len(vocab))
    vocab.update({s: IMAGE + i for i, s in enumerate(MARKERS[family])})
    assert max(vocab.values()) < VOCAB
    backend = Tokenizer(models.BPE(vocab=vocab, merges=list(merges)))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOS[family],
                                  additional_special_tokens=MARKERS[family])
    tok.chat_template = template or TEMPLATES[family]
    return tok


def save_release(path: Path, family: str, tokenizer: PreTrainedTokenizerFast | None = None) -> Path:
    model = tiny(family, seed=7, patch=PATCH, vocab_size=VOCAB)
    tok = tokenizer or bpe_tokenizer(family)
    model.generation_config.eos_token_id = [tok.convert_tokens_to_ids(EOS[family])]
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    image_processor(family, CAP, patch=PATCH).save_pretrained(path)
    return path


@pytest.fixture(scope="module", params=["qwen3_vl_moe", "glm4v_moe", "internvl"])
def release(request, tmp_path_factory) -> tuple[str, Path]:
    return request.param, save_release(tmp_path_factory.mktemp(request.param), request.param)


def picture(width: int, height: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8))


def test_the_full_configuration_answers_as_the_released_processor_and_generate_do(release):
    family, folder = release
    rt = load_runtime(folder, device="cpu")
    stock_processor = getattr(transformers, FAMILIES[family].image_processor_class).from_pretrained(folder)
    full = KnobConfig("high", 4, rt.num_layers)  # the routers' own top-k, every block
    answers = []
    for image in (picture(96, 96, 0), picture(224, 160, 1)):  # kept at its own size; capped, aspect kept
        for question in QUESTIONS:
            ours = rt.answer([image], [question], full, max_new_tokens=6)
            assert ours == [stock_answer(rt, family, question, CAP, 6, image, stock_processor)], (image.size, question)
            answers.append(ours[0])
    assert len(set(answers)) >= 2  # four comparisons of different requests, not one answer four times


def test_the_prompt_is_the_stock_processors_ids_with_a_byte_level_bpe_tokenizer(release):
    family, folder = release
    rt = load_runtime(folder, device="cpu")
    stock_processor = getattr(transformers, FAMILIES[family].image_processor_class).from_pretrained(folder)
    image = picture(224, 160, 1)
    for question in QUESTIONS + [" a leading space", "tabs\tand  double  spaces"]:
        visual = rt.encode_images([image], "high")
        ours = rt.embed(visual, rt.prompt_ids([question], visual.num_tokens))["input_ids"][0].tolist()
        theirs = stock_inputs(family, rt.tokenizer, question, CAP, image, stock_processor)["input_ids"][0].tolist()
        assert ours == theirs, question
    assert any(i >= 260 + 256 for i in rt.prompt_ids(QUESTIONS[:1], 1)[0])  # BPE merges inside the question


def test_pixels_per_token_come_from_the_checkpoints_processor_and_a_tier_is_a_cap(release):
    family, folder = release
    if family == "internvl":
        pytest.skip("InternVL's tiers are tiles: tests/model/test_internvl.py")
    rt = load_runtime(folder, device="cpu")
    assert rt.layout.tiers == {"low": CAP, "medium": CAP, "high": CAP}  # the family's lower caps exceed this one
    assert rt.encode_images([picture(96, 96, 0)], "high").num_tokens == (96 // (2 * PATCH)) ** 2  # not upscaled
    assert rt.encode_images([picture(224, 160, 1)], "high").num_tokens <= CAP
    capped = load_runtime(folder, device="cpu", tier_tokens={"low": 4, "medium": 16, "high": CAP})
    assert [capped.encode_images([picture(96, 96, 0)], t).num_tokens for t in ("low", "medium", "high")] == [4, 16, 36]
    assert rt.layout.processor_size("high") == processor_size(family, CAP, PATCH)  # the saved one, as it is
    assert capped.image_size == 2 * PATCH * 6  # the square that fills the highest cap: 36 of its 40 tokens


def test_a_tokenizer_that_merges_the_question_with_the_template_is_refused(tmp_path):
    """The question follows the word 'ask' with no boundary, and a merge joins the two: tokenizing the question on
    its own would change the prompt's ids, so the folder is refused by name."""
    template = TEMPLATES["qwen3_vl_moe"].replace("{{ c.text }}", "ask{{ c.text }}")
    tok = bpe_tokenizer("qwen3_vl_moe", template, merges=[("k", "W"), *MERGES])
    folder = save_release(tmp_path / "merging", "qwen3_vl_moe", tok)
    with pytest.raises(InputError, match="merges the question 'What color is the shape\\?' with the chat template"):
        load_runtime(folder, device="cpu")
