"""Knobs change the computation: counted in FLOPs, block calls and tokens, not attributes."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import DynamicCache

from knobctl.knobs import KnobConfig
from knobctl.model.decoding import CACHE_KEYWORD, continue_greedy, fork_cache, generate, next_token
from knobctl.model.families import DECISION_BLOCK
from knobctl.model.runtime import load_runtime, save_runtime
from tests.conftest import TEST_DIMS, make_runtime

QUESTION = "what color is the shape ?"


def run_prefill(rt, images, knobs, questions=None):
    """One prefill under the knobs; returns (expert FLOPs, block calls, LLM input length)."""
    questions = questions or [QUESTION] * len(images)
    calls = [0] * rt.num_layers
    seen_len = []
    hooks = [layer.register_forward_hook(lambda m, a, o, i=i: calls.__setitem__(i, calls[i] + 1))
             for i, layer in enumerate(rt._all_layers)]
    hooks.append(rt._all_layers[0].register_forward_pre_hook(lambda m, a: seen_len.append(a[0].shape[1])))
    try:
        with torch.no_grad(), rt.knobs_applied(knobs):
            visual = rt.encode_images(images, knobs.tier)
            inputs = rt.embed(visual, rt.prompt_ids(questions, visual.num_tokens))
            with FlopCounterMode(display=False) as counter:
                rt.lm(inputs_embeds=inputs["inputs_embeds"], attention_mask=inputs["attention_mask"],
                      position_ids=inputs["position_ids"])
    finally:
        for h in hooks:
            h.remove()
    expert_flops = sum(sum(ops.values()) for name, ops in counter.get_flop_counts().items() if name.endswith("experts"))
    return expert_flops, calls, seen_len[0]


@pytest.mark.parametrize("top_k", [4, 6, 8])
def test_top_k_sets_expert_work_exactly(tiny_rt, images, top_k):
    flops, _, length = run_prefill(tiny_rt, images, KnobConfig("high", top_k, 16))
    tokens = len(images) * length
    h, i = TEST_DIMS.hidden_size, TEST_DIMS.expert_intermediate
    # Each (token, expert) pair costs gate_up (2*H*2I) + down (2*I*H) FLOPs. The decision block
    # (the first) keeps the model's own top-8; the 15 blocks after it use top_k.
    assert flops == tokens * (8 + top_k * 15) * 6 * h * i


@pytest.mark.parametrize("num_blocks", [12, 14, 16])
def test_num_blocks_runs_only_the_first_blocks(tiny_rt, images, num_blocks):
    flops, calls, length = run_prefill(tiny_rt, images, KnobConfig("high", 8, num_blocks))
    assert calls == [1] * num_blocks + [0] * (16 - num_blocks)
    tokens = len(images) * length
    assert flops == tokens * 8 * 6 * TEST_DIMS.hidden_size * TEST_DIMS.expert_intermediate * num_blocks


def test_tier_sets_visual_tokens_and_vision_pixels(tiny_rt, images):
    lengths, pixels = {}, {}
    hook = tiny_rt.model.model.vision_tower.register_forward_pre_hook(
        lambda m, a, kw: pixels.__setitem__("last", tuple(a[0].shape)), with_kwargs=True)
    try:
        for tier in ("low", "medium", "high"):
            _, _, lengths[tier] = run_prefill(tiny_rt, images, KnobConfig(tier, 8, 16))
            pixels[tier] = pixels["last"]
    finally:
        hook.remove()
    q_len = len(tiny_rt.tokenizer(QUESTION, add_special_tokens=False)["input_ids"])
    assert {t: lengths[t] - q_len - 2 for t in ("low", "medium", "high")} == {"low": 1, "medium": 4, "high": 16}
    assert pixels["low"][-2:] == (16, 16) and pixels["medium"][-2:] == (32, 32) and pixels["high"][-2:] == (64, 64)


def test_knobs_restored_after_scope_even_on_error(tiny_rt):
    layers_before = tiny_rt.lm.layers
    with pytest.raises(RuntimeError), tiny_rt.knobs_applied(KnobConfig("low", 4, 12)):
        assert len(tiny_rt.lm.layers) == 12
        raise RuntimeError("boom")
    assert tiny_rt.lm.layers is layers_before and len(tiny_rt.lm.layers) == 16
    assert all(r.top_k == 8 for r in tiny_rt._routers)


@pytest.mark.parametrize(
    "knobs, fragment",
    [
        (KnobConfig("high", 9, 16), "top_k=9 is outside 1..8"),
        (KnobConfig("high", 8, 17), "num_blocks=17 is outside 1..16"),
    ],
)
def test_invalid_knobs_raise(tiny_rt, knobs, fragment):
    with pytest.raises(ValueError, match=fragment), tiny_rt.knobs_applied(knobs):
        pass


def test_ranked_block_order_runs_the_ranked_blocks():
    order = [0, 15, 1, 14, 2, 13, 3, 12, 4, 11, 5, 10, 6, 9, 7, 8]
    rt = make_runtime(block_order=order)
    imgs = torch.zeros(1, 64, 64, 3, dtype=torch.uint8)
    _, calls, _ = run_prefill(rt, imgs, KnobConfig("low", 4, 5))
    assert [i for i, c in enumerate(calls) if c] == [0, 1, 2, 14, 15]


@pytest.mark.parametrize(
    "order, fragment",
    [([1, 0] + list(range(2, 16)), "must start with block 0"), ([0, 1, 2], "exactly once"), ("last", "ranked list")],
)
def test_bad_block_order(order, fragment):
    with pytest.raises(ValueError, match=fragment):
        make_runtime(block_order=order)


def test_batched_prefill_matches_single_requests(images):
    """Left padding and masks: a batch of mixed-length questions gives each row's own logits."""
    rt = make_runtime()
    questions = ["what color is the shape ?", "is there a red circle in the image ?", "is there a ?", "what ?"]
    knobs = KnobConfig("medium", 6, 14)

    def last_logits(imgs, qs):
        with torch.no_grad(), rt.knobs_applied(knobs):
            visual = rt.encode_images(imgs, knobs.tier)
            inputs = rt.embed(visual, rt.prompt_ids(qs, visual.num_tokens))
            h = rt.lm(inputs_embeds=inputs["inputs_embeds"], attention_mask=inputs["attention_mask"],
                      position_ids=inputs["position_ids"]).last_hidden_state
            return rt.model.lm_head(h[:, -1])

    batched = last_logits(images, questions)
    single = torch.cat([last_logits(images[i : i + 1], questions[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-4)
    assert rt.answer(images, questions, knobs) == [rt.answer(images[i : i + 1], questions[i : i + 1], knobs)[0] for i in range(4)]


def test_answer_accepts_pil_and_arrays(tiny_rt, images):
    from PIL import Image

    pil = [Image.fromarray(images[i].numpy()) for i in range(2)]
    arr = [images[i].numpy() for i in range(2)]
    knobs = KnobConfig("high", 8, 16)
    assert tiny_rt.answer(pil, [QUESTION] * 2, knobs) == tiny_rt.answer(arr, [QUESTION] * 2, knobs) == tiny_rt.answer(images[:2], [QUESTION] * 2, knobs)


def test_save_and_load_round_trip(tmp_path, images):
    rt = make_runtime()
    save_runtime(rt, tmp_path / "ckpt")
    files = {p.name for p in (tmp_path / "ckpt").iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "knobctl.json"} <= files
    loaded = load_runtime(tmp_path / "ckpt", device="cpu")
    knobs = KnobConfig("low", 5, 13)
    qs = [QUESTION] * len(images)
    assert loaded.answer(images, qs, knobs) == rt.answer(images, qs, knobs)
    a = rt.encode_images(images, "high")
    b = loaded.encode_images(images, "high")
    torch.testing.assert_close(a.embeds, b.embeds)


def test_load_runtime_rejects_unknown_source(tmp_path):
    with pytest.raises(ValueError, match="neither a preset"):
        load_runtime("no-such-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no config.json"):
        load_runtime(tmp_path / "empty")


def test_decision_block_keeps_the_models_top_k(tiny_rt):
    with tiny_rt.knobs_applied(KnobConfig("low", 4, 12)):
        ks = [[r.top_k for r in routers] for routers in tiny_rt._block_routers]
    assert ks[DECISION_BLOCK] == [8] and all(k == [4] for i, k in enumerate(ks) if i != DECISION_BLOCK)
    assert all(r.top_k == 8 for r in tiny_rt._routers)


def test_early_exit_and_forked_cache_equal_a_separate_run(tiny_rt, images):
    """One deep prefill serves a shallower block count: its N-th block output through the head,
    then decoding from a fork of its cache, gives the same tokens as running N blocks alone."""
    rt = tiny_rt
    questions = ["what color is the shape ?", "is there a red circle in the image ?", "is there a ?", "what ?"]
    shallow, deep = KnobConfig("medium", 5, 13), KnobConfig("medium", 5, 16)
    with torch.no_grad():
        visual = rt.encode_images(images, "medium")
        inputs = rt.embed(visual, rt.prompt_ids(questions, visual.num_tokens))
        with rt.knobs_applied(shallow):
            alone = generate(rt, inputs, 4, min_new_tokens=4)
        from transformers import DynamicCache

        cache = DynamicCache(config=rt.lm.config)
        with rt.knobs_applied(deep), rt.block_outputs() as outs:
            full = rt.lm(inputs_embeds=inputs["inputs_embeds"], attention_mask=inputs["attention_mask"],
                         position_ids=inputs["position_ids"], use_cache=True, **{CACHE_KEYWORD: cache}).last_hidden_state
        assert sorted(outs.last) == list(range(16))
        torch.testing.assert_close(rt.head_logits(outs.last[15]), rt.model.lm_head(full[:, -1]), rtol=0, atol=0)
        first = next_token(rt, rt.head_logits(outs.last[12]), ban_eos=True)
        with rt.knobs_applied(shallow):
            forked = continue_greedy(rt, first, fork_cache(cache), inputs["attention_mask"], inputs["position_ids"], 4, 4)
        with rt.knobs_applied(deep):
            deep_alone = generate(rt, inputs, 4, min_new_tokens=4)
            first_deep = next_token(rt, rt.head_logits(outs.last[15]), ban_eos=True)
            deep_cached = continue_greedy(rt, first_deep, cache, inputs["attention_mask"], inputs["position_ids"], 4, 4)
    assert torch.equal(forked, alone)
    assert torch.equal(deep_cached, deep_alone)  # the fork left the shared prompt cache untouched


def test_blocks_applied_runs_any_set_of_blocks_and_restores(tiny_rt, images):
    blocks = [b for b in range(16) if b != 5]
    calls = [0] * 16
    hooks = [layer.register_forward_hook(lambda m, a, o, i=i: calls.__setitem__(i, calls[i] + 1))
             for i, layer in enumerate(tiny_rt._all_layers)]
    try:
        with torch.no_grad(), tiny_rt.blocks_applied(reversed(blocks), 5):
            assert [r.top_k for r in tiny_rt._block_routers[3]] == [5] and tiny_rt._block_routers[0][0].top_k == 8
            visual = tiny_rt.encode_images(images, "low")
            generate(tiny_rt, tiny_rt.embed(visual, tiny_rt.prompt_ids([QUESTION] * 4, visual.num_tokens)), 1)
    finally:
        for h in hooks:
            h.remove()
    assert calls == [0 if b == 5 else 1 for b in range(16)]
    assert len(tiny_rt.lm.layers) == 16 and all(r.top_k == 8 for r in tiny_rt._routers)
    for bad, fragment in (([0, 0, 1], "distinct"), ([0, 16], "distinct indices in 0..15"), ([], "distinct")):
        with pytest.raises(ValueError, match=fragment), tiny_rt.blocks_applied(bad, 8):
            pass
    with pytest.raises(ValueError, match="top_k=9 is outside 1..8"), tiny_rt.blocks_applied([0, 1], 9):
        pass


def test_decoding_without_block_0_is_right(images):
    """HF sizes the decode mask from block 0's cache; without block 0, generate decodes without a cache.
    With block 0 an exact identity (nothing added to the residual), dropping it changes no token."""
    rt = make_runtime(seed=4)
    with torch.no_grad():
        rt._all_layers[0].self_attn.o_proj.weight.zero_()
        rt._all_layers[0].mlp.experts.down_proj.zero_()
        questions = ["what color is the shape ?", "is there a red circle in the image ?", "is there a ?", "what ?"]
        visual = rt.encode_images(images, "high")
        inputs = rt.embed(visual, rt.prompt_ids(questions, visual.num_tokens))
        with rt.blocks_applied(range(16), 8):
            full = generate(rt, inputs, 4, min_new_tokens=4)
        with rt.blocks_applied(range(1, 16), 8):
            dropped = generate(rt, inputs, 4, min_new_tokens=4)
            cache = DynamicCache(config=rt.lm.config)
            rt.lm(inputs_embeds=inputs["inputs_embeds"], attention_mask=inputs["attention_mask"],
                  position_ids=inputs["position_ids"], use_cache=True, **{CACHE_KEYWORD: cache})
            with pytest.raises(ValueError, match="block 0 did not run"):
                continue_greedy(rt, full[:, 0], cache, inputs["attention_mask"], inputs["position_ids"], 4)
    assert full.shape == (4, 4) and torch.equal(dropped, full)
