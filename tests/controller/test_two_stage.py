"""The two-stage flow inside the model equals running the chosen knobs directly."""

from __future__ import annotations

import pytest
import torch

from knobctl.controller.policy import Controller, ControllerConfig
from knobctl.controller.two_stage import answer_controlled
from knobctl.knobs import KnobConfig
from knobctl.model.features import decision_states, language_features, vision_features
from knobctl.model.timing import answer_fixed

QUESTIONS = ["what color is the shape ?", "is there a red circle in the image ?", "what is the shape ?"]


def controller(seed: int, fit_mask: bool = False) -> Controller:
    """A random controller; with ``fit_mask``, configurations cost 20 + 15 * tier + 2 * top_k + blocks
    + 2 * question tokens ms, so the mask decides at the 50 ms budget."""
    torch.manual_seed(seed)
    cfg = ControllerConfig(language_dim=64, vision_dim=64, tiers=("low", "medium", "high"), top_k=(2, 4, 8),
                           num_blocks=(1, 8, 16), budget_low_ms=0.0, budget_high_ms=100.0, hidden=16,
                           fit_mask=fit_mask, fit_text_tokens=(4, 10) if fit_mask else (0, 0))
    ctrl = Controller(cfg)
    with torch.no_grad():  # large random output layers: different budgets and inputs pick different knobs
        for stage in (ctrl.stage1, ctrl.stage2):
            stage[-1].weight.mul_(50.0)
        if fit_mask:
            ctrl.fit_latency_ms.copy_(fit_latency(cfg))
    return ctrl.eval()


def fit_latency(cfg: ControllerConfig) -> torch.Tensor:
    base = torch.tensor([20.0 + 15 * cfg.tiers.index(k.tier) + 2 * k.top_k + k.num_blocks for k in cfg.configs])
    return base[None] + 2.0 * torch.arange(4, 11)[:, None]  # [L, C]


def cached_choice(rt, ctrl, image, question, budget):
    """What Controller.choose picks from features computed the accuracy table's way."""
    ids = rt.tokenizer([question], add_special_tokens=False)["input_ids"]
    vision = []
    for tier in ctrl.config.tiers:
        visual = rt.encode_images(image, tier)
        inputs = rt.embed(visual, rt.prompt_from_ids(ids, visual.num_tokens))
        vision.append(vision_features(rt, decision_states(rt, inputs), inputs["input_ids"]))
    return ctrl.choose(language_features(rt, ids), torch.stack(vision, 1), budget, len(ids[0]))[0]


def test_controlled_answer_equals_the_chosen_knobs_run_directly(tiny_rt, images):
    seen, masked = set(), set()
    for seed in range(4):
        ctrl = controller(seed, fit_mask=seed == 3)
        for i, question in enumerate(QUESTIONS):
            for budget in (5.0, 50.0, 95.0):
                image = images[i : i + 1]
                res = answer_controlled(tiny_rt, ctrl, image, question, budget)
                direct, _ = answer_fixed(tiny_rt, image, question, res.knobs)
                assert res.answer == direct, (res.knobs, question)
                assert tiny_rt.answer(image, [question], res.knobs)[0] == direct
                assert res.knobs == cached_choice(tiny_rt, ctrl, image, question, budget)
                assert res.text_tokens == len(question.split())
                assert 0.0 < res.controller_ms < res.latency_ms
                seen.add(res.knobs)
                if ctrl.config.fit_mask:
                    row = min(res.text_tokens, 10) - 4
                    lat = fit_latency(ctrl.config)[row]  # [C]
                    assert lat[ctrl.config.configs.index(res.knobs)] <= budget or budget == 5.0
                    masked.add(res.knobs)
    assert len(seen) >= 4 and len({k.tier for k in seen}) >= 2  # the check covered real choices
    assert len(masked) >= 2 and ("low", 2, 1) in {(k.tier, k.top_k, k.num_blocks) for k in masked}  # 5 ms: cheapest


def test_vision_runs_once_at_the_chosen_tier_and_later_blocks_at_the_chosen_top_k(tiny_rt, images, monkeypatch):
    ctrl = controller(1)
    tiers, calls = [], []
    encode = tiny_rt.encode_images
    monkeypatch.setattr(tiny_rt, "encode_images", lambda imgs, tier: tiers.append(tier) or encode(imgs, tier))
    hooks = [layer.register_forward_hook(lambda m, a, o, i=i: calls.append(i)) for i, layer in
             enumerate(tiny_rt._all_layers)]
    try:
        res = answer_controlled(tiny_rt, ctrl, images[:1], QUESTIONS[0], 50.0, max_new_tokens=1)
    finally:
        for h in hooks:
            h.remove()
    assert tiers == [res.knobs.tier]
    # Prefill: the decision block, then the chosen blocks after it, each exactly once.
    assert calls == list(range(res.knobs.num_blocks))


def test_every_entry_point_takes_the_same_image_forms(tiny_rt, images):
    """One image as a PIL image, an HxWx3 array, encoded PNG bytes or a [1, H, W, 3] tensor: the two-stage flow,
    the timed fixed-knob request and rt.answer give the same answer for each."""
    import io

    from PIL import Image

    array = images[1].numpy()  # [H, W, 3] uint8
    png = io.BytesIO()
    Image.fromarray(array).save(png, format="PNG")
    forms = {"tensor": images[1:2], "pil": Image.fromarray(array), "array": array, "bytes": png.getvalue()}
    ctrl, question = controller(1), QUESTIONS[0]
    first = answer_controlled(tiny_rt, ctrl, forms["tensor"], question, 50.0)
    for name, image in forms.items():
        res = answer_controlled(tiny_rt, ctrl, image, question, 50.0)
        assert (res.answer, res.knobs) == (first.answer, first.knobs), name
        assert answer_fixed(tiny_rt, image, question, first.knobs)[0] == first.answer, name
        assert tiny_rt.answer(image, question, first.knobs) == [first.answer], name


def test_where_nothing_fits_the_fastest_runs_without_features_or_decisions(tiny_rt, images, monkeypatch):
    from knobctl.controller import two_stage

    ctrl = controller(3, fit_mask=True)
    for name in ("language_feature_one", "vision_feature_one"):
        monkeypatch.setattr(two_stage, name, lambda *a, n=name: pytest.fail(f"{n} ran with one configuration left"))
    res = answer_controlled(tiny_rt, ctrl, images[:1], QUESTIONS[0], 5.0)  # below every configuration's 34+ ms
    assert res.knobs == KnobConfig("low", 2, 1)
    assert res.answer == answer_fixed(tiny_rt, images[:1], QUESTIONS[0], res.knobs)[0]
    with pytest.raises(pytest.fail.Exception, match="ran with one configuration left"):
        answer_controlled(tiny_rt, ctrl, images[:1], QUESTIONS[0], 50.0)  # a real choice computes both
