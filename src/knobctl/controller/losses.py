"""Group-relative losses and the vectorised sampling step of controller training.

A *group* is one sample under one latency budget; the policy samples G configurations for
it (both stages, with replacement), each gets a reward (:mod:`knobctl.controller.reward`), and
the loss compares rewards within the group only. Everything is batched tensor work: no Python
loop over samples, groups or pairs. ``train_controller.loss`` names one entry of :data:`LOSSES`.

Departures from the methods the losses are named after, on purpose:

* ``pairwise`` (the default; a group-relative ranking loss): for every ordered pair (i, j) of a
  group with r_i > r_j, -log sigmoid(logp_i - logp_j), i.e.
  -log sigmoid((logp_i - logp_j) * sign(r_i - r_j)); averaged over all ranked pairs of the
  batch (not per group), so a group's weight grows with its number of distinct rewards.
  Tied pairs (equal rewards, e.g. the same configuration drawn twice) give nothing. It is a
  Bradley-Terry ranking loss on the policy's log-probabilities, not a policy gradient.
  ``pair_weight: margin`` (an addition) weights each pair by |r_i - r_j|, so a pair that
  differs by a right answer counts more than one that differs by a millisecond.
* ``grpo``: advantages (r - group mean) / (group std + eps), loss
  -mean(advantage * logp) minus an entropy bonus (``entropy_coef`` on the policy's entropy:
  stage 1's plus stage 2's at the drawn tier), which GRPO does not have. train_controller's
  default group is G = 16 configurations: with few draws and no bonus the policy settles early on
  configurations that trail the best by a fraction of a point. ``advantage_scale: none``
  drops the division by the std, as Dr. GRPO does (worse here: dividing by a small std amplifies
  the complexity preference in groups that are all right, and that preference is what
  generalises; fitting each sample's 0/1 outcomes does not). docs/LOG.md, "Fit mask", has the comparisons.
  Unlike GRPO in DeepSeekMath there is no PPO ratio or clipping and no KL penalty to a reference
  policy: each batch is sampled from the current policy and used for one gradient step, so the
  importance ratio is exactly 1, and the "reference" of a two-head classifier has no pretrained
  prior worth staying near.
* The "completions" are knob configurations drawn from a factorised two-stage policy, and
  logp is the joint log-probability of both stages' actions.
* With the fit mask (``train_controller.fit_mask``, the default), the policy samples only
  configurations whose estimated latency fits the group's budget (invalid-action masking;
  :mod:`knobctl.controller.policy`); the loss ranks configurations that are all feasible *by their
  estimate*. The latency a reward sees is then drawn from each configuration's profiled spread
  (``train_controller.latency_sampling: spread``, :mod:`knobctl.controller.spread`), so a
  configuration at the budget's edge runs over in some draws; each reward term's ``doc``
  (:data:`knobctl.controller.reward.REWARD_TERMS`) says when it acts.
* ``latency_sampling: expected`` (an addition) replaces the one draw per sampled configuration by
  the reward's expectation over the spread, in closed form (each term's expected form,
  :mod:`knobctl.controller.reward`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from knobctl.controller.policy import Controller

#: ``train_controller.pair_weight`` -> each ranked pair's weight from the reward gaps r_i - r_j [B, G, G]: ``sign``
#: weighs every pair where i beats j alike, ``margin`` by how much it wins (zero where it does not).
PAIR_WEIGHTS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "sign": lambda gap: (gap > 0).to(gap.dtype),
    "margin": lambda gap: gap.clamp(min=0),
}


def pairwise_loss(rewards: torch.Tensor, logp: torch.Tensor, weight: str = "sign") -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards and log-probs [B, G] -> (mean loss over ranked pairs, number of ranked pairs).

    ``weight="margin"`` multiplies each pair's term by r_i - r_j and divides by their sum."""
    gap = rewards[:, :, None] - rewards[:, None, :]  # [B, G, G]: r_i - r_j
    margin = logp[:, :, None] - logp[:, None, :]  # [B, G, G]: logp_i - logp_j
    pairs = (gap > 0).sum()
    w = PAIR_WEIGHTS[weight](gap).to(logp.dtype)  # [B, G, G]
    loss = (F.softplus(-margin) * w).sum() / w.sum().clamp(min=1e-12)  # -log sigmoid(x) = softplus(-x)
    return loss, pairs


#: ``train_controller.advantage_scale`` -> (rewards [B, G], r - group mean [B, G], eps) -> the advantages: ``std``
#: divides by the group's reward std (GRPO), ``none`` keeps r - mean (Dr. GRPO).
ADVANTAGE_SCALES: dict[str, Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]] = {
    "std": lambda rewards, centred, eps: centred / (rewards.std(1, keepdim=True, unbiased=False) + eps),
    "none": lambda rewards, centred, eps: centred,
}


def grpo_loss(rewards: torch.Tensor, logp: torch.Tensor, entropy: torch.Tensor, entropy_coef: float = 0.0,
              eps: float = 1e-6, scale: str = "std") -> torch.Tensor:
    """Group-relative advantages [B, G] times log-probs, minus ``entropy_coef`` * mean entropy.
    ``scale="std"`` divides each group's advantages by its reward std; ``"none"`` keeps r - mean."""
    mean = rewards.mean(1, keepdim=True)  # [B, 1]
    advantage = ADVANTAGE_SCALES[scale](rewards, rewards - mean, eps).detach()  # [B, G]
    return -(advantage * logp).mean() - entropy_coef * entropy.mean()


def zero_variance(rewards: torch.Tensor) -> torch.Tensor:
    """[B] True where every configuration of the group got the same reward (no gradient)."""
    low, high = rewards.aminmax(dim=1)  # [B] each
    return high == low


@dataclass(frozen=True)
class Actions:
    """G sampled configurations per group, their joint log-probability and the policy's entropies."""

    tier: torch.Tensor  # [B, G] tier index
    pair: torch.Tensor  # [B, G] (top_k, num_blocks) pair index
    config: torch.Tensor  # [B, G] configuration index = tier * P + pair
    logp: torch.Tensor  # [B, G] log P1(tier) + log P2(pair | tier)
    entropy: dict[str, torch.Tensor]  # tier [B], top_k / num_blocks / pair [B, G] (marginals of stage 2)


class LossSettings(Protocol):
    """What the losses read of train_controller's params (:class:`knobctl.controller.training.TrainParams`)."""

    pair_weight: str
    advantage_scale: str
    entropy_coef: float


@dataclass(frozen=True)
class GroupLoss:
    """One entry of :data:`LOSSES`: ``fn`` maps the groups' rewards [B, G] and the sampled actions to the loss;
    ``entropy_bonus``: it subtracts ``entropy_coef`` times the policy's entropy, so training asks
    :func:`draw_actions` for the entropies (at a cost) only where that is on."""

    fn: Callable[[torch.Tensor, Actions, LossSettings], torch.Tensor]
    entropy_bonus: bool = False


def _pairwise(rewards: torch.Tensor, acts: Actions, p: LossSettings) -> torch.Tensor:
    return pairwise_loss(rewards, acts.logp, p.pair_weight)[0]


def _grpo(rewards: torch.Tensor, acts: Actions, p: LossSettings) -> torch.Tensor:
    # stage 1's entropy [B, 1] plus stage 2's at each draw's tier [B, G]; none where the bonus is off
    bonus = acts.entropy["tier"][:, None] + acts.entropy["pair"] if acts.entropy else torch.zeros(())
    return grpo_loss(rewards, acts.logp, bonus, p.entropy_coef, scale=p.advantage_scale)


#: ``train_controller.loss`` -> its loss (module docstring); params validation allows these keys.
LOSSES: dict[str, GroupLoss] = {"pairwise": GroupLoss(_pairwise), "grpo": GroupLoss(_grpo, entropy_bonus=True)}

ENTROPIES = ("none", "policy", "all")


def sample_actions(ctrl: Controller, language: torch.Tensor, vision: torch.Tensor, budget_ms: torch.Tensor,
                   group_size: int, generator: torch.Generator, with_entropy: bool = True,
                   feasible: torch.Tensor | None = None) -> Actions:
    """Draw ``group_size`` configurations per row from both stages: language [B, D], vision at
    every tier [B, T, D], budgets [B], and with a fit mask the allowed configurations
    [B, T, P] (:meth:`Controller.feasible`; masked ones get probability 0 in both stages).
    ``with_entropy=False`` skips the entropies (empty dict), which only logging and the GRPO
    bonus need. :func:`draw_actions` draws from both stages' log-probabilities."""
    tier_logp, all_logp = stage_log_probs(ctrl, language, vision, budget_ms, feasible)  # [B, T], [B, T, P]
    return draw_actions(tier_logp, all_logp, group_size, generator, "all" if with_entropy else "none",
                        (len(ctrl.config.top_k), len(ctrl.config.num_blocks)), feasible)


def draw_actions(tier_logp: torch.Tensor, all_logp: torch.Tensor, group_size: int, generator: torch.Generator,
                 entropy: str = "all", pair_shape: tuple[int, int] | None = None,
                 allowed: torch.Tensor | None = None) -> Actions:
    """Draw ``group_size`` configurations per row from both stages' log-probabilities, tiers [B, T]
    and pairs at every tier [B, T, P] (:func:`stage_log_probs`, with the fit mask ``allowed`` [B, T, P]
    if any). ``entropy``: ``"all"`` (tier, pair and stage 2's top_k / num_blocks marginals, for which
    ``pair_shape`` is (top_k values, num_blocks values)), ``"policy"`` (tier and pair, what the GRPO
    bonus takes) or ``"none"`` (empty dict).

    Stage 2 is computed once per (sample, tier), T rows per sample, and each draw takes its tier's
    row: fewer rows than one per draw (T = 3 < G) and the same logits. With input dropout, the
    draws of one tier share a mask. Both stages sample by inverse CDF (one uniform per draw against
    the cumulative probabilities), the same distribution as ``torch.multinomial`` at a fraction of
    its cost on CPU (its exponential draws were a visible share of a step)."""
    if entropy not in ENTROPIES:
        raise ValueError(f"entropy={entropy!r}; allowed: {', '.join(ENTROPIES)}")
    b, t, n_pairs = all_logp.shape
    tier = _draw(tier_logp.detach().exp(), group_size, generator)  # [B, G]
    pair = _draw_rows(_probs(all_logp.detach(), allowed), tier, generator)  # [B, G]
    config = tier * n_pairs + pair  # [B, G]
    # one gather from the flat [B, T * P] log-probabilities picks the tier's row and the pair's column
    logp = tier_logp.gather(1, tier) + all_logp.reshape(b, t * n_pairs).gather(1, config)  # [B, G]
    if entropy == "none":
        return Actions(tier=tier, pair=pair, config=config, logp=logp, entropy={})
    all_p = _probs(all_logp, allowed)  # [B, T, P]
    per_tier = {"pair": -(all_p * all_logp).sum(-1)}  # [B, T]
    if entropy == "all":
        if pair_shape is None:
            raise ValueError("entropy='all' needs pair_shape, the numbers of top_k and num_blocks values")
        joint = all_p.reshape(b, t, *pair_shape)  # [B, T, K, N]
        per_tier |= {"top_k": _entropy(joint.sum(3)), "num_blocks": _entropy(joint.sum(2))}  # [B, T] each
    drawn = {"tier": -(tier_logp.exp() * tier_logp).sum(-1),  # [B]
             **{k: v.gather(1, tier) for k, v in per_tier.items()}}  # [B, G] each, at the drawn tier
    return Actions(tier=tier, pair=pair, config=config, logp=logp, entropy=drawn)


def stage_log_probs(ctrl: Controller, language: torch.Tensor, vision: torch.Tensor, budget_ms: torch.Tensor,
                    feasible: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Both stages' log-probabilities: stage 1 over tiers [B, T], stage 2 over pairs at every tier [B, T, P]
    (inputs as :func:`sample_actions`)."""
    b, t = vision.shape[0], vision.shape[1]
    tier_ok = None if feasible is None else feasible.any(-1)  # [B, T]
    tier_logp = F.log_softmax(ctrl.tier_logits(language, budget_ms, tier_ok), dim=-1)  # [B, T]
    all_logp = F.log_softmax(ctrl.pair_logits(vision, torch.arange(t).expand(b, t), language[:, None].expand(-1, t, -1),
                                              budget_ms[:, None].expand(-1, t), feasible), dim=-1)  # [B, T, P]
    return tier_logp, all_logp


def imitation_loss(ctrl: Controller, language: torch.Tensor, vision: torch.Tensor, budget_ms: torch.Tensor,
                   target: torch.Tensor, feasible: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of the two-stage policy on target configurations [B] (index tier * P + pair):
    -mean(log P1(tier) + log P2(pair | tier)), the warm start's loss (:mod:`knobctl.controller.training`)."""
    tier_logp, all_logp = stage_log_probs(ctrl, language, vision, budget_ms, feasible)  # [B, T], [B, T, P]
    n_pairs = all_logp.shape[-1]
    tier, pair = target // n_pairs, target % n_pairs  # [B] each
    rows = torch.arange(len(target))
    return -(tier_logp[rows, tier] + all_logp[rows, tier, pair]).mean()


def _draw(probs: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` indices per row of probabilities [..., K], with replacement (inverse CDF): [..., count]."""
    cdf = probs.cumsum(-1)  # [..., K]
    u = torch.rand(cdf.shape[:-1] + (count,), generator=generator) * cdf[..., -1:]  # [..., count]
    # right=True: the first index whose cdf exceeds u, so a zero-probability (masked) entry
    # is never drawn, even at u = 0
    return torch.searchsorted(cdf, u, right=True).clamp(max=probs.shape[-1] - 1)  # [..., count]


def _probs(logp: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
    """exp(logp), with 0 where ``allowed`` is False. A masked log-probability is about -1e9, and exp
    below -87 takes a slow path on CPU (about 10x per element): exp of 0 there, then 0, gives the
    same values at a tenth of the cost. A row whose every entry is masked (a tier with nothing allowed,
    never drawn) gets 0 rather than uniform."""
    if allowed is None:
        return logp.exp()
    blocked = ~allowed
    return logp.masked_fill(blocked, 0.0).exp().masked_fill(blocked, 0.0)


def _draw_rows(probs: torch.Tensor, row: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One index per draw from row ``row`` of probabilities [B, R, K] (row indices [B, G]): [B, G].
    The same draws as :func:`_draw` on each draw's row (one uniform per draw), with the cumulative
    sums taken once per row rather than once per draw, and no [B, G, K] probabilities gathered."""
    b, r, k = probs.shape
    cdf = probs.cumsum(-1).reshape(b * r, k)  # [B * R, K]
    at = cdf.index_select(0, (torch.arange(b)[:, None] * r + row).reshape(-1)).reshape(*row.shape, k)  # [B, G, K]
    u = torch.rand(at.shape[:-1] + (1,), generator=generator) * at[..., -1:]  # [B, G, 1]
    return torch.searchsorted(at, u, right=True).clamp(max=k - 1).squeeze(-1)  # [B, G]


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * p.clamp(min=1e-12).log()).sum(-1)
