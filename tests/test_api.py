"""The public API named in DESIGN.md works as documented."""

import torch

import knobctl
from knobctl import KnobConfig, load_runtime, vqa_score
from tests.conftest import TEST_DIMS, VOCAB


def test_public_names():
    assert {"KnobConfig", "load_runtime", "vqa_score"} <= set(knobctl.__all__)


def test_answer_returns_one_string_per_question():
    torch.manual_seed(0)
    rt = load_runtime("tiny", device="cpu", vocab=VOCAB, dims=TEST_DIMS)
    imgs = torch.randint(0, 256, (3, 64, 64, 3), dtype=torch.uint8)
    out = rt.answer(imgs, ["what color is the shape?"] * 3, knobs=KnobConfig(tier="high", top_k=8, num_blocks=16))
    assert isinstance(out, list) and len(out) == 3 and all(isinstance(a, str) for a in out)
    # Random weights, but greedy decoding is deterministic.
    again = rt.answer(imgs, ["what color is the shape?"] * 3, knobs=KnobConfig("high", 8, 16))
    assert out == again


def test_vqa_score_example():
    assert vqa_score("Two", ["2"] * 10) == 1.0
