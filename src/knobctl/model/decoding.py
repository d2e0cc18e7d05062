"""Running the language model by hand: prefill, greedy decoding with a KV cache, cache forks.

Every place that calls the language model directly (answers, rollouts, the controller's
features, the two-stage flow, base training) goes through :func:`prefill`, so the call's
arguments (embeddings, left-padding mask, positions, cache) are spelled out once. Decoding
continues from a prefill's cache one greedy token at a time; :func:`fork_cache` lets several
continuations share one prompt's keys and values.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from transformers import DynamicCache

from knobctl.model.presets import EOS, PAD

if TYPE_CHECKING:
    from knobctl.model.runtime import Runtime


def new_cache(rt: Runtime) -> DynamicCache:
    """An empty KV cache for the language model."""
    return DynamicCache(config=rt.lm.config)


def prefill(rt: Runtime, inputs: dict[str, torch.Tensor], cache: DynamicCache | None = None,
            embeds: torch.Tensor | None = None) -> torch.Tensor:
    """The language model's forward over embedded prompts (:meth:`Runtime.embed`): hidden
    states after the last block run, before the final norm, [B, L, H].

    With a ``cache`` the keys and values are stored for decoding (use_cache); without one none
    are kept (training, features). ``embeds`` [B, L, H] replaces the prompt's embeddings as the
    first block's input, with the prompt's mask and positions: the two-stage flow continues a
    prompt from the decision block's output this way."""
    return rt.lm(inputs_embeds=inputs["inputs_embeds"] if embeds is None else embeds,
                 attention_mask=inputs["attention_mask"], position_ids=inputs["position_ids"],
                 past_key_values=cache, use_cache=cache is not None).last_hidden_state


def next_token(rt: Runtime, logits: torch.Tensor, ban_eos: bool) -> torch.Tensor:
    """Greedy pick from [B, V] logits; with ``ban_eos`` EOS can never win."""
    if ban_eos:
        logits = logits.clone()
        logits[:, rt.ids[EOS]] = float("-inf")
    return logits.argmax(-1)


@torch.inference_mode()
def generate(rt: Runtime, inputs: dict[str, torch.Tensor], max_new_tokens: int, min_new_tokens: int = 0,
             on_prefill: Callable[[], None] | None = None) -> torch.Tensor:
    """Greedy decoding with a KV cache: [B, <= max_new_tokens] token ids (PAD after EOS).

    ``min_new_tokens`` bans EOS for that many tokens, so latency profiling can force an
    exact output length (min = max) even on a model with random weights. ``on_prefill``
    is called once the prompt's forward pass has produced the first token (the
    profiler's timing mark between prefill and decode).
    """
    cache = new_cache(rt)
    hidden = prefill(rt, inputs, cache)  # [B, L, H]
    token = next_token(rt, rt.model.lm_head(hidden[:, -1]), ban_eos=min_new_tokens > 0)  # [B]
    if on_prefill is not None:
        on_prefill()
    return continue_greedy(rt, token, cache, inputs["attention_mask"], inputs["position_ids"], max_new_tokens,
                           min_new_tokens)


@torch.inference_mode()
def continue_greedy(rt: Runtime, token: torch.Tensor, cache: DynamicCache, mask: torch.Tensor, pos: torch.Tensor,
                    max_new_tokens: int, min_new_tokens: int = 0) -> torch.Tensor:
    """Greedy decode after a prefill: ``token`` [B] is the first generated token, ``cache``
    holds the prompt's keys and values, ``mask``/``pos`` [B, L] are the prompt's. Returns
    [B, <= max_new_tokens] token ids, ``token`` first (PAD after EOS)."""
    lm, head = rt.lm, rt.model.lm_head
    eos = rt.ids[EOS]
    done = token == eos
    out = [token]
    for step in range(1, max_new_tokens):
        if bool(done.all()):
            break
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)  # [B, L + step]
        pos = pos[:, -1:] + 1  # [B, 1]
        hidden = lm(inputs_embeds=lm.embed_tokens(token[:, None]), attention_mask=mask, position_ids=pos,
                    past_key_values=cache, use_cache=True).last_hidden_state  # [B, 1, H]
        token = next_token(rt, head(hidden[:, -1]), ban_eos=step < min_new_tokens)
        token = torch.where(done, torch.full_like(token, rt.ids[PAD]), token)
        done = done | (token == eos)
        out.append(token)
    return torch.stack(out, dim=1)


def fork_cache(cache: DynamicCache) -> DynamicCache:
    """A cache that shares ``cache``'s keys and values so far but grows on its own.

    Layers append by concatenation into new tensors, never in place, so the fork can
    decode one continuation while the original keeps the prompt for another.
    """
    fork = copy.copy(cache)
    fork.layers = [copy.copy(layer) for layer in cache.layers]
    return fork
