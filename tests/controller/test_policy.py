"""The two-stage controller: budget code, argmax choices, normalisers, save/load."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from knobctl.controller.numpy_policy import NumpyPolicy
from knobctl.controller.policy import Controller, ControllerConfig
from knobctl.knobs import KnobGrid
from tests.conftest import rehash

CFG = ControllerConfig(language_dim=6, vision_dim=4, tiers=("low", "medium", "high"), top_k=(4, 8),
                       num_blocks=(12, 14, 16), budget_low_ms=0.0, budget_high_ms=50.0, hidden=16, budget_frequencies=2)


def make(seed: int = 0, activation: str = "gelu") -> Controller:
    torch.manual_seed(seed)
    return Controller(ControllerConfig(**{**CFG.__dict__, "activation": activation}))


def test_configs_follow_the_grid_order():
    grid = KnobGrid(tiers=("low", "medium", "high"), top_k=(4, 8), num_blocks=(12, 14, 16))
    assert CFG.configs == grid.configs() and CFG.pairs[1] == (4, 14) and CFG.budget_dim == 5


def test_budget_code_is_clamped_to_the_trained_range():
    ctrl = make()  # budget_x_range (-0.25, 1.1) over 0..50 ms: -12.5 .. 55 ms
    torch.testing.assert_close(ctrl.budget_code(torch.tensor([-40.0, 90.0])),
                               ctrl.budget_code(torch.tensor([-12.5, 55.0])))
    assert ctrl.budget_code(torch.tensor([54.0]))[0, 0] == 54.0 / 50.0


def test_budget_code():
    code = make().budget_code(torch.tensor([25.0, 50.0]))
    x = 0.5
    expected = [x, math.sin(math.pi * x), math.sin(2 * math.pi * x), math.cos(math.pi * x), math.cos(2 * math.pi * x)]
    torch.testing.assert_close(code[0], torch.tensor(expected), atol=1e-6, rtol=0)
    assert code.shape == (2, 5) and code[1, 0] == 1.0


def test_choose_is_stage1_argmax_then_stage2_argmax_at_that_tier():
    ctrl = make()
    lang, vis = torch.randn(7, 6), torch.randn(7, 3, 4)
    budget = torch.linspace(10, 80, 7)
    chosen = ctrl.choose(lang, vis, budget)
    tier = ctrl.tier_logits(lang, budget).argmax(-1)
    pair = ctrl.pair_logits(vis[torch.arange(7), tier], tier, lang, budget).argmax(-1)
    assert chosen == [CFG.configs[int(t) * 6 + int(p)] for t, p in zip(tier, pair)]
    assert ctrl.choose(lang[:2], vis[:2], 30.0) == ctrl.choose(lang[:2], vis[:2], torch.tensor([30.0, 30.0]))


def test_normalisers_standardise_the_training_features():
    ctrl = make()
    lang, vis = 3 + 2 * torch.randn(50, 6), -1 + 5 * torch.randn(50, 3, 4)
    ctrl.set_normalisers(lang, vis)
    z = ctrl._lang(lang)
    torch.testing.assert_close(z.mean(0), torch.zeros(6), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std(0), torch.ones(6), atol=1e-5, rtol=0)
    zv = ctrl._vis(vis).reshape(-1, 4)
    torch.testing.assert_close(zv.mean(0), torch.zeros(4), atol=1e-5, rtol=0)


@pytest.mark.parametrize("activation", ["gelu", "relu"])
def test_save_and_load_round_trip(tmp_path, activation):
    ctrl = make(3, activation)
    ctrl.set_normalisers(torch.randn(20, 6), torch.randn(20, 3, 4))
    ctrl.save(tmp_path / "c")
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["controller.json", "controller.safetensors", "manifest.json"]
    back = Controller.load(tmp_path / "c")
    lang, vis, budget = torch.randn(5, 6), torch.randn(5, 3, 4), torch.full((5,), 40.0)
    assert back.config == ctrl.config and back.config.activation == activation
    torch.testing.assert_close(back.tier_logits(lang, budget), ctrl.tier_logits(lang, budget), rtol=0, atol=0)
    assert back.choose(lang, vis, budget) == ctrl.choose(lang, vis, budget)


def test_a_config_saved_before_the_activation_option_loads_as_gelu(tmp_path):
    ctrl = make(3, "gelu")
    ctrl.save(tmp_path / "c")
    path = tmp_path / "c" / "controller.json"
    data = json.loads(path.read_text())
    del data["activation"]
    path.write_text(json.dumps(data))
    rehash(tmp_path / "c")
    back = Controller.load(tmp_path / "c")
    lang, budget = torch.randn(5, 6) * 3, torch.full((5,), 40.0)
    assert back.config.activation == "gelu"
    torch.testing.assert_close(back.tier_logits(lang, budget), ctrl.tier_logits(lang, budget), rtol=0, atol=0)
    relu = make(3, "relu")
    assert not torch.allclose(relu.tier_logits(lang, budget), ctrl.tier_logits(lang, budget))  # same weights


def test_an_unknown_activation_is_refused():
    with pytest.raises(ValueError, match="activation='tanh'; allowed: gelu, relu"):
        make(0, "tanh")


@pytest.mark.parametrize("activation", ["gelu", "relu"])
def test_numpy_policy_equals_the_torch_stages(activation):
    ctrl = make(3, activation)
    g = torch.Generator().manual_seed(0)
    # Non-trivial normalisers, so that folding them into the weights is exercised.
    ctrl.set_normalisers(torch.randn(50, 6, generator=g) * 3 + 1, torch.randn(50, 3, 4, generator=g) * 0.5 - 2)
    policy = NumpyPolicy.from_controller(ctrl)
    lang, vis = torch.randn(40, 6, generator=g) * 3 + 1, torch.randn(40, 4, generator=g) * 0.5 - 2
    budget = torch.linspace(-20.0, 70.0, 40)  # both clamped ends and the range between
    tier = ctrl.choose_tier(lang, budget)
    with torch.no_grad():
        t_logits, p_logits = ctrl.tier_logits(lang, budget), ctrl.pair_logits(vis, tier, lang, budget)
    for i in range(40):
        b = float(budget[i])
        np_tier = policy.tier_logits(lang[i].double().numpy(), b)
        np_pair = policy.pair_logits(vis[i].double().numpy(), int(tier[i]), lang[i].double().numpy(), b)
        torch.testing.assert_close(torch.from_numpy(np_tier).float(), t_logits[i], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(torch.from_numpy(np_pair).float(), p_logits[i], atol=1e-5, rtol=1e-5)
        assert policy.choose_tier(lang[i].numpy(), b) == int(tier[i])
    assert len(set(tier.tolist())) >= 2  # the comparison covers more than one tier's bias


def masked(seed: int = 0) -> Controller:
    """A fit-mask controller whose latency grows with tier, top_k, blocks and question length:
    question lengths 5..8 tokens, 10 + 10 * tier + top_k / 4 + (blocks - 12) / 2 + length ms."""
    torch.manual_seed(seed)
    cfg = ControllerConfig(**{**CFG.__dict__, "fit_mask": True, "fit_text_tokens": (5, 8)})
    ctrl = Controller(cfg)
    base = torch.tensor([10 + 10 * cfg.tiers.index(k.tier) + k.top_k / 4 + (k.num_blocks - 12) / 2
                         for k in cfg.configs])  # [C]
    ctrl.fit_latency_ms.copy_(base[None] + torch.arange(5, 9)[:, None])  # [L, C]
    return ctrl


def test_fit_mask_allows_only_configurations_that_fit():
    ctrl = masked()
    lat = ctrl.fit_latency_ms  # [4, 18]
    text = torch.tensor([5, 8, 2, 30, 6])  # 2 and 30 are outside the table: its first and last rows
    budget = torch.tensor([27.0, 27.0, 16.5, 100.0, 1.0])
    ok = ctrl.feasible(text, budget).reshape(5, -1)  # [B, C]
    rows = torch.tensor([0, 3, 0, 3, 1])
    assert torch.equal(ok[:4], lat[rows[:4]] <= budget[:4, None])
    assert ok[3].all() and ok[4].sum() == 1 and ok[4, 0]  # nothing fits 1 ms: the cheapest alone
    assert ok[0].sum() > ok[1].sum()  # the longer question affords fewer configurations
    g = torch.Generator().manual_seed(1)
    lang, vis = torch.randn(5, 6, generator=g), torch.randn(5, 3, 4, generator=g)
    chosen = ctrl.choose(lang, vis, budget, text)
    for i, k in enumerate(chosen[:4]):
        assert lat[rows[i], CFG.configs.index(k)] <= budget[i]
    assert chosen[4] == CFG.configs[0]
    with pytest.raises(ValueError, match="pass text_tokens"):
        ctrl.choose(lang, vis, budget)


def test_fit_mask_is_the_argmax_among_allowed_in_torch_and_numpy(tmp_path):
    ctrl = masked(2)
    g = torch.Generator().manual_seed(0)
    lang, vis = torch.randn(60, 6, generator=g), torch.randn(60, 3, 4, generator=g)
    budget, text = torch.linspace(15.0, 45.0, 60), torch.randint(4, 10, (60,), generator=g)
    ok = ctrl.feasible(text, budget)  # [B, T, P]
    with torch.no_grad():
        t_logits = ctrl.tier_logits(lang, budget).masked_fill(~ok.any(-1), -math.inf)  # [B, T]
    chosen = ctrl.choose(lang, vis, budget, text)
    ctrl.save(tmp_path / "m")
    back, policy = Controller.load(tmp_path / "m"), NumpyPolicy.from_controller(ctrl)
    assert back.choose(lang, vis, budget, text) == chosen
    for i, k in enumerate(chosen):
        t = int(t_logits[i].argmax())
        assert CFG.tiers.index(k.tier) == t
        with torch.no_grad():
            p = ctrl.pair_logits(vis[i : i + 1, t], torch.tensor([t]), lang[i : i + 1], budget[i : i + 1])[0]
        assert CFG.pairs.index((k.top_k, k.num_blocks)) == int(p.masked_fill(~ok[i, t], -math.inf).argmax())
        allowed = policy.feasible(int(text[i]), float(budget[i]))
        assert np.array_equal(allowed, ok[i].numpy())
        assert policy.choose_tier(lang[i].double().numpy(), float(budget[i]), allowed.any(-1)) == t
        assert policy.choose_pair(vis[i, t].double().numpy(), t, lang[i].double().numpy(), float(budget[i]),
                                  allowed[t]) == CFG.pairs.index((k.top_k, k.num_blocks))
    # the mask changes choices: without it, some of them would not fit
    free = Controller(ControllerConfig(**{**ctrl.config.__dict__, "fit_mask": False}))
    free.load_state_dict(ctrl.state_dict())
    assert free.choose(lang, vis, budget) != chosen


def test_stage_logits_from_precomputed_inputs_equal_the_per_call_stages():
    ctrl = masked(3)
    ctrl.set_normalisers(torch.randn(40, 6) * 2 + 1, torch.randn(40, 3, 4) * 3 - 1)
    g = torch.Generator().manual_seed(0)
    lang, vis = torch.randn(40, 6, generator=g), torch.randn(40, 3, 4, generator=g)
    stage1_in, stage2_in = ctrl.stage_inputs(lang, vis)  # [S, 6 + 5], [S, T, 4 + 3 + 6 + 5]
    assert stage1_in.shape == (40, 11) and stage2_in.shape == (40, 3, 18)
    idx = torch.tensor([7, 0, 39, 7, 12])  # rows drawn for a batch, one of them twice
    budget = torch.tensor([12.0, 30.0, 45.0, 20.0, 1.0])
    ok = ctrl.feasible(torch.tensor([5, 6, 7, 8, 5]), budget)  # [B, T, P]
    tier, pair = ctrl.stage_logits(stage1_in[idx], stage2_in[idx], budget, ok)
    b, t = len(idx), 3
    # bit for bit what the per-call stages give: training's draws depend on it
    assert torch.equal(tier, ctrl.tier_logits(lang[idx], budget, ok.any(-1)))
    assert torch.equal(pair, ctrl.pair_logits(vis[idx], torch.arange(t).expand(b, t), lang[idx][:, None].expand(-1, t, -1),
                                              budget[:, None].expand(-1, t), ok))
    assert torch.equal(stage1_in[:, -5:], torch.zeros(40, 5))  # the tables keep a zero code; rows are copies
    plain_tier, plain_pair = ctrl.stage_logits(stage1_in[idx], stage2_in[idx], budget)
    assert torch.equal(plain_tier, ctrl.tier_logits(lang[idx], budget)) and plain_pair.shape == (b, t, 6)
