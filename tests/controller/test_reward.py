"""The reward registry: each term's forms, the weights read from params by key, the sum in registry order, and a
term registered by a test alone."""

from __future__ import annotations

import pytest
import torch

from knobctl.controller.reward import (
    REWARD_TERMS,
    RewardTerm,
    RewardWeights,
    TermInputs,
    combine,
    expected_reward_terms,
    reward,
    reward_terms,
)
from knobctl.params import ParamsError, build


def random_cells(seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Accuracy, latency, budget, complexity and spread as a training step has them ([B, G], [B, 1], [B, G, 2])."""
    g = torch.Generator().manual_seed(seed)
    acc, lat = torch.rand(64, 16, generator=g), 8 + 10 * torch.rand(64, 16, generator=g)
    budget, size = 8 + 10 * torch.rand(64, 1, generator=g), torch.rand(64, 16, generator=g)
    low = 0.7 + 0.3 * torch.rand(64, 16, generator=g)
    return acc, lat, budget, size, torch.stack([low, low + 0.5 * torch.rand(64, 16, generator=g)], -1)


def test_reward_terms_and_weights():
    acc, lat, budget, cx = torch.tensor([1.0, 1.0]), torch.tensor([120.0, 80.0]), torch.tensor(100.0), torch.tensor(0.5)
    t = reward_terms(acc, lat, budget, cx)
    assert t["latency"].tolist() == pytest.approx([1.2, 0.8])
    assert t["violation"].tolist() == pytest.approx([0.2, 0.0]) and t["efficiency"].tolist() == [0.0, 1.0]
    w = RewardWeights.from_params({"alpha": 1.0, "beta": 0.1, "gamma": 2.0, "delta": 0.5, "epsilon": 0.05})
    assert reward(w, acc, lat, budget, cx).tolist() == pytest.approx(
        [1 - 0.12 - 0.4 - 0.025, 1 - 0.08 + 0.5 - 0.025])
    with pytest.raises(ValueError, match="reward.gamma=-1.0: it must be >= 0"):
        RewardWeights.from_params({"gamma": -1})
    assert RewardWeights.from_params({"epsilon": -0.02})["complexity"] == -0.02  # a preference for larger configs
    with pytest.raises(ValueError, match="reward.beta='x': expected a number"):
        RewardWeights.from_params({"beta": "x"})
    with pytest.raises(ValueError, match=r"reward: unknown keys \['zeta'\]"):
        RewardWeights.from_params({"zeta": 1})


def test_the_sum_is_the_formula_in_its_order_to_the_bit():
    """combine adds the registered terms left to right: the written formula, bit for bit (the default controller's
    bytes depend on the order of this float sum)."""
    assert [(t.name, t.key, t.sign) for t in REWARD_TERMS.values()] == [
        ("accuracy", "alpha", 1), ("latency", "beta", -1), ("violation", "gamma", -1), ("efficiency", "delta", 1),
        ("complexity", "epsilon", -1)]
    acc, lat, budget, size, spread = random_cells()
    w = RewardWeights.from_params({"alpha": 1.0, "beta": 0.3, "gamma": 2.0, "delta": 0.5, "epsilon": -0.02})
    a, b, c, d, e = (w[k] for k in ("accuracy", "latency", "violation", "efficiency", "complexity"))
    for t in (reward_terms(acc, lat, budget, size), expected_reward_terms(acc, lat, budget, size, spread)):
        by_hand = (a * t["accuracy"] - b * t["latency"] - c * t["violation"] + d * t["efficiency"]
                   - e * t["complexity"])
        assert torch.equal(combine(w, t), by_hand)


def test_terms_without_an_expected_form_do_not_read_the_latency():
    """A term that gives no expected form is scored as its own expectation: true only if it ignores the latency."""
    acc, lat, budget, size, spread = random_cells(1)
    for term in REWARD_TERMS.values():
        if term.expected is None:
            x, y = TermInputs(acc, lat, budget, size), TermInputs(acc, 2 * lat + 1, budget, size)
            assert torch.equal(term.value(x), term.value(y)), term.name
        else:  # the expected form is the mean of the sampled form over the spread (a draw is uniform in it)
            ratios = torch.linspace(0, 1, 2001)[:, None, None]
            draws = lat * (spread[..., 0] + ratios * (spread[..., 1] - spread[..., 0]))  # [R, B, G]
            mean = term.value(TermInputs(acc, draws, budget, size)).mean(0)
            exact = term.value(TermInputs(acc, lat, budget, size, spread), expected=True)
            assert torch.allclose(mean, exact, atol=2e-3), term.name


def test_the_weights_are_a_checked_immutable_mapping_read_and_written_by_params_key():
    w = RewardWeights()
    assert dict(w) == {"accuracy": 1.0, "latency": 0.0, "violation": 2.0, "efficiency": 0.5, "complexity": -0.02}
    assert w.as_params() == {"alpha": 1.0, "beta": 0.0, "gamma": 2.0, "delta": 0.5, "epsilon": -0.02}
    assert RewardWeights.from_params(w.as_params()) == w and hash(RewardWeights.from_params({})) == hash(w)
    assert build(RewardWeights, {"gamma": 4}, "reward") == RewardWeights({"violation": 4.0})
    with pytest.raises(AttributeError, match="immutable"):
        w._weights = {}
    with pytest.raises(TypeError):
        w["violation"] = 3.0  # type: ignore[index]
    with pytest.raises(ParamsError, match=r"reward=\['speed'\]: unknown terms"):
        RewardWeights({"speed": 1.0})
    with pytest.raises(ParamsError, match=r"reward\.delta=True: every weight is a finite number"):
        RewardWeights({"efficiency": True})
    with pytest.raises(ParamsError, match="only beta and epsilon may be negative"):
        RewardWeights({"accuracy": -1.0})


def test_a_term_registered_by_a_test_enters_the_reward_with_its_weight(monkeypatch):
    """A new term is one function and one params key (docs/adding-a-reward-term.md): here "headroom", the unused
    share of the budget, registered for this test only."""

    def headroom(x: TermInputs) -> torch.Tensor:
        return (1 - x.latency_ms / x.budget_ms).clamp(min=0)

    def expected_headroom(x: TermInputs) -> torch.Tensor:  # the doc's closed form: it reads the latency
        low, high = x.spread[..., 0], x.spread[..., 1]
        u, v = x.budget_ms - x.latency_ms * high, x.budget_ms - x.latency_ms * low
        width = (v - u).clamp(min=1e-12)
        mean = (v.clamp(min=0) ** 2 - u.clamp(min=0) ** 2) / (2 * width)
        return torch.where(v - u > 1e-12, mean, u.clamp(min=0)) / x.budget_ms

    acc, lat, budget, size, spread = random_cells(2)
    before = {"sampled": reward(RewardWeights(), acc, lat, budget, size),
              "expected": combine(RewardWeights(), expected_reward_terms(acc, lat, budget, size, spread))}
    monkeypatch.setitem(REWARD_TERMS, "headroom", RewardTerm("headroom", "zeta", +1, 0.0, headroom,
                                                             expected_headroom))
    ratios = torch.linspace(0, 1, 2001)[:, None, None]  # [R, 1, 1]: the uniform draw's quantiles
    draws = lat * (spread[..., 0] + ratios * (spread[..., 1] - spread[..., 0]))  # [R, B, G]
    assert torch.allclose(headroom(TermInputs(acc, draws, budget, size)).mean(0),
                          expected_headroom(TermInputs(acc, lat, budget, size, spread)), atol=1e-4)
    w = RewardWeights.from_params({"zeta": 0.25})
    assert w["headroom"] == 0.25 and w.as_params()["zeta"] == 0.25 and RewardWeights()["headroom"] == 0.0
    sampled = reward(w, acc, lat, budget, size)
    assert torch.allclose(sampled - before["sampled"], 0.25 * headroom(TermInputs(acc, lat, budget, size)), atol=1e-6)
    assert torch.equal(reward(RewardWeights(), acc, lat, budget, size), before["sampled"])  # at weight 0: unchanged
    expected = combine(w, expected_reward_terms(acc, lat, budget, size, spread))
    assert torch.allclose(expected - before["expected"],
                          0.25 * expected_headroom(TermInputs(acc, lat, budget, size, spread)), atol=1e-6)
    with pytest.raises(ParamsError, match=r"reward\.zeta=-1.0: it must be >= 0"):
        RewardWeights.from_params({"zeta": -1})
    monkeypatch.delitem(REWARD_TERMS, "headroom")
    with pytest.raises(ParamsError, match=r"reward: unknown keys \['zeta'\]"):
        RewardWeights.from_params({"zeta": 0.25})
