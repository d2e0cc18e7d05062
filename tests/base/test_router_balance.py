"""The router load-balancing loss against hand-computed values, and its recorder on a real model."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from knobctl.base.router_balance import balance_loss, load_balancing_loss, router_logits_recorded
from knobctl.base.training import batch_loss, encode_split, train_base
from knobctl.knobs import KnobConfig
from knobctl.model.presets import ModelParams
from tests.base.conftest import DIMS, GRID, quick


def test_uniform_routing_scores_one():
    ln3 = math.log(3.0)
    # Each token prefers a different expert: routed shares 0.5 / 0.5, mean probabilities 0.5 / 0.5.
    assert float(load_balancing_loss(torch.tensor([[ln3, 0.0], [0.0, ln3]]), top_k=1)) == pytest.approx(1.0)
    # Top-k of all the experts routes every token everywhere: 1 whatever the probabilities.
    assert float(load_balancing_loss(torch.tensor([[ln3, 0.0], [ln3, 0.0]]), top_k=2)) == pytest.approx(1.0)


def test_collapsed_routing_costs_more():
    ln3 = math.log(3.0)
    # Both tokens go to expert 0 (share 1) whose mean probability is 0.75: 2 * 1 * 0.75.
    assert float(load_balancing_loss(torch.tensor([[ln3, 0.0], [ln3, 0.0]]), top_k=1)) == pytest.approx(1.5)
    # Probabilities 0.4 / 0.3 / 0.2 / 0.1, top 2: shares 0.5 / 0.5 / 0 / 0 -> 4 * (0.5 * 0.4 + 0.5 * 0.3).
    logits = torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.1]]))
    assert float(load_balancing_loss(logits, top_k=2)) == pytest.approx(1.4)


def test_gradient_flows_through_the_probabilities_only():
    logits = torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.1]])).requires_grad_()
    load_balancing_loss(logits, top_k=2).backward()
    # d/dz_j of 4 * sum_e f_e p_e = 4 * p_j * (f_j - sum_e f_e p_e): pushes the routed experts down.
    p, f = torch.tensor([0.4, 0.3, 0.2, 0.1]), torch.tensor([0.5, 0.5, 0.0, 0.0])
    expected = 4 * p * (f - (f * p).sum())
    assert torch.allclose(logits.grad[0], expected, atol=1e-6)


def test_recorder_sees_every_block_run_with_its_top_k(train_df):
    dims = dataclasses.replace(DIMS, num_experts=16)
    rt, _ = train_base(train_df, GRID, ModelParams(dims=dims), quick(steps=1, batch_size=4), seed=0)
    data = encode_split(rt, train_df, size=64)
    with torch.no_grad(), router_logits_recorded(rt.routers) as seen:
        batch_loss(rt, data, np.arange(3), KnobConfig("high", 4, 12))
    assert len(seen) == 12  # blocks 0..11 ran, the rest were skipped
    assert [k for _, k in seen] == [8] + [4] * 11  # the decision block keeps the model's own top-k
    assert all(logits.shape[-1] == 16 for logits, _ in seen)
    assert 1.0 <= float(balance_loss(seen)) <= 16.0
    assert not rt.routers[0]._forward_hooks  # the hooks are gone after the scope


def test_aux_loss_changes_training_only_when_set(train_df):
    dims = dataclasses.replace(DIMS, num_experts=16)
    plain, _ = train_base(train_df, GRID, ModelParams(dims=dims), quick(steps=3, batch_size=4), seed=0)
    zero, _ = train_base(train_df, GRID, ModelParams(dims=dims), quick(steps=3, batch_size=4, router_aux_loss=0.0),
                         seed=0)
    aux, _ = train_base(train_df, GRID, ModelParams(dims=dims), quick(steps=3, batch_size=4, router_aux_loss=1.0),
                        seed=0)
    a, z, b = plain.model.state_dict(), zero.model.state_dict(), aux.model.state_dict()
    assert all(torch.equal(a[k], z[k]) for k in a)
    gates = [k for k in a if k.endswith("mlp.gate.weight")]
    assert gates and any(not torch.equal(a[k], b[k]) for k in gates)


def test_negative_weight_is_refused():
    with pytest.raises(Exception, match="router_aux_loss"):
        quick(router_aux_loss=-0.1)
