"""The pairwise and GRPO losses (against hand values and naive loops), the LOSSES registry, sampling."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from knobctl.controller.losses import (
    LOSSES,
    Actions,
    draw_actions,
    grpo_loss,
    imitation_loss,
    pairwise_loss,
    sample_actions,
    stage_log_probs,
    zero_variance,
)
from knobctl.controller.policy import Controller, ControllerConfig


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_pairwise_loss_hand_computed():
    r = torch.tensor([[1.0, 0.0, 0.5]])
    logp = torch.tensor([[-1.0, -2.0, -0.5]])
    loss, pairs = pairwise_loss(r, logp)
    # Ranked pairs (i, j) with r_i > r_j: (0, 1): logp diff 1; (0, 2): -0.5; (2, 1): 1.5.
    expected = (softplus(-1.0) + softplus(0.5) + softplus(-1.5)) / 3
    assert pairs == 3 and loss.item() == pytest.approx(expected, rel=1e-6)


def test_margin_weighted_pairs():
    r = torch.tensor([[1.0, 0.0, 0.5]])
    logp = torch.tensor([[-1.0, -2.0, -0.5]])
    loss, pairs = pairwise_loss(r, logp, "margin")
    expected = (1.0 * softplus(-1.0) + 0.5 * softplus(0.5) + 0.5 * softplus(-1.5)) / 2.0
    assert pairs == 3 and loss.item() == pytest.approx(expected, rel=1e-6)


def test_pairwise_loss_on_one_group_by_hand():
    """One group of three, rewards 1.0 > 0.5 > 0.0: the three ranked pairs (i, j) with r_i > r_j are
    (0, 1), (0, 2) and (1, 2); each adds -log sigmoid(logp_i - logp_j) = log(1 + exp(logp_j - logp_i))."""
    r = torch.tensor([[1.0, 0.5, 0.0]])
    logp = torch.tensor([[-2.0, -0.5, -1.0]], requires_grad=True)
    # logp_i - logp_j: (0, 1): -2.0 + 0.5 = -1.5; (0, 2): -2.0 + 1.0 = -1.0; (1, 2): -0.5 + 1.0 = 0.5
    t01, t02, t12 = math.log(1 + math.exp(1.5)), math.log(1 + math.exp(1.0)), math.log(1 + math.exp(-0.5))
    assert (t01, t02, t12) == pytest.approx((1.701413, 1.313262, 0.474077), abs=1e-6)
    loss, pairs = pairwise_loss(r, logp)  # sign: the mean over the ranked pairs
    assert pairs == 3 and loss.item() == pytest.approx((t01 + t02 + t12) / 3, rel=1e-6)  # 1.162917
    assert loss.item() == pytest.approx(1.162917, abs=1e-6)
    # d/d logp_i of log(1 + exp(logp_j - logp_i)) = -sigmoid(logp_j - logp_i); the pair pushes i up and j down
    s01, s02, s12 = (1 / (1 + math.exp(-x)) for x in (1.5, 1.0, -0.5))
    loss.backward()
    expected = [(-s01 - s02) / 3, (s01 - s12) / 3, (s02 + s12) / 3]
    assert logp.grad[0].tolist() == pytest.approx(expected, rel=1e-5)
    # margin: each pair weighted by its reward gap (0.5, 1.0, 0.5), divided by the gaps' sum 2.0
    margin, pairs = pairwise_loss(r, logp.detach(), "margin")
    assert pairs == 3 and margin.item() == pytest.approx((0.5 * t01 + 1.0 * t02 + 0.5 * t12) / 2.0, rel=1e-6)
    assert margin.item() == pytest.approx(1.200503, abs=1e-6)


def test_ties_give_no_pairs_and_no_gradient():
    r = torch.tensor([[1.0, 1.0, 0.0], [0.3, 0.3, 0.3]])
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.5, -2.0]], requires_grad=True)
    loss, pairs = pairwise_loss(r, logp)
    assert pairs == 2  # (0, 2) and (1, 2); the tied (0, 1) and the all-equal second group give none
    assert loss.item() == pytest.approx((softplus(-2.0) + softplus(-1.0)) / 2, rel=1e-6)
    loss.backward()
    assert torch.all(logp.grad[1] == 0) and zero_variance(r).tolist() == [False, True]
    empty, n = pairwise_loss(torch.ones(2, 4), torch.randn(2, 4))
    assert n == 0 and empty.item() == 0.0


def test_vectorised_losses_equal_naive_loops():
    g = torch.Generator().manual_seed(0)
    r = (torch.rand(6, 5, generator=g) * 4).round() / 4  # ties on purpose
    logp = torch.randn(6, 5, generator=g)
    total, count = 0.0, 0
    for b in range(6):
        for i, j in itertools.permutations(range(5), 2):
            if r[b, i] > r[b, j]:
                total += -math.log(1 / (1 + math.exp(-(logp[b, i] - logp[b, j]).item())))
                count += 1
    loss, pairs = pairwise_loss(r, logp)
    assert pairs == count and loss.item() == pytest.approx(total / count, rel=1e-5)
    entropy = torch.rand(6, 5, generator=g)
    naive = 0.0
    for b in range(6):
        mean = sum(r[b].tolist()) / 5
        std = math.sqrt(sum((x - mean) ** 2 for x in r[b].tolist()) / 5)
        naive += sum(-((x - mean) / (std + 1e-6)) * lp for x, lp in zip(r[b].tolist(), logp[b].tolist()))
    naive = naive / 30 - 0.1 * entropy.mean().item()
    assert grpo_loss(r, logp, entropy, 0.1).item() == pytest.approx(naive, rel=1e-5)


@pytest.mark.parametrize("entropy", [False, True])
def test_the_losses_registry_runs_each_loss_as_its_function(entropy):
    """What training calls (LOSSES[name].fn with the sampled actions and train_controller's settings) is the loss
    function itself, to the bit; only GRPO reads the entropies."""
    g = torch.Generator().manual_seed(3)
    r, logp = torch.rand(4, 6, generator=g), torch.randn(4, 6, generator=g)
    ent = {"tier": torch.rand(4, generator=g), "pair": torch.rand(4, 6, generator=g)} if entropy else {}
    acts = Actions(tier=torch.zeros(4, 6, dtype=torch.long), pair=torch.zeros(4, 6, dtype=torch.long),
                   config=torch.zeros(4, 6, dtype=torch.long), logp=logp, entropy=ent)

    class Settings:
        pair_weight, advantage_scale, entropy_coef = "margin", "none", 0.05

    bonus = ent["tier"][:, None] + ent["pair"] if entropy else torch.zeros(())
    assert torch.equal(LOSSES["pairwise"].fn(r, acts, Settings()), pairwise_loss(r, logp, "margin")[0])
    assert torch.equal(LOSSES["grpo"].fn(r, acts, Settings()), grpo_loss(r, logp, bonus, 0.05, scale="none"))
    assert [k for k, v in LOSSES.items() if v.entropy_bonus] == ["grpo"]


def small_policy():
    """A 2-tier x 4-pair controller and 3 rows of random features with budgets."""
    torch.manual_seed(0)
    cfg = ControllerConfig(language_dim=4, vision_dim=3, tiers=("low", "high"), top_k=(4, 8), num_blocks=(12, 16),
                           budget_low_ms=5.0, budget_high_ms=15.0, hidden=8, budget_frequencies=1)
    return Controller(cfg), torch.randn(3, 4), torch.randn(3, 2, 3), torch.tensor([5.0, 10.0, 20.0])


def test_sampled_actions_and_their_joint_log_probability():
    ctrl, lang, vis, budget = small_policy()
    a = sample_actions(ctrl, lang, vis, budget, 6, torch.Generator().manual_seed(1))
    b = sample_actions(ctrl, lang, vis, budget, 6, torch.Generator().manual_seed(1))
    assert torch.equal(a.config, b.config) and a.config.shape == (3, 6)
    assert torch.equal(a.config, a.tier * 4 + a.pair) and int(a.config.max()) < 8
    p1 = F.softmax(ctrl.tier_logits(lang, budget), -1)
    for row, g in ((0, 0), (2, 5)):
        t = int(a.tier[row, g])
        p2 = F.softmax(ctrl.pair_logits(vis[row, t], torch.tensor(t), lang[row], budget[row]), -1)
        expected = math.log(p1[row, t].item() * p2[int(a.pair[row, g])].item())
        assert a.logp[row, g].item() == pytest.approx(expected, rel=1e-5)
    assert (a.entropy["tier"] <= math.log(2) + 1e-6).all() and (a.entropy["top_k"] <= math.log(2) + 1e-6).all()
    assert torch.allclose(a.entropy["pair"], a.entropy["top_k"] + a.entropy["num_blocks"], atol=0.7)


def test_actions_without_entropy_are_the_same_draws():
    ctrl, lang, vis, budget = small_policy()
    full = sample_actions(ctrl, lang, vis, budget, 4, torch.Generator().manual_seed(2))
    lean = sample_actions(ctrl, lang, vis, budget, 4, torch.Generator().manual_seed(2), with_entropy=False)
    assert torch.equal(full.config, lean.config) and torch.equal(full.logp, lean.logp) and lean.entropy == {}


def test_the_policy_entropies_are_the_same_draws_and_values_as_all():
    ctrl, lang, vis, budget = small_policy()
    ok = torch.tensor([[[True, False, True, False], [False, False, False, False]],
                       [[False, False, False, True], [True, True, True, True]],
                       [[True, True, True, True], [False, True, False, False]]])  # [B, T, P]
    tier_logp, all_logp = stage_log_probs(ctrl, lang, vis, budget, ok)
    full = draw_actions(tier_logp, all_logp, 5, torch.Generator().manual_seed(2), "all", (2, 2), ok)
    lean = draw_actions(tier_logp, all_logp, 5, torch.Generator().manual_seed(2), "policy", None, ok)
    assert torch.equal(full.config, lean.config) and torch.equal(full.logp, lean.logp)
    assert set(lean.entropy) == {"tier", "pair"} and set(full.entropy) == {"tier", "pair", "top_k", "num_blocks"}
    assert all(torch.equal(full.entropy[k], lean.entropy[k]) for k in lean.entropy)
    # the masked exp is exp itself where allowed, 0 elsewhere
    expected = torch.where(ok, all_logp.exp(), torch.zeros(()))
    assert torch.equal(-(expected * all_logp).sum(-1).gather(1, full.tier), full.entropy["pair"])
    with pytest.raises(ValueError, match="entropy='some'"):
        draw_actions(tier_logp, all_logp, 5, torch.Generator(), "some")


def test_draws_follow_the_policy():
    ctrl, lang, vis, budget = small_policy()
    with torch.no_grad():
        a = sample_actions(ctrl, lang, vis, budget, 40_000, torch.Generator().manual_seed(3), with_entropy=False)
        p1 = F.softmax(ctrl.tier_logits(lang, budget), -1)  # [3, 2]
        p2 = F.softmax(ctrl.pair_logits(vis, torch.arange(2).expand(3, 2), lang[:, None].expand(-1, 2, -1),
                                        budget[:, None].expand(-1, 2)), -1)  # [3, 2, 4]
    expected = (p1[..., None] * p2).reshape(3, 8)  # [3, C]: P(tier) P(pair | tier)
    freq = torch.stack([torch.bincount(a.config[r], minlength=8) for r in range(3)]).float() / 40_000
    assert (freq - expected).abs().max() < 0.01  # 40,000 draws: about 5 standard errors


def test_masked_configurations_are_never_drawn_and_the_rest_renormalise():
    ctrl, lang, vis, budget = small_policy()
    ok = torch.tensor([[[True, False, True, False], [False, False, False, False]],  # tier 1 has nothing allowed
                       [[False, False, False, True], [True, True, True, True]],
                       [[False, False, False, False], [False, True, False, False]]])  # [B, T, P]
    with torch.no_grad():
        a = sample_actions(ctrl, lang, vis, budget, 20_000, torch.Generator().manual_seed(4), feasible=ok)
        p1 = F.softmax(ctrl.tier_logits(lang, budget).masked_fill(~ok.any(-1), -math.inf), -1)  # [3, 2]
        p2 = F.softmax(ctrl.pair_logits(vis, torch.arange(2).expand(3, 2), lang[:, None].expand(-1, 2, -1),
                                        budget[:, None].expand(-1, 2)).masked_fill(~ok, -math.inf), -1)  # [3, 2, 4]
    expected = torch.nan_to_num(p1[..., None] * p2).reshape(3, 8)  # [3, C]
    freq = torch.stack([torch.bincount(a.config[r], minlength=8) for r in range(3)]).float() / 20_000
    assert ok.reshape(3, 8).gather(1, a.config).all()  # no draw outside the mask
    assert (freq - expected).abs().max() < 0.015
    assert torch.isfinite(a.logp).all() and all(torch.isfinite(v).all() for v in a.entropy.values())
    assert (a.config[2] == 5).all() and torch.allclose(a.logp[2], torch.zeros(20_000), atol=1e-6)  # one choice: logp 0


def test_imitation_loss_is_the_cross_entropy_of_both_stages():
    ctrl, lang, vis, budget = small_policy()
    target = torch.tensor([1, 6, 3])  # tier * 4 + pair: (0, 1), (1, 2), (0, 3)
    p1 = F.softmax(ctrl.tier_logits(lang, budget), -1)
    expected = 0.0
    for row, c in enumerate(target.tolist()):
        t, pair = divmod(c, 4)
        p2 = F.softmax(ctrl.pair_logits(vis[row, t], torch.tensor(t), lang[row], budget[row]), -1)
        expected -= math.log(p1[row, t].item() * p2[pair].item()) / 3
    loss = imitation_loss(ctrl, lang, vis, budget, target)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()  # it trains both stages
    assert ctrl.stage1[1].weight.grad.abs().sum() > 0 and ctrl.stage2[1].weight.grad.abs().sum() > 0
