import pytest

from knobctl.knobs import KnobConfig, KnobGrid
from knobctl.params import ParamsError


def test_default_grid_has_75_configs_in_stable_order():
    grid = KnobGrid.from_params({})
    configs = grid.configs()
    assert len(configs) == len(grid) == 75
    assert configs[0] == KnobConfig("low", 4, 12)
    assert configs[-1] == KnobConfig("high", 8, 16)
    assert len(set(configs)) == 75
    assert grid.full == KnobConfig("high", 8, 16) and grid.smallest == KnobConfig("low", 4, 12)


def test_corners_are_eight_distinct_extremes():
    corners = KnobGrid().corners()
    assert len(corners) == 8
    assert corners[0] == KnobConfig("high", 8, 16)
    assert {c.top_k for c in corners} == {4, 8} and {c.num_blocks for c in corners} == {12, 16}


def test_grid_from_params_orders_tiers_and_sorts_values():
    grid = KnobGrid.from_params({"tiers": ["high", "low"], "top_k": [8, 4], "num_blocks": [16]})
    assert grid.tiers == ("low", "high") and grid.top_k == (4, 8) and grid.num_blocks == (16,)
    assert len(grid.configs()) == 4


@pytest.mark.parametrize(
    "section, fragment",
    [
        ({"tiers": ["ultra"]}, "unknown tier 'ultra'"),
        ({"top_k": [0, 4]}, "knobs.top_k=[0, 4]: every entry must be a positive integer (0 is not)"),
        ({"top_k": []}, "non-empty list"),
        ({"top_k": "4"}, "knobs.top_k='4': expected a list"),
        ({"num_blocks": [12, 12]}, "duplicates"),
        ({"bogus": 1}, "unknown keys ['bogus']"),
    ],
)
def test_bad_grid_params_name_the_value(section, fragment):
    with pytest.raises(ValueError) as err:
        KnobGrid.from_params(section)
    assert fragment in str(err.value)


def test_unknown_tier_names_allowed_tiers():
    with pytest.raises(ValueError, match="unknown tier 'huge'; allowed tiers: low, medium, high"):
        KnobConfig("huge", 4, 12)


@pytest.mark.parametrize(
    "cfg, fragment",
    [
        (KnobConfig("high", 9, 16), "top_k=9 is outside 1..8"),
        (KnobConfig("high", 8, 17), "num_blocks=17 is outside 1..16"),
    ],
)
def test_validate_for_model_shape(cfg, fragment):
    with pytest.raises(ValueError, match=fragment):
        cfg.validate_for(num_experts=8, num_layers=16, tiers=("low", "medium", "high"))


def test_grid_the_model_cannot_run():
    grid = KnobGrid(top_k=(4, 8, 10))
    with pytest.raises(ParamsError, match=r"knobs.top_k=\[4, 8, 10\]: m has only 8 experts per MoE block"):
        grid.validate_for(num_experts=8, num_layers=16, tiers=("low", "medium", "high"), source="m")
    with pytest.raises(ParamsError, match=r"knobs.num_blocks=\[12, 17\]: the model has only 16 blocks"):
        KnobGrid(num_blocks=(12, 17)).validate_for(num_experts=8, num_layers=16, tiers=("low", "medium", "high"))
    with pytest.raises(ParamsError, match=r"knobs.tiers=\['low', 'medium', 'high'\]: the model defines only low, high"):
        KnobGrid().validate_for(num_experts=8, num_layers=16, tiers=("low", "high"))
