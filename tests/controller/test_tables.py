"""The cache as lookup tensors: complexity over the grid, budgets, and pricing by the estimator."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest
import torch

from knobctl.controller.tables import FIT_MARGIN, budgets_between, build_tables, complexity_of
from knobctl.knobs import KnobConfig
from knobctl.table.accuracy_table import AccuracyTable
from tests.controller.test_training import CONFIGS, toy_tables


def test_complexity_scales_each_knob_position_over_the_grid():
    assert complexity_of(CONFIGS).tolist() == pytest.approx([0, 1 / 3, 1 / 3, 2 / 3, 1 / 3, 2 / 3, 2 / 3, 1])


def test_budgets_span_the_scaled_range_where_a_choice_exists():
    t = toy_tables(8)
    assert budgets_between(t.latency_ms[torch.arange(8)], 3)[0] == 10.0
    lat = torch.tensor([[10.0, 23.0], [10.0, 23.0]])
    assert budgets_between(lat, 3) == (10.0, round((10.0 + 23.0 * 1.05) / 2, 2), round(23.0 * 1.05, 2))
    assert budgets_between(lat, 2, scale=2.0) == (20.0, round(46.0 * 1.05, 2))


class FakeEstimator:
    """Prices a request as text_tokens * 100 + output_tokens (+ 1000 for high), to check the inputs."""

    tiers: ClassVar = {"low": {"prompt_tokens": 3}, "high": {"prompt_tokens": 18}}

    def predict_total(self, tier, top_k, num_blocks, text_tokens, output_tokens):
        tier = np.asarray(tier)
        return (np.asarray(text_tokens) * 100 + np.asarray(output_tokens) + 1000 * (tier == "high")).ravel()


def test_build_tables_prices_each_sample_and_leaves_absent_configs_nan():
    present = [k for k in CONFIGS if k != KnobConfig("high", 8, 16)]
    table = AccuracyTable(
        sample_ids=np.array(["a", "b"]), question_types=np.array(["x", "y"]), configs=tuple(present),
        tiers=("low", "high"), scores=np.ones((2, 7), dtype=np.float32),
        input_tokens=np.array([[3 + 5 if k.tier == "low" else 18 + 5 for k in present],
                               [3 + 2 if k.tier == "low" else 18 + 2 for k in present]]),
        output_tokens=np.full((2, 7), 2), language=np.zeros((2, 4), np.float32), vision=np.zeros((2, 2, 3), np.float32))
    t = build_tables(table, FakeEstimator(), list(CONFIGS))
    assert t.latency_ms[0, 0].item() == 502 and t.latency_ms[1, 4].item() == 1202
    assert torch.isnan(t.scores[:, 7]).all() and t.latency_ms[0, 7].item() == 1502  # priced with the row's median
    # the fit table prices lengths 1 .. 5 + FIT_MARGIN at the typical answer length, as a request would be
    assert t.text_tokens.tolist() == [5, 2] and t.fit_text_low == 1 and len(t.fit_latency_ms) == 5 + FIT_MARGIN
    assert t.fit_latency_ms[4, 0].item() == 502 and t.fit_latency_ms[1, 7].item() == 1202
