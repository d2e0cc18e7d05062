"""Controller training on hand-made tables: it learns per-sample choices, is deterministic, and
fetches or refreshes cells online."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from knobctl.controller.losses import LOSSES, GroupLoss
from knobctl.controller.reward import REWARD_TERMS, RewardTerm, RewardWeights
from knobctl.controller.tables import CacheTables, complexity_of
from knobctl.controller.training import (
    RefreshParams,
    TrainParams,
    _StepTables,
    make_controller,
    sample_budgets,
    split_samples,
    train_controller,
)
from knobctl.knobs import KnobGrid

GRID = KnobGrid(tiers=("low", "high"), top_k=(4, 8), num_blocks=(12, 16))
CONFIGS = tuple(GRID.configs())


def toy_tables(n: int = 80, seed: int = 0) -> CacheTables:
    """Two kinds of question. Kind A (short) is answered only at the high tier, and its high tier is
    cheap (11 ms); kind B (long) is answered at any tier, and its high tier costs 16 ms. Low is 10 ms.
    At a 12.5 ms budget a per-sample policy gets everything right (A high, B low); a static one cannot:
    high does not fit B, so it must pick low and loses every A."""
    rng = np.random.default_rng(seed)
    kind = np.arange(n) % 2  # 0 = A, 1 = B
    scores = np.zeros((n, len(CONFIGS)), dtype=np.float32)
    latency = np.zeros((n, len(CONFIGS)), dtype=np.float32)
    for j, k in enumerate(CONFIGS):
        high = k.tier == "high"
        scores[:, j] = np.where(kind == 0, float(high), 1.0)
        extra = 0.1 * (k.top_k == 8) + 0.2 * (k.num_blocks == 16)
        latency[:, j] = np.where(high, np.where(kind == 0, 11.0, 16.0), 10.0) + extra
    language = np.concatenate([np.eye(2)[kind], rng.normal(0, 0.1, (n, 4))], 1).astype(np.float32)
    vision = rng.normal(0, 1, (n, 2, 3)).astype(np.float32)
    return CacheTables(sample_ids=np.array([f"s{i}" for i in range(n)]), question_types=np.array(["A", "B"])[kind],
                       configs=CONFIGS, tiers=("low", "high"), scores=torch.from_numpy(scores),
                       latency_ms=torch.from_numpy(latency), language=torch.from_numpy(language),
                       vision=torch.from_numpy(vision), complexity=complexity_of(CONFIGS),
                       text_tokens=torch.from_numpy(np.where(kind == 0, 4, 9)))


FAST = {"steps": 400, "batch_size": 32, "group_size": 5, "lr": 3e-3, "log_every": 50, "eval_budgets": 4, "eval_fraction": 0.25,
            "budget_mode": "absolute", "budget_range": (10.4, 17.0)}


def test_params_are_validated():
    assert TrainParams.from_params({"budget_range": [0.2, 0.9]}).budget_range == (0.2, 0.9)
    with pytest.raises(ValueError, match="train_controller.loss='ppo': allowed: pairwise, grpo"):
        TrainParams.from_params({"loss": "ppo"})
    with pytest.raises(ValueError, match="train_controller.group_size=1"):
        TrainParams.from_params({"group_size": 1})
    with pytest.raises(ValueError, match="budget_range=\\[0.9, 0.2\\]"):
        TrainParams.from_params({"budget_range": [0.9, 0.2]})
    with pytest.raises(ValueError, match="fit_mask='yes': write true or false"):
        TrainParams.from_params({"fit_mask": "yes"})
    with pytest.raises(ValueError, match="train_controller.activation='silu': allowed: gelu, relu"):
        TrainParams.from_params({"activation": "silu"})
    with pytest.raises(ValueError, match="online_refresh.fraction=2"):
        TrainParams.from_params({"online_refresh": {"every": 10, "fraction": 2}})


def test_training_budgets_and_sample_split():
    t = toy_tables(8)
    gen = torch.Generator().manual_seed(0)
    rel = sample_budgets(t, torch.arange(8), TrainParams(budget_range=(0.0, 1.0)), gen)
    assert ((rel >= 10.0) & (rel <= t.latency_ms.max(1).values)).all()
    train, held = split_samples(10, 0.3, seed=0)
    assert len(held) == 3 and sorted(train.tolist() + held.tolist()) == list(range(10))


@pytest.mark.parametrize(("loss", "fit_mask", "probe_reward"),
                         [("pairwise", True, 0.0), ("grpo", True, 0.0), ("pairwise", False, 0.0), ("grpo", True, 0.75)])
def test_training_learns_per_sample_choices_that_beat_static(loss, fit_mask, probe_reward):
    result = train_controller(toy_tables(), TrainParams(**FAST, loss=loss, fit_mask=fit_mask, probe_reward=probe_reward),
                              RewardWeights(), seed=0, progress=False)
    assert result.controller.config.fit_mask == fit_mask
    tight = [e for e in result.evaluation if 11.3 <= e["budget_ms"] < 16]  # A's high tier fits, B's does not
    assert tight
    for e in tight:
        assert e["static_config"].startswith("low") and e["static_accuracy"] < 0.6  # loses every A
        assert e["controller_accuracy"] >= 0.9 and e["controller_violation_rate"] <= (0.0 if fit_mask else 0.1)
        assert e["oracle_accuracy"] == 1.0 and e["gain_over_static"] > 0.3
        assert 0.2 < e["gain_ci95_low"] <= e["gain_over_static"] <= e["gain_ci95_high"]
    # 1.5 = right and in budget everywhere; the probe's P(right) on the toy table is near, not at, 1
    assert result.curves["reward"].iloc[-1] > (1.3 if probe_reward == 0 else 1.2)
    assert result.summary["rollouts"] == 400 * 32 * 5 and 0 <= result.summary["zero_variance_share"] <= 1


def test_training_is_deterministic_given_the_seed():
    a = train_controller(toy_tables(), TrainParams(**{**FAST, "steps": 60}), RewardWeights(), seed=5, progress=False)
    b = train_controller(toy_tables(), TrainParams(**{**FAST, "steps": 60}), RewardWeights(), seed=5, progress=False)
    pd.testing.assert_frame_equal(a.curves, b.curves)
    for (name, x), (_, y) in zip(a.controller.state_dict().items(), b.controller.state_dict().items()):
        assert torch.equal(x, y), name
    c = train_controller(toy_tables(), TrainParams(**{**FAST, "steps": 60}), RewardWeights(), seed=6, progress=False)
    assert not a.curves.equals(c.curves)


@pytest.mark.parametrize("budget_mode", ["relative", "absolute"])
def test_step_tables_give_the_per_step_lookups_bit_for_bit(budget_mode):
    t = toy_tables()
    t.latency_spread = torch.rand(len(CONFIGS), 2, generator=torch.Generator().manual_seed(1)) + 0.5
    p = TrainParams(**{**FAST, "budget_mode": budget_mode, "budget_range": (-0.3, 1.2) if budget_mode == "relative"
                       else (9.0, 17.0)}, probe_reward=0.75)
    ctrl = make_controller(t, torch.arange(60), 8, fit_mask=True)
    predicted = torch.rand(t.scores.shape, generator=torch.Generator().manual_seed(2))  # [S, C]
    step = _StepTables(t, ctrl, predicted, p)
    idx = torch.tensor([3, 77, 3, 41, 0, 58])
    budget, ok = step.budgets(idx, torch.Generator().manual_seed(5))
    assert torch.equal(budget, sample_budgets(t, idx, p, torch.Generator().manual_seed(5)))
    assert torch.equal(ok, ctrl.feasible(t.text_tokens[idx], budget))
    assert (budget < step.fit_floor[idx]).any()  # the draws cover a budget nothing fits (the cheapest alone)
    config = torch.randint(len(CONFIGS), (len(idx), 4), generator=torch.Generator().manual_seed(6))  # [B, G]
    acc, lat, complexity, spread = step.cells(idx[:, None] * len(CONFIGS) + config, config)
    assert torch.equal(acc, 0.25 * t.scores[idx[:, None], config] + 0.75 * predicted[idx[:, None], config])
    assert torch.equal(lat, t.latency_ms[idx[:, None], config])
    assert torch.equal(complexity, t.complexity[config]) and torch.equal(spread, t.latency_spread[config])
    t.latency_ms[3] += 5.0  # an online fill writes into the tables; the step tables follow once rebuilt
    step.rebuild()
    budget, _ = step.budgets(idx, torch.Generator().manual_seed(5))
    assert torch.equal(budget, sample_budgets(t, idx, p, torch.Generator().manual_seed(5)))
    assert torch.equal(step.cells(idx[:, None] * len(CONFIGS) + config, config)[1], t.latency_ms[idx[:, None], config])


def fake_oracle(calls):
    def fetch(samples, configs):
        calls.append(len(samples))
        return np.full(len(samples), 0.25, dtype=np.float32), np.full(len(samples), 99.0, dtype=np.float32)
    return lambda: fetch


def test_online_refresh_writes_back_and_logs_drift():
    tables, calls = toy_tables(), []
    p = TrainParams(**{**FAST, "steps": 20, "online_refresh": RefreshParams(every=5, fraction=0.1)})
    result = train_controller(tables, p, RewardWeights(), seed=0, fetch_factory=fake_oracle(calls), progress=False)
    log = result.refresh_log
    assert len(calls) == 4 and set(log["reason"]) == {"refresh"} and set(log["step"]) == {5, 10, 15, 20}
    cells = [(np.flatnonzero(tables.sample_ids == s)[0], [k.label for k in CONFIGS].index(c))
             for s, c in zip(log["sample_id"], log["config"])]
    assert all(tables.scores[s, c] == 0.25 and tables.latency_ms[s, c] == 99.0 for s, c in cells)
    assert int(tables.refreshed.sum()) == len(log) and (log["refresh_count"] >= 1).all()  # one row per refresh
    assert int(tables.refreshed.max()) == log["refresh_count"].max() and len(set(cells)) < len(log)  # some twice
    assert result.summary["online"]["cells_refreshed"] == len(log)
    assert result.summary["online"]["latency_ratio_median"] > 5  # 99 ms against ~10-16 ms cached


def test_missing_cells_are_fetched_online_or_named():
    tables = toy_tables()
    tables.scores[:, 3] = float("nan")  # a configuration the table lacks
    calls = []
    result = train_controller(tables, TrainParams(**{**FAST, "steps": 10}), RewardWeights(), seed=0,
                              fetch_factory=fake_oracle(calls), progress=False)
    assert calls and set(result.refresh_log["reason"]) == {"missing"}
    assert set(result.refresh_log["config"]) == {CONFIGS[3].label}
    with pytest.raises(RuntimeError, match="not in the accuracy table and no model is loaded"):
        train_controller(_with_nan(), TrainParams(**{**FAST, "steps": 10}),
                         RewardWeights(), seed=0, progress=False)


def _with_nan() -> CacheTables:
    t = toy_tables()
    t.scores[:, :] = float("nan")
    return t


def edge_tables(n: int = 40) -> CacheTables:
    """Every configuration is right. Low takes 10 ms, high 12 ms; a request lands between 0.9x and 1.2x
    its estimate. At a 12.4-13 ms budget high fits by its estimate but runs over about half the time
    (12 x 1.2 = 14.4 ms), low never does (12 ms), and epsilon < 0 prefers the larger configuration."""
    latency = torch.tensor([[10.0 if k.tier == "low" else 12.0 for k in CONFIGS]] * n)
    return CacheTables(sample_ids=np.array([f"s{i}" for i in range(n)]), question_types=np.array(["A"] * n),
                       configs=CONFIGS, tiers=("low", "high"), scores=torch.ones(n, len(CONFIGS)), latency_ms=latency,
                       language=torch.randn(n, 3, generator=torch.Generator().manual_seed(0)),
                       vision=torch.randn(n, 2, 3, generator=torch.Generator().manual_seed(1)),
                       complexity=complexity_of(CONFIGS), text_tokens=torch.full((n,), 5),
                       latency_spread=torch.tensor([[0.9, 1.2]] * len(CONFIGS)))


EDGE = {**FAST, "steps": 300, "budget_range": (12.4, 13.0), "eval_budgets": 4}


@pytest.mark.parametrize("sampling", ["spread", "expected"])
def test_the_violation_weight_sets_the_margin_only_with_the_latency_spread(sampling):
    def run(gamma: float, delta: float, sampling: str):
        return train_controller(edge_tables(), TrainParams(**EDGE, latency_sampling=sampling),
                                RewardWeights({"violation": gamma, "efficiency": delta}), seed=0, progress=False)

    careless, careful = run(0.0, 0.0, sampling), run(8.0, 0.5, sampling)
    widest = careless.evaluation[-1]  # 12.9 ms: everything fits by its estimate
    assert widest["controller_slow_rate"] > 0.3 and widest["tier_share"]["high"] > 0.9  # epsilon's pick, late 42%
    safe = careful.evaluation[-1]
    assert safe["controller_slow_rate"] == 0.0 and safe["tier_share"]["low"] > 0.9
    # every answer is right: within budget, the careless pick keeps only its in-time share (0.58 at 12.9 ms)
    assert safe["controller_accuracy_within_budget"] == 1.0 and widest["controller_accuracy_within_budget"] < 0.7
    # At the median every allowed pick fits, so the violation and efficiency weights change nothing at all.
    a, b = run(0.0, 0.0, "median"), run(8.0, 0.5, "median")
    for (name, x), (_, y) in zip(a.controller.state_dict().items(), b.controller.state_dict().items()):
        assert torch.equal(x, y), name


def test_the_probe_is_evaluated_beside_the_controller_on_the_same_samples():
    result = train_controller(toy_tables(), TrainParams(**FAST), RewardWeights(), seed=0, progress=False)
    tight = [e for e in result.evaluation if 11.3 <= e["budget_ms"] < 16]
    for e in tight:  # the kind is in the language feature: the probe learns it as the controller does
        assert e["probe_accuracy"] >= 0.9 and e["probe_violation_rate"] == 0.0
        # smallest answers exactly the B samples, and full (16.3 ms for B) misses every budget here on exactly those
        assert e["full_accuracy"] == 1.0 and e["full_violation_rate"] == e["smallest_accuracy"] > 0
        assert e["smallest_accuracy"] <= e["random_accuracy"] < 1.0
        assert 0 < e["fit_share"] < 1
    assert result.probe.predict(toy_tables().language, toy_tables().vision).shape == (80, len(CONFIGS))


def test_the_warm_start_alone_makes_the_policy_pick_what_the_probe_picks():
    t = toy_tables()
    p = TrainParams(**{**FAST, "steps": 1, "lr": 1e-2, "warm_start_steps": 300})
    result = train_controller(t, p, RewardWeights(), seed=0, progress=False)
    train_idx, _ = split_samples(len(t.sample_ids), p.eval_fraction, 0)
    predicted = result.probe.predict(t.language, t.vision)
    for budget in (12.5, 16.5):  # at 12.5 the probe takes A's high tier and B's low; at 16.5 the full for both
        b = torch.full((len(train_idx),), budget)
        chosen = result.controller.choose(t.language[train_idx], t.vision[train_idx], b, t.text_tokens[train_idx])
        col = torch.tensor([CONFIGS.index(k) for k in chosen])
        fits = t.latency_ms[train_idx] <= budget
        best = torch.where(fits, predicted[train_idx] + 1e-6 * t.complexity, torch.tensor(-1.0)).argmax(1)
        assert (col == best).float().mean() >= 0.9, budget
    assert result.summary["warm_start_steps"] == 300 and 0 <= result.summary["warm_start_final_loss"] < 0.5
    # without the warm start, one GRPO step leaves the policy near uniform: far from the probe's picks
    cold = train_controller(t, TrainParams(**{**FAST, "steps": 1}), RewardWeights(), seed=0, progress=False)
    assert cold.summary["warm_start_final_loss"] is None
    assert not torch.equal(cold.controller.stage2[1].weight, result.controller.stage2[1].weight)


def test_the_probe_reward_replaces_the_cached_outcome_by_the_probe_prediction():
    fast = {**FAST, "steps": 40}
    runs = {share: train_controller(toy_tables(), TrainParams(**fast, probe_reward=share), RewardWeights(), seed=3,
                                    progress=False) for share in (0.0, 0.5, 1.0)}
    assert not torch.equal(runs[0.0].controller.stage2[1].weight, runs[1.0].controller.stage2[1].weight)
    # the mix is linear: the logged mean accuracy the reward saw moves with the share
    acc = {s: r.curves["accuracy"].to_numpy() for s, r in runs.items()}
    assert not np.array_equal(acc[0.0], acc[1.0])

    # where every configuration's training labels are constant, the probe predicts exactly them: same reward, same run
    def constant_tables():
        t = toy_tables()
        t.scores[:] = torch.tensor([float(k.tier == "high") for k in CONFIGS])
        return t

    a = train_controller(constant_tables(), TrainParams(**fast, probe_reward=0.0), RewardWeights(), seed=3,
                         progress=False)
    b = train_controller(constant_tables(), TrainParams(**fast, probe_reward=1.0), RewardWeights(), seed=3,
                         progress=False)
    for (name, x), (_, y) in zip(a.controller.state_dict().items(), b.controller.state_dict().items()):
        assert torch.equal(x, y), name
    with pytest.raises(ValueError, match="probe_reward=1.5"):
        TrainParams.from_params({"probe_reward": 1.5})
    with pytest.raises(ValueError, match="warm_start_steps=-1"):
        TrainParams.from_params({"warm_start_steps": -1})


def test_a_registered_term_and_loss_reach_training(monkeypatch):
    """The registries are what training reads: a term added at weight 0 leaves the run unchanged to the bit, and at a
    weight it changes it; a loss added to LOSSES is a valid ``train_controller.loss`` and is what the step runs."""
    fast = {**FAST, "steps": 30}

    def weights_of(weights: RewardWeights) -> dict[str, torch.Tensor]:
        return train_controller(toy_tables(), TrainParams(**fast), weights, seed=2, progress=False).controller.state_dict()

    plain = weights_of(RewardWeights())
    # prefer the high tier: the toy term reads only the configuration's size, so it is its own expectation
    monkeypatch.setitem(REWARD_TERMS, "size", RewardTerm("size", "zeta", +1, 0.0, lambda x: x.complexity.expand_as(
        x.accuracy)))
    assert all(torch.equal(x, plain[k]) for k, x in weights_of(RewardWeights()).items())
    assert not all(torch.equal(x, plain[k]) for k, x in weights_of(RewardWeights.from_params({"zeta": 5.0})).items())
    calls = []

    def constant(rewards: torch.Tensor, acts, p) -> torch.Tensor:
        calls.append(rewards.shape)
        return (acts.logp * 0).sum()

    monkeypatch.setitem(LOSSES, "still", GroupLoss(constant))
    result = train_controller(toy_tables(), TrainParams(**fast, loss="still"), RewardWeights(), seed=2, progress=False)
    assert calls == [(FAST["batch_size"], FAST["group_size"])] * 30 and result.summary["loss_kind"] == "still"

