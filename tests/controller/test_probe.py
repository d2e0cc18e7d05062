"""The supervised probe learns which configuration a feature calls for, and picks among fitting ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from knobctl.controller.probe import Probe, fit_probe, probe_choices
from knobctl.controller.tables import CacheTables, complexity_of
from knobctl.knobs import KnobGrid

CONFIGS = tuple(KnobGrid(tiers=("low", "high"), top_k=(8,), num_blocks=(16,)).configs())  # low, high


def test_probe_learns_a_feature_that_decides_which_tier_is_right_and_chooses_by_it():
    n = 400
    gen = torch.Generator().manual_seed(0)
    hard = torch.rand(n, generator=gen) < 0.5  # [S]: the image needs the high tier
    vision = torch.randn(n, 2, 3, generator=gen)
    vision[:, :, 0] += 6 * hard[:, None].float()  # the vision feature says so at both tiers
    scores = torch.stack([(~hard).float(), torch.ones(n)], 1)  # [S, 2]: low right only on easy images
    t = CacheTables(sample_ids=np.array([f"s{i}" for i in range(n)]), question_types=np.array(["count"] * n),
                    configs=CONFIGS, tiers=("low", "high"), scores=scores, latency_ms=torch.tensor([[10.0, 20.0]] * n),
                    language=torch.randn(n, 3, generator=gen), vision=vision, complexity=complexity_of(CONFIGS))
    prob = fit_probe(t, torch.arange(300))  # [S, C]
    ev = torch.arange(300, 400)
    assert ((prob[ev, 0] > 0.5) == ~hard[ev]).float().mean() > 0.95
    assert torch.all(prob[:, 1] == 1.0)  # always right at high: a constant label, nothing to fit
    # both fit: high is rated 1.0, at least any low prediction
    both = probe_choices(prob[ev], t.latency_ms[ev], 25.0)
    assert torch.equal(both, torch.ones(100, dtype=torch.long))  # high is rated 1.0 >= any low prediction
    # only low fits: it is forced, as the fastest
    assert torch.equal(probe_choices(prob[ev], t.latency_ms[ev], 15.0), torch.zeros(100, dtype=torch.long))
    # nothing fits: the fastest
    assert torch.equal(probe_choices(prob[ev], t.latency_ms[ev], 5.0), torch.zeros(100, dtype=torch.long))


def test_a_saved_probe_predicts_what_the_fitted_one_does(tmp_path):
    n = 60
    gen = torch.Generator().manual_seed(1)
    vision = torch.randn(n, 2, 3, generator=gen)
    scores = torch.stack([(vision[:, 0, 0] > 0).float(), torch.ones(n)], 1)  # [S, 2]
    t = CacheTables(sample_ids=np.array([f"s{i}" for i in range(n)]), question_types=np.array(["count"] * n),
                    configs=CONFIGS, tiers=("low", "high"), scores=scores, latency_ms=torch.tensor([[10.0, 20.0]] * n),
                    language=torch.randn(n, 3, generator=gen), vision=vision, complexity=complexity_of(CONFIGS))
    probe = Probe.fit(t, torch.arange(40))
    probe.save(tmp_path)
    again = Probe.load(tmp_path)
    assert torch.equal(again.predict(t.language, t.vision), probe.predict(t.language, t.vision))
    assert torch.equal(probe.predict(t.language, t.vision), fit_probe(t, torch.arange(40)))
    assert bool(again.constant[1]) and not bool(again.constant[0])
    with pytest.raises(FileNotFoundError, match="dvc repro train_controller"):
        Probe.load(tmp_path / "nowhere")
