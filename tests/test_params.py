"""params.yaml read one way: the builder, its errors, and code defaults equal to params.yaml."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from knobctl.base.evaluation import EvalParams
from knobctl.base.importance import ImportanceParams
from knobctl.base.training import TrainBaseParams
from knobctl.controller.reward import RewardWeights
from knobctl.controller.tradeoff import TradeoffParams
from knobctl.controller.training import RefreshParams, TrainParams
from knobctl.knobs import KnobGrid
from knobctl.latency.estimator import EstimatorParams
from knobctl.latency.profiling import ProfileParams
from knobctl.model.presets import ModelParams, TinyDims
from knobctl.params import (
    SECTIONS,
    ParamsError,
    apply_overrides,
    build,
    check_keys,
    load_params,
    require_int,
    section,
    seed_of,
)
from knobctl.table.rollouts import RolloutParams
from knobctl.validate.measure import ValidateParams
from knobctl.vqa.sources import DataParams

ROOT = Path(__file__).resolve().parents[1]
CLASSES = {
    "knobs": KnobGrid, "model": ModelParams, "prepare_data": DataParams, "train_base": TrainBaseParams,
    "eval_base": EvalParams, "block_importance": ImportanceParams, "profile_latency": ProfileParams,
    "fit_estimator": EstimatorParams, "accuracy_table": RolloutParams, "tradeoff": TradeoffParams,
    "reward": RewardWeights, "train_controller": TrainParams,
    "validate": ValidateParams,
}
OPTIONAL = {"prepare_data": {"vqav2_train", "vqav2_test", "scenes"}}  # only for source: vqav2 / scenes


def test_every_section_has_a_builder_and_code_defaults_equal_params_yaml():
    params = load_params(ROOT / "params.yaml")
    assert set(params) == set(SECTIONS) and set(CLASSES) == set(SECTIONS) - {"seed"}
    for name, cls in CLASSES.items():
        assert cls.from_params(params[name]) == cls(), f"{name}: params.yaml and the code defaults differ"
        keys = cls().as_params() if cls is RewardWeights else cls.__dataclass_fields__  # reward: keyed by its terms
        missing = set(keys) - set(params[name]) - OPTIONAL.get(name, set())
        assert not missing, f"params.yaml's {name} section omits {sorted(missing)}"


@pytest.mark.parametrize(("name", "values", "message"), [
    ("train_controller", {"lr": "fast"}, "train_controller.lr='fast': expected a number"),
    ("train_controller", {"lr": 2.0}, "train_controller.lr=2.0: it must lie in (0, 1)"),
    ("train_controller", {"loss": "ppo"}, "train_controller.loss='ppo': allowed: pairwise, grpo"),
    ("train_controller", {"online_refresh": {"every": 10, "fraction": 2}},
     "train_controller.online_refresh.fraction=2.0: it must be in (0, 1]"),
    ("train_controller", {"online_refresh": {"evry": 10}}, "train_controller.online_refresh: unknown keys ['evry']"),
    ("prepare_data", {"scenes": {"image_size": 30}}, "prepare_data.scenes.image_size=30: use an integer >= 32"),
    ("prepare_data", {"scenes": {"shapes": ["circle", "star"]}}, "prepare_data.scenes.shapes=['circle', 'star']"),
    ("eval_base", {"batch_size": "abc"}, "eval_base.batch_size='abc': expected an integer"),
    ("eval_base", {"batchsize": 8}, "eval_base: unknown keys ['batchsize']"),
    ("eval_base", {"device": "gpu"}, "eval_base.device='gpu': allowed: auto"),
    ("train_base", {"steps": 0}, "train_base.steps=0: use an integer >= 1"),
    ("train_base", {"steps": True}, "train_base.steps=True: expected an integer"),
    ("model", {"dims": {"hidden_size": 30, "num_heads": 4}}, "model.dims.hidden_size=30: must be a multiple of num_heads"),
    ("model", {"dims": {"hiden_size": 30}}, "model.dims: unknown keys ['hiden_size']"),
    ("model", {"block_order": 3.5}, "model.block_order=3.5: expected a string or a list of an integer or null"),
    ("model", {"block_order": [0, "1"]}, "model.block_order=[0, '1']: expected a string or a list"),
    ("block_importance", {"split": "test"}, "block_importance.split='test': allowed: train, val"),
    ("reward", {"gamma": -1}, "reward.gamma=-1.0: it must be >= 0"),
    ("validate", {"calibrate": "yes"}, "validate.calibrate='yes': write true or false"),
    ("profile_latency", {"text_tokens": [4, 4]}, "profile_latency.text_tokens=[4, 4]: it repeats a value"),
    ("accuracy_table", {"split": "tset"}, "accuracy_table.split='tset': allowed: train, val, test"),
    ("accuracy_table", {"executor": "dask"}, "accuracy_table.executor='dask': allowed: local, ray"),
    ("accuracy_table", {"ray": {"num_worker": 2}}, "accuracy_table.ray: unknown keys ['num_worker']"),
    ("accuracy_table", {"ray": {"num_gpus_per_worker": -1}}, "accuracy_table.ray.num_gpus_per_worker=-1.0"),
    ("model", {"source": ""}, "model.source='': use null (train the tiny preset) or the path"),
    ("model", {"tier_tokens": {"ultra": 64}}, "model.tier_tokens={'ultra': 64}: use null or a mapping of tiers"),
    ("model", {"tier_tokens": {"low": 2}}, "model.tier_tokens.low=2: use an integer >= 4"),
    ("knobs", {"top_k": [4, 9.5]}, "knobs.top_k[1]=9.5: expected an integer"),
])
def test_a_bad_value_names_section_key_value_and_what_is_allowed(name, values, message):
    with pytest.raises(ParamsError) as err:
        CLASSES[name].from_params(values)
    assert message in str(err.value)


def test_numbers_in_exponent_form_are_numbers():
    # PyYAML (YAML 1.1) reads 1e-4 as the string '1e-4'; the builder reads it as the number it is.
    values = yaml.safe_load("lr: 1e-4\nentropy_coef: 5E-2\n")
    assert values["lr"] == "1e-4"
    p = TrainParams.from_params(values)
    assert p.lr == 1e-4 and p.entropy_coef == 0.05 and isinstance(p.lr, float)
    assert TrainBaseParams.from_params({"lr": "2e-3"}).lr == 0.002


def test_building_directly_validates_too():
    with pytest.raises(ParamsError, match=r"train_controller.group_size=1: use an integer >= 2"):
        TrainParams(group_size=1)
    with pytest.raises(ParamsError, match="train_controller.online_refresh.every=0"):
        RefreshParams(every=0)
    with pytest.raises(ParamsError, match=r"model.dims.top_k=9: at most num_experts \(8\)"):
        TinyDims(top_k=9)


def test_builder_freezes_lists_converts_nested_sections_and_keeps_nulls():
    @dataclass(frozen=True)
    class P:
        sizes: tuple[int, ...] | None = None
        pair: tuple[float, float] = (0.0, 1.0)
        name: str = "x"

    assert build(P, {"sizes": [1, 2], "pair": [0, "1e3"]}, "s") == P(sizes=(1, 2), pair=(0.0, 1000.0))
    assert build(P, {"sizes": None}, "s") == P()
    with pytest.raises(ParamsError, match=r"s.pair=\[1\]: expected a list of 2"):
        build(P, {"pair": [1]}, "s")
    with pytest.raises(ParamsError, match=r"s: unknown keys \['size'\]"):
        build(P, {"size": [1]}, "s")
    p = TrainParams.from_params({"online_refresh": {"every": 5}})
    assert p.online_refresh == RefreshParams(every=5, fraction=0.05)
    assert ModelParams.from_params({"dims": {"hidden_size": 32, "num_heads": 2}}).dims.hidden_size == 32


def test_params_file_rejects_unknown_sections_and_stages_reject_missing_ones(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("seed: 0\nknobs: {}\ntrain_bsae: {steps: 3}\n")
    with pytest.raises(ParamsError, match=r"unknown top-level keys \['train_bsae'\]; the sections are seed, knobs"):
        load_params(path)
    path.write_text("seed: 0\nknobs: {}\n")
    params = load_params(path)
    with pytest.raises(ParamsError, match="has no 'train_base' section"):
        section(params, "train_base", path)
    assert section({"a": None}, "a") == {}
    with pytest.raises(ParamsError, match="must be a mapping"):
        section({"a": [1]}, "a")
    with pytest.raises(ParamsError, match="has no 'seed'"):
        seed_of({}, path)
    with pytest.raises(ParamsError, match="seed=-1: use a non-negative integer"):
        seed_of({"seed": -1}, path)


def test_overrides_parse_yaml_values_without_touching_the_section():
    own = {"rounds": 5, "dtype": "float32"}
    out = apply_overrides(own, ["rounds=3", "text_tokens=[4, 8]", "experts_implementation=null"], "profile_latency")
    assert out == {"rounds": 3, "dtype": "float32", "text_tokens": [4, 8], "experts_implementation": None}
    assert own == {"rounds": 5, "dtype": "float32"}
    with pytest.raises(ParamsError, match="KEY=VALUE"):
        apply_overrides({}, ["rounds"], "profile_latency")


def test_unknown_keys_are_named_with_the_allowed_ones():
    with pytest.raises(ParamsError, match=r"knobs: unknown keys \['topk'\]; allowed: \['num_blocks', 'tiers', 'top_k'\]"):
        check_keys({"topk": [4]}, ("tiers", "top_k", "num_blocks"), "knobs")
    check_keys({"tiers": ["low"]}, ("tiers", "top_k", "num_blocks"), "knobs")


def test_require_int_rejects_bools_floats_and_small_values():
    require_int(3, "profile_latency.rounds")
    require_int(0, "profile_latency.warmup_rounds", 0)
    for bad in (True, 2.0, "3", 0):
        with pytest.raises(ParamsError, match=r"profile_latency\.rounds=.*use an integer >= 1"):
            require_int(bad, "profile_latency.rounds")


@pytest.mark.parametrize("cls,name,values,where", [
    (RewardWeights, "reward", {"beta": float("nan")}, r"reward\.beta=nan"),
    (RewardWeights, "reward", {"epsilon": float("inf")}, r"reward\.epsilon=inf"),
    (RewardWeights, "reward", {"gamma": "1e999"}, r"reward\.gamma=inf"),
    (TrainParams, "train_controller", {"budget_range": [0, float("inf")]}, r"train_controller\.budget_range\[1\]=inf"),
    (ValidateParams, "validate", {"budgets": [10.0, float("inf")]}, r"validate\.budgets\[1\]=inf"),
    (TrainBaseParams, "train_base", {"lr": float("nan")}, r"train_base\.lr=nan"),
])
def test_nan_and_infinity_are_refused_wherever_a_number_is_read(cls, name, values, where):
    """YAML's .nan and .inf (or 1e999) trained a controller whose every weight was NaN: the builder refuses them."""
    with pytest.raises(ParamsError, match=where + r": expected a finite number"):
        build(cls, values, name)
    parsed = yaml.safe_load("a: .nan\nb: .inf\nc: -.inf\n")
    for value in parsed.values():
        with pytest.raises(ParamsError, match="finite"):
            build(RewardWeights, {"alpha": value}, "reward")


def test_reward_weights_are_bounded():
    with pytest.raises(ParamsError, match=r"reward\.beta=1e\+308: every weight is a finite number in \[-1000, 1000\]"):
        build(RewardWeights, {"beta": 1e308}, "reward")
    assert build(RewardWeights, {"beta": -1000.0}, "reward")["latency"] == -1000.0
