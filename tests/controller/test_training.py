"""Controller training on hand-made tables: it learns per-sample choices, is deterministic, and
fetches or refreshes cells online."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from knobctl.controller.losses import RewardWeights
from knobctl.controller.tables import CacheTables, complexity_of
from knobctl.controller.training import RefreshParams, TrainParams, sample_budgets, split_samples, train_controller
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


@pytest.mark.parametrize(("loss", "fit_mask"), [("pairwise", True), ("grpo", True), ("pairwise", False)])
def test_training_learns_per_sample_choices_that_beat_static(loss, fit_mask):
    result = train_controller(toy_tables(), TrainParams(**FAST, loss=loss, fit_mask=fit_mask), RewardWeights(), seed=0,
                              progress=False)
    assert result.controller.config.fit_mask == fit_mask
    tight = [e for e in result.evaluation if 11.3 <= e["budget_ms"] < 16]  # A's high tier fits, B's does not
    assert tight
    for e in tight:
        assert e["static_config"].startswith("low") and e["static_accuracy"] < 0.6  # loses every A
        assert e["controller_accuracy"] >= 0.9 and e["controller_violation_rate"] <= (0.0 if fit_mask else 0.1)
        assert e["oracle_accuracy"] == 1.0 and e["gain_over_static"] > 0.3
        assert 0.2 < e["gain_ci95_low"] <= e["gain_over_static"] <= e["gain_ci95_high"]
    assert result.curves["reward"].iloc[-1] > 1.3  # 1.5 = right and in budget everywhere
    assert result.summary["rollouts"] == 400 * 32 * 5 and 0 <= result.summary["zero_variance_share"] <= 1


def test_training_is_deterministic_given_the_seed():
    a = train_controller(toy_tables(), TrainParams(**{**FAST, "steps": 60}), RewardWeights(), seed=5, progress=False)
    b = train_controller(toy_tables(), TrainParams(**{**FAST, "steps": 60}), RewardWeights(), seed=5, progress=False)
    pd.testing.assert_frame_equal(a.curves, b.curves)
    for (name, x), (_, y) in zip(a.controller.state_dict().items(), b.controller.state_dict().items()):
        assert torch.equal(x, y), name
    c = train_controller(toy_tables(), TrainParams(**{**FAST, "steps": 60}), RewardWeights(), seed=6, progress=False)
    assert not a.curves.equals(c.curves)


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
