"""The router load-balancing loss of sparse MoE training (``train_base.router_aux_loss``).

A released MoE is trained with each token sent to ``top_k`` of many experts and an auxiliary loss
that keeps every expert in use (Switch Transformer, Fedus et al. 2021; OLMoE uses it with weight
0.01). Without it, and with a top-k that is a large share of the experts, the tiny default's experts
learn interchangeable functions: top-1 answers as well as top-8 (docs/LOG.md, "Why
top_k costs nothing"), so the top_k knob costs no accuracy.

Departures from Switch's loss, on purpose: it is computed over every token of the prompt and the
answer, left padding included (the padding share is small and the same at every step); the routed
fraction counts the ``top_k`` experts each token is sent to, each as 1 / top_k (Switch routes to one
expert); blocks skipped by the knobs or LayerDrop add no term; no router z-loss.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F


def load_balancing_loss(router_logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """``E * sum_e f_e * P_e`` for one block's router logits [T, E]: 1 when routing is uniform.

    ``f_e`` is the share of the ``T * top_k`` routing slots that went to expert ``e`` (no gradient,
    as in Switch) and ``P_e`` the mean router probability of ``e``, through which the loss trains.
    """
    num_experts = router_logits.shape[-1]
    probs = torch.softmax(router_logits.float(), dim=-1)  # [T, E]
    chosen = probs.topk(top_k, dim=-1).indices  # [T, k]
    routed = F.one_hot(chosen, num_experts).sum(dim=1).float().mean(dim=0) / top_k  # [E]
    return num_experts * (routed.detach() * probs.mean(dim=0)).sum()


@contextmanager
def router_logits_recorded(routers: list[torch.nn.Module]) -> Iterator[list[tuple[torch.Tensor, int]]]:
    """Within the scope, every forward of a router appends (its logits [T, E], its top_k)."""
    seen: list[tuple[torch.Tensor, int]] = []

    def hook(router: torch.nn.Module, _inputs: Any, output: Any) -> None:
        logits = output[0] if isinstance(output, tuple) else output
        seen.append((logits, int(router.top_k)))

    handles = [r.register_forward_hook(hook) for r in routers]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def balance_loss(seen: list[tuple[torch.Tensor, int]]) -> torch.Tensor:
    """The mean load-balancing loss over the router calls recorded in one forward."""
    if not seen:
        return torch.zeros(())
    return torch.stack([load_balancing_loss(logits, k) for logits, k in seen]).mean()
