"""Controller features: exact definitions, no knob dependence, padding-proof."""

from __future__ import annotations

import numpy as np
import torch

from knobctl.knobs import KnobConfig
from knobctl.model.features import (
    decision_states,
    language_feature_one,
    language_features,
    pool_states,
    vision_feature_one,
    vision_features,
)
from knobctl.model.spec import IMAGE

QUESTIONS = ["what color is the shape ?", "is there a red circle in the image ?", "what ?"]


def test_pool_states_is_the_selected_mean_then_the_last_state():
    states = torch.arange(2 * 3 * 2, dtype=torch.float32).reshape(2, 3, 2)  # [B=2, L=3, H=2]
    select = torch.tensor([[True, True, False], [False, False, True]])
    out = pool_states(states, select)
    assert out.tolist() == [[1.0, 2.0, 4.0, 5.0], [10.0, 11.0, 10.0, 11.0]]
    assert pool_states(states, torch.zeros(2, 3, dtype=torch.bool))[:, :2].abs().sum() == 0  # nothing selected


def test_decision_states_are_the_first_blocks_output_whatever_the_knobs(tiny_rt, images):
    rt = tiny_rt
    visual = rt.encode_images(images[:3], "high")
    inputs = rt.embed(visual, rt.prompt_ids(QUESTIONS, visual.num_tokens))
    plain = decision_states(rt, inputs)
    with rt.knobs_applied(KnobConfig("high", 4, 12)):
        under_knobs = decision_states(rt, inputs)
    # The first block's output inside a full 16-block forward at the model's own top-k.
    with torch.no_grad(), rt.block_outputs(keep_sequence=[0]) as outs:
        rt.lm(inputs_embeds=inputs["inputs_embeds"], attention_mask=inputs["attention_mask"],
              position_ids=inputs["position_ids"])
    assert torch.equal(plain, under_knobs) and torch.equal(plain, outs.sequence[0])
    feats = vision_features(rt, plain, inputs["input_ids"])
    image_pos = (inputs["input_ids"][1] == rt.ids[IMAGE]).nonzero().flatten()
    assert len(image_pos) == 16
    torch.testing.assert_close(feats[1], torch.cat([plain[1, image_pos].mean(0), plain[1, -1]]))


def test_vision_features_differ_by_tier(tiny_rt, images):
    feats = {}
    for tier in ("low", "high"):
        visual = tiny_rt.encode_images(images[:3], tier)
        inputs = tiny_rt.embed(visual, tiny_rt.prompt_ids(QUESTIONS, visual.num_tokens))
        feats[tier] = vision_features(tiny_rt, decision_states(tiny_rt, inputs), inputs["input_ids"])
    assert feats["low"].shape == (3, 64) and not torch.allclose(feats["low"], feats["high"])


def test_language_feature_is_the_mean_then_max_of_the_question_embeddings_and_ignores_padding(tiny_rt):
    rt = tiny_rt
    ids = rt.tokenizer(QUESTIONS, add_special_tokens=False)["input_ids"]
    batched = language_features(rt, ids)  # right-padded to the longest question
    alone = torch.cat([language_features(rt, [q]) for q in ids])
    torch.testing.assert_close(batched, alone, atol=1e-6, rtol=1e-5)
    emb = rt.lm.embed_tokens(torch.tensor(ids[1]))  # [L, H], no block runs
    torch.testing.assert_close(alone[1], torch.cat([emb.mean(0), emb.max(0).values]))
    assert batched.shape == (3, 64) and batched.dtype == torch.float32
    assert torch.equal(language_features(rt, [[]]), torch.zeros(1, 64))  # an empty question


def test_one_request_features_equal_the_batched_ones(tiny_rt, images):
    rt = tiny_rt
    ids = rt.tokenizer(["what color is the shape?", "is there a circle"], add_special_tokens=False)["input_ids"]
    batched = language_features(rt, ids)  # [2, 2H]
    for i, q in enumerate(ids):
        np.testing.assert_allclose(language_feature_one(rt, q), batched[i].numpy(), rtol=1e-6, atol=1e-6)
    assert not np.any(language_feature_one(rt, []))
    visual = rt.encode_images(images[:1], "medium")  # [1, T, H]
    inputs = rt.embed(visual, rt.prompt_from_ids(ids[:1], visual.num_tokens))
    states = decision_states(rt, inputs)  # [1, L, H]
    np.testing.assert_allclose(vision_feature_one(rt, states, inputs["input_ids"]),
                               vision_features(rt, states, inputs["input_ids"])[0].numpy(), rtol=1e-6, atol=1e-6)
