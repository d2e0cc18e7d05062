"""How far a request's real latency strays from its estimate, per configuration, from the latency profile.

The estimator predicts a configuration's *median* latency. A live request on a shared CPU lands
anywhere in a wide band around it (the default profile's repeats have a CV of about 18%), so a
configuration whose estimate just fits its budget misses it about half the time. Controller
training with ``train_controller.latency_sampling: spread`` prices each sampled configuration at
its estimate times a ratio drawn uniformly between that configuration's p10/median and p90/median
in the profile (:func:`draw_latency`): the violation (gamma) and efficiency (delta) terms of the
reward then act on configurations near the budget's edge, and their weights set how much margin
the controller keeps. The evaluation reports the chance that a chosen configuration runs over
(:func:`violation_probability`, the same uniform law in closed form).

Ratios come from the profile's per-cell quantiles of total request time (``total_ms_p10``,
``total_ms_median``, ``total_ms_p90`` in ``data/profile/summary.parquet``), the median over a
configuration's cells (question and answer lengths). They are the raw repeats, slow spells of
the host included: those are what a live request meets.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch

from knobctl.knobs import KnobConfig

COLUMNS = ("total_ms_p10", "total_ms_median", "total_ms_p90")


def latency_spread(summary: pd.DataFrame, configs: Sequence[KnobConfig]) -> torch.Tensor:
    """Per configuration, (p10 / median, p90 / median) of its profiled total latency: [C, 2]. A configuration
    the profile lacks takes the median ratios over the ones it has."""
    missing = [c for c in ("config", *COLUMNS) if c not in summary.columns]
    if missing:
        raise ValueError(f"the latency profile summary lacks {missing}; rebuild it with `dvc repro profile_latency`")
    ok = summary.dropna(subset=list(COLUMNS))
    ratios = pd.DataFrame({"config": ok["config"], "low": ok["total_ms_p10"] / ok["total_ms_median"],
                           "high": ok["total_ms_p90"] / ok["total_ms_median"]})
    if ratios.empty:
        raise ValueError("the latency profile summary has no successful cell to take a spread from")
    per = ratios.groupby("config")[["low", "high"]].median()
    fallback = per.median()
    rows = [per.loc[k.label] if k.label in per.index else fallback for k in configs]
    return torch.tensor([[float(r["low"]), float(r["high"])] for r in rows], dtype=torch.float32)  # [C, 2]


def draw_latency(latency_ms: torch.Tensor, spread: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each latency times a ratio drawn uniformly in its configuration's [low, high]: latency [...],
    spread [..., 2] (the rows of :func:`latency_spread` for each cell's configuration) -> [...]."""
    u = torch.rand(latency_ms.shape, generator=generator)  # [...]
    return latency_ms * (spread[..., 0] + u * (spread[..., 1] - spread[..., 0]))


def violation_probability(latency_ms: torch.Tensor, budget_ms: torch.Tensor | float,
                          spread: torch.Tensor) -> torch.Tensor:
    """P(latency x ratio > budget) with the ratio uniform in [low, high] (:func:`draw_latency`): [...]."""
    low, high = spread[..., 0], spread[..., 1]
    edge = budget_ms / latency_ms  # [...]: the ratio at which the request just meets its budget
    width = (high - low).clamp(min=1e-9)
    return torch.where(high > low, ((high - edge) / width).clamp(0, 1), (low > edge).float())


def expected_overshoot(latency_ms: torch.Tensor, budget_ms: torch.Tensor | float,
                       spread: torch.Tensor) -> torch.Tensor:
    """E[max(0, latency x ratio - budget)] in ms, the ratio uniform in [low, high]: [...].

    With e = budget / latency the ratio at the edge: 0 where e >= high; the whole mean overshoot
    latency * (low + high) / 2 - budget where e <= low; in between
    latency * (high - e)^2 / (2 * (high - low))."""
    low, high = spread[..., 0], spread[..., 1]
    edge = budget_ms / latency_ms  # [...]
    inside = latency_ms * (high - edge).clamp(min=0) ** 2 / (2 * (high - low).clamp(min=1e-9))
    below = latency_ms * (low + high) / 2 - budget_ms
    point = (latency_ms * low - budget_ms).clamp(min=0)  # no spread: the one latency's overshoot
    return torch.where(high > low, torch.where(edge <= low, below, inside), point)
