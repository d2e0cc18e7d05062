"""Which computation each training batch of the base model runs through (``train_base.knob_sampling``).

``uniform`` (the recipe the project started from): every batch draws one configuration of the knob
grid uniformly and trains through exactly it. Every exit after block 12..16 and every top-k is then
trained to the same quality, so lowering top_k or blocks at inference costs nothing: a model that
gives a latency controller nothing to decide.

``pretrained``: train the way a released MoE VLM is trained, then let inference-time knobs degrade
it as they degrade a pretrained checkpoint. Each batch runs

* every block, each block after block 0 skipped with probability ``layer_drop * l / (L - 1)``
  (LayerDrop, Fan et al. 2019, with the linear depth rule of stochastic depth, Huang et al. 2016);
  at most ``L - min(knobs.num_blocks)`` blocks are skipped, the fewest the grid ever runs;
* the model's own top-k, except a ``reduced_topk_share`` of batches at a top-k drawn uniformly from
  the grid's lower values;
* a tier drawn by ``tier_weights`` (real VLMs see many resolutions).

Measured (docs/LOG.md, "Knowledge questions"): on easy-VQA alone, with ``layer_drop`` 0.2 and
``reduced_topk_share`` 0.1 and with both at 0, top_k 4 and 4 blocks fewer cost 0.1-0.2 points: the
tiny model answers that task from its first three blocks. With ``prepare_data.knowledge`` (facts the
model must hold in its weights) and both at 0, the default: the low tier costs 17 points and 4 blocks
fewer 2; top_k still costs nothing, because the router spreads its weight (the top 4 of 8 experts
carry 61-67% of it) over experts that learnt nearly the same function. LayerDrop 0.1 with 16 experts
made the blocks cheap again (1 point) without making top_k cost anything.

Departures from those methods, on purpose: LayerDrop skips a block for the whole batch (as Fan et
al.), not per sample (as stochastic depth); the kept blocks' outputs are not rescaled, neither in
training nor at inference, because inference runs blocks whole or not at all; block 0 is never
skipped, because it is the decision block the controller reads; no early-exit loss (the issue that
asked for this recipe lists it as an option; not built); the reduced top-k batches keep the router's
weights of the kept experts as HF computes them (renormalised or not, per ``norm_topk_prob``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from knobctl.knobs import TIER_ORDER, KnobConfig, KnobGrid

KNOB_SAMPLINGS = ("uniform", "pretrained")


@dataclass(frozen=True)
class BatchKnobs:
    """What one batch trains through: the knobs, and the exact blocks (``None``: the knobs' own)."""

    knobs: KnobConfig
    blocks: tuple[int, ...] | None = None

    @property
    def label(self) -> str:
        if self.blocks is None:
            return self.knobs.label
        return f"{self.knobs.tier}/k{self.knobs.top_k}/b{len(self.blocks)}"


def drop_probabilities(num_layers: int, layer_drop: float) -> torch.Tensor:
    """Skip probability per block: 0 for block 0, rising linearly to ``layer_drop`` at the last."""
    depth = torch.arange(num_layers, dtype=torch.float64) / max(1, num_layers - 1)  # [L]
    return layer_drop * depth


def draw_batch_knobs(
    sampling: str,
    grid: KnobGrid,
    num_layers: int,
    gen: torch.Generator,
    *,
    tier_weights: Mapping[str, float] | None = None,
    reduced_topk_share: float = 0.0,
    layer_drop: float = 0.0,
) -> BatchKnobs:
    """The knobs of one batch under a recipe (module docstring); draws only from ``gen``."""
    configs = grid.configs()
    if sampling == "uniform":
        # One draw, exactly as the project always did, so a uniform run keeps its weights.
        return BatchKnobs(configs[int(torch.randint(0, len(configs), (1,), generator=gen))])
    if sampling != "pretrained":
        raise ValueError(f"knob_sampling {sampling!r}; allowed: {', '.join(KNOB_SAMPLINGS)}")
    tiers = [t for t in TIER_ORDER if t in grid.tiers]
    weights = torch.tensor([float((tier_weights or {}).get(t, 1.0)) for t in tiers], dtype=torch.float64)
    tier = tiers[int(torch.multinomial(weights, 1, generator=gen))]
    ks = sorted(grid.top_k)
    top_k = ks[-1]
    if len(ks) > 1 and float(torch.rand(1, generator=gen, dtype=torch.float64)) < reduced_topk_share:
        top_k = ks[int(torch.randint(0, len(ks) - 1, (1,), generator=gen))]
    skip = torch.rand(num_layers, generator=gen, dtype=torch.float64) < drop_probabilities(num_layers, layer_drop)  # [L]
    budget = num_layers - min(grid.num_blocks)
    dropped = [i for i in range(1, num_layers) if bool(skip[i])]
    if len(dropped) > budget:  # keep a random subset, not the shallowest ones
        dropped = [dropped[int(j)] for j in torch.randperm(len(dropped), generator=gen)[:budget]]
    blocks = tuple(i for i in range(num_layers) if i not in dropped)
    return BatchKnobs(KnobConfig(tier, top_k, num_layers), blocks)
