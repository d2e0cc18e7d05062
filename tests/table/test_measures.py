"""The shared measures on hand-made score matrices: one convention for missing cells, the oracle, the best static
configuration, full and smallest, and the same numbers from a table's rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from knobctl.knobs import KnobConfig, KnobGrid
from knobctl.table.measures import (
    FIT_SHARE,
    best_static,
    config_accuracy,
    fits,
    full_index,
    oracle_choice,
    oracle_scores,
    score_matrix,
    signed,
    smallest_index,
    static_fits,
)

NAN = float("nan")
# 3 samples x 3 configurations; sample 2's middle cell is missing (an error)
SCORES = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0], [0.0, NAN, 0.3]])
LATENCY = np.array([[10.0, 20.0, 30.0]] * 3)


def test_a_missing_cell_is_a_wrong_answer_everywhere():
    assert config_accuracy(SCORES).tolist() == pytest.approx([1 / 3, 1 / 3, 2.3 / 3])
    assert oracle_scores(SCORES).tolist() == [1.0, 1.0, 0.3]
    only_missing = np.array([[NAN, 0.0]])
    assert oracle_scores(only_missing).tolist() == [0.0] and oracle_choice(only_missing).tolist() == [0]


def test_the_oracle_takes_each_samples_best_fitting_configuration():
    assert oracle_choice(SCORES).tolist() == [0, 1, 2]  # ties go to the first in grid order
    assert oracle_choice(SCORES, LATENCY, 25.0).tolist() == [0, 1, 0]
    assert oracle_scores(SCORES, LATENCY, 25.0).tolist() == [1.0, 1.0, 0.0]
    assert oracle_choice(SCORES, LATENCY, 5.0).tolist() == [-1, -1, -1]  # nothing fits: no choice, score 0
    assert oracle_scores(SCORES, LATENCY, 5.0).tolist() == [0.0, 0.0, 0.0]
    per_sample = np.array([[25.0], [15.0], [35.0]])  # one budget per sample
    assert oracle_choice(SCORES, LATENCY, per_sample).tolist() == [0, 0, 2]


def test_torch_tensors_are_measured_as_arrays_and_a_float32_budget_fits_its_own_latency():
    lat = torch.tensor([[27.53, 30.0]])  # float32: 27.530000686...
    assert fits(lat, 27.53).tolist() == [[True, False]]  # compared in float32, as torch compares
    assert oracle_choice(torch.tensor([[0.5, 1.0]]), lat, 27.53).tolist() == [0]
    assert config_accuracy(torch.tensor(SCORES, dtype=torch.float32)).dtype == np.float64


def test_best_static_fits_the_budget_for_most_samples():
    acc = config_accuracy(SCORES)  # 1/3, 1/3, 0.767
    assert best_static(acc) == 2 and best_static(acc, LATENCY, 30.0) == 2
    assert best_static(acc, LATENCY, 25.0) == 0  # a tie between 0 and 1: the first
    assert best_static(acc, LATENCY, 5.0) is None
    lat = np.array([[10.0, 20.0]] * 19 + [[10.0, 40.0]])  # configuration 1 fits 95% of 20 samples at 30 ms
    assert static_fits(lat, 30.0).tolist() == [True, True] and FIT_SHARE == 0.95
    assert static_fits(np.vstack([lat, [[10.0, 40.0]]]), 30.0).tolist() == [True, False]  # 19 of 21


def test_full_and_smallest_by_knob_order_whatever_the_column_order():
    configs = list(reversed(KnobGrid(tiers=("low", "high"), top_k=(4, 8), num_blocks=(12, 16)).configs()))
    assert configs[full_index(configs)] == KnobConfig("high", 8, 16)
    assert configs[smallest_index(configs)] == KnobConfig("low", 4, 12)
    # the tier outranks the other knobs: medium/k8/b16 is smaller than high/k4/b12
    some = [KnobConfig("medium", 8, 16), KnobConfig("high", 4, 12)]
    assert full_index(some) == 1 and smallest_index(some) == 0


def test_score_matrix_from_table_rows():
    rows = pd.DataFrame({"sample_id": ["b", "b", "a", "a"], "config": ["x", "y", "x", "y"],
                         "score": [1.0, 0.0, 0.5, 1.0], "error": [None, None, "E", None]})
    m = score_matrix(rows)
    assert list(m.index) == ["b", "a"] and list(m.columns) == ["x", "y"]  # the table's order
    assert np.isnan(m.loc["a", "x"]) and m.loc["b", "x"] == 1.0  # the error row's score is missing
    assert list(score_matrix(rows, ["y", "z"]).columns) == ["y", "z"]  # a configuration the table lacks: missing
    assert config_accuracy(score_matrix(rows, ["y", "z"])).tolist() == [0.5, 0.0]


def test_signed():
    assert signed(0.01234) == "+0.0123" and signed(-0.5, 2) == "-0.50" and signed(None) == "-"
