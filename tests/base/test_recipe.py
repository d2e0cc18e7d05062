from collections import Counter

import pytest
import torch

from knobctl.base.recipe import BatchKnobs, draw_batch_knobs, drop_probabilities
from knobctl.knobs import KnobConfig, KnobGrid

GRID = KnobGrid()


def draws(n: int, **kw) -> list[BatchKnobs]:
    gen = torch.Generator().manual_seed(0)
    return [draw_batch_knobs("pretrained", GRID, 16, gen, **kw) for _ in range(n)]


def test_uniform_is_the_draw_the_project_always_made():
    gen, ref = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    configs = GRID.configs()
    for _ in range(50):
        got = draw_batch_knobs("uniform", GRID, 16, gen)
        assert got == BatchKnobs(configs[int(torch.randint(0, len(configs), (1,), generator=ref))])


def test_drop_probability_rises_linearly_from_zero_at_block_0():
    p = drop_probabilities(16, 0.3)
    assert p[0] == 0 and p[15] == pytest.approx(0.3) and p[5] == pytest.approx(0.1)


def test_pretrained_runs_the_full_configuration_without_drop_or_reduced_k():
    for d in draws(200, layer_drop=0.0, reduced_topk_share=0.0, tier_weights={"low": 0, "medium": 0, "high": 1}):
        assert d.knobs == KnobConfig("high", 8, 16) and d.blocks == tuple(range(16))


def test_pretrained_layer_drop_keeps_block_0_and_the_grid_floor_and_drops_deep_blocks_more():
    ds = draws(4000, layer_drop=0.5)
    dropped = Counter(i for d in ds for i in set(range(16)) - set(d.blocks))
    assert all(0 in d.blocks and len(d.blocks) >= 12 for d in ds)
    assert dropped[0] == 0 and dropped[1] < dropped[8] < dropped[15]
    # the last block is skipped about half the time (a little less where the 4-block cap binds)
    assert 0.40 < dropped[15] / len(ds) <= 0.5
    assert max(16 - len(d.blocks) for d in ds) == 4


def test_pretrained_reduced_topk_share_and_tier_weights():
    ds = draws(4000, reduced_topk_share=0.25, tier_weights={"low": 1, "medium": 1, "high": 2})
    ks = Counter(d.knobs.top_k for d in ds)
    assert ks[8] / len(ds) == pytest.approx(0.75, abs=0.03)
    assert set(ks) == {4, 5, 6, 7, 8} and all(ks[k] / len(ds) == pytest.approx(0.0625, abs=0.02) for k in (4, 5, 6, 7))
    tiers = Counter(d.knobs.tier for d in ds)
    assert tiers["high"] / len(ds) == pytest.approx(0.5, abs=0.03)
    assert tiers["low"] / len(ds) == pytest.approx(0.25, abs=0.03)


def test_draws_depend_only_on_the_generator():
    assert draws(100, layer_drop=0.3, reduced_topk_share=0.2) == draws(100, layer_drop=0.3, reduced_topk_share=0.2)


def test_unknown_sampling_is_refused():
    with pytest.raises(ValueError, match="uniform, pretrained"):
        draw_batch_knobs("early_exit", GRID, 16, torch.Generator())
