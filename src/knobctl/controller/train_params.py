"""The ``train_controller`` section of params.yaml, checked when it is built: what a training run reads."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from knobctl.controller.losses import ADVANTAGE_SCALES, LOSSES, PAIR_WEIGHTS
from knobctl.controller.policy import ACTIVATIONS
from knobctl.controller.reward import LATENCY_PRICING
from knobctl.params import build, require, require_choice, require_int


@dataclass(frozen=True)
class RefreshParams:
    """``train_controller.online_refresh``: every ``every`` steps, ``fraction`` of that step's
    sampled (sample, configuration) cells are run on the real model and written back."""

    every: int = 100
    fraction: float = 0.05

    def __post_init__(self) -> None:
        require_int(self.every, "train_controller.online_refresh.every")
        require(0 < self.fraction <= 1, "train_controller.online_refresh.fraction", self.fraction,
                "it must be in (0, 1]")


LATENCY_SAMPLING = tuple(LATENCY_PRICING)


@dataclass(frozen=True)
class TrainParams:
    """The ``train_controller`` section of params.yaml."""

    steps: int = 750
    batch_size: int = 512
    group_size: int = 16
    lr: float = 1e-4
    weight_decay: float = 0.0
    loss: str = "pairwise"
    pair_weight: str = "sign"
    advantage_scale: str = "std"
    entropy_coef: float = 0.05
    fit_mask: bool = True
    hidden: int = 64
    activation: str = "relu"
    dropout: float = 0.0
    budget_mode: str = "relative"
    budget_range: tuple[float, float] = (-0.25, 1.1)
    eval_budgets: int = 8
    eval_fraction: float = 0.2
    log_every: int = 25
    online_refresh: RefreshParams | None = None
    latency_sampling: str = "spread"
    probe_l2: float = 100.0
    probe_reward: float = 0.75
    warm_start_steps: int = 0
    num_threads: int = 1

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "hidden", "eval_budgets", "log_every"):
            require_int(getattr(self, name), f"train_controller.{name}")
        require_int(self.group_size, "train_controller.group_size", 2)
        require_int(self.num_threads, "train_controller.num_threads", 0)
        require_choice(self.loss, "train_controller.loss", LOSSES)
        require_choice(self.pair_weight, "train_controller.pair_weight", PAIR_WEIGHTS)
        require_choice(self.advantage_scale, "train_controller.advantage_scale", ADVANTAGE_SCALES)
        require_choice(self.activation, "train_controller.activation", ACTIVATIONS)
        require(isinstance(self.fit_mask, bool), "train_controller.fit_mask", self.fit_mask,
                "give true (choose among configurations whose estimated latency fits) or false (the networks alone "
                "learn the budget boundary)")
        require_choice(self.budget_mode, "train_controller.budget_mode", ("relative", "absolute"))
        require(len(self.budget_range) == 2 and self.budget_range[0] < self.budget_range[1],
                "train_controller.budget_range", list(self.budget_range), "give [low, high] with low < high")
        require(0 < self.lr < 1, "train_controller.lr", self.lr, "it must lie in (0, 1), e.g. 1e-4")
        require(0 < self.eval_fraction < 1, "train_controller.eval_fraction", self.eval_fraction,
                "it must lie in (0, 1)")
        require(0 <= self.dropout < 1, "train_controller.dropout", self.dropout, "it must lie in [0, 1)")
        require(self.entropy_coef >= 0, "train_controller.entropy_coef", self.entropy_coef, "it must be >= 0")
        require(self.weight_decay >= 0, "train_controller.weight_decay", self.weight_decay, "it must be >= 0")
        require_choice(self.latency_sampling, "train_controller.latency_sampling", LATENCY_SAMPLING)
        require(self.probe_l2 > 0, "train_controller.probe_l2", self.probe_l2, "use a positive penalty such as 100")
        require(not isinstance(self.probe_reward, bool) and 0 <= self.probe_reward <= 1,
                "train_controller.probe_reward", self.probe_reward,
                "give the probe's share of the accuracy the reward sees, in [0, 1] (0 = the cached outcome alone)")
        require_int(self.warm_start_steps, "train_controller.warm_start_steps", 0)

    @classmethod
    def from_params(cls, section: Mapping[str, Any]) -> TrainParams:
        return build(cls, section, "train_controller")
