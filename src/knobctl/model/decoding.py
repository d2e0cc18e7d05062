"""Running the language model by hand: prefill, greedy decoding with a KV cache, cache forks,
teacher-forced answer logits.

Decoding continues a prompt's cache with HF's dynamic cache here (the eager path); a runtime loaded with another
``model.decode`` continues it through a static cache, compiled or replayed as a CUDA graph
(:mod:`knobctl.model.static_decode`), with the same greedy loop around the step.

Every place that calls the language model directly (answers, rollouts, the controller's
features, the two-stage flow, base training, block importance) goes through :func:`prefill`,
so the call's arguments (embeddings, left-padding mask, positions, cache) are spelled out once.
Decoding continues from a prefill's cache one greedy token at a time; :func:`fork_cache` lets
several continuations share one prompt's keys and values. :func:`teacher_forced` scores given
answers (base training's loss, block importance's log-likelihood) with one forward pass.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import torch
import transformers
from torch import nn
from transformers import DynamicCache

from knobctl.model.deepstack import deepstack_injected
from knobctl.model.images import Visual
from knobctl.model.spec import EOS, PAD

# transformers 5.24 renamed the forward's cache keyword (``past_key_values`` warns there and goes in 5.40);
# the older name keeps GPU images with an earlier transformers working.
CACHE_KEYWORD = ("cache" if tuple(int(x) for x in transformers.__version__.split(".")[:2]) >= (5, 24)
                 else "past_key_values")


#: One greedy step: the last token [B] in, the next position's logits [B, V] out (the step keeps its own cache).
StepFn = Callable[[torch.Tensor], torch.Tensor]


class DecodePath(Protocol):
    """A decode path other than eager (:mod:`knobctl.model.static_decode`), held by the runtime."""

    def steps(self, rt: Decodable, cache: DynamicCache, mask: torch.Tensor, pos: torch.Tensor,
              max_new_tokens: int) -> StepFn:
        """The step continuing ``cache`` (the prompt's keys and values, ``mask``/``pos`` its [(3,) B, L]) for up to
        ``max_new_tokens - 1`` tokens under the knobs now applied, leaving ``cache`` as it was."""
        ...


class Decodable(Protocol):
    """What decoding uses of a runtime (:class:`knobctl.model.runtime.Runtime`), named here so that the runtime,
    which decodes with these functions, is not imported back."""

    model: nn.Module
    ids: dict[str, int]
    decoder: DecodePath | None  # model.decode: how a cached prompt is continued (None: eager, HF's dynamic cache)

    @property
    def lm(self) -> nn.Module: ...

    @property
    def all_layers(self) -> nn.ModuleList: ...

    def prompt_from_ids(self, questions: Sequence[Sequence[int]], num_visual: int) -> list[list[int]]: ...

    def embed(self, visual: Visual, sequences: Sequence[Sequence[int]]) -> dict[str, Any]: ...


def new_cache(rt: Decodable) -> DynamicCache:
    """An empty KV cache for the language model."""
    return DynamicCache(config=rt.lm.config)


def prefill(rt: Decodable, inputs: Mapping[str, Any], cache: DynamicCache | None = None,
            embeds: torch.Tensor | None = None, after: int = -1) -> torch.Tensor:
    """The language model's forward over embedded prompts (:meth:`Runtime.embed`): hidden
    states after the last block run, before the final norm, [B, L, H].

    With a ``cache`` the keys and values are stored for decoding (use_cache); without one none
    are kept (training, features). ``embeds`` [B, L, H] replaces the prompt's embeddings as the
    first block's input, with the prompt's mask and positions: the two-stage flow continues a
    prompt from the decision block's output this way (``after``: the original index of the block whose
    output ``embeds`` is).

    Positions are [B, L], or [3, B, L] for a family with M-RoPE. A Qwen3-VL prompt's DeepStack features
    (``inputs['deepstack']``) are added after their own layers whichever of them run
    (:func:`knobctl.model.deepstack.deepstack_injected`)."""
    with deepstack_injected(rt.all_layers, rt.lm.layers, inputs, after=-1 if embeds is None else after):
        return rt.lm(inputs_embeds=inputs["inputs_embeds"] if embeds is None else embeds,
                     attention_mask=inputs["attention_mask"], position_ids=inputs["position_ids"],
                     use_cache=cache is not None, **{CACHE_KEYWORD: cache}).last_hidden_state


def visual_extras(inputs: Mapping[str, Any]) -> dict[str, Any]:
    """What a prompt's forward needs besides embeddings, mask and positions (DeepStack features)."""
    return {k: inputs[k] for k in ("visual_mask", "deepstack") if k in inputs}


def next_token(rt: Decodable, logits: torch.Tensor, ban_eos: bool) -> torch.Tensor:
    """Greedy pick from [B, V] logits; with ``ban_eos`` EOS can never win."""
    if ban_eos:
        logits = logits.clone()
        logits[:, rt.ids[EOS]] = float("-inf")
    return logits.argmax(-1)


@torch.inference_mode()
def generate(rt: Decodable, inputs: dict[str, torch.Tensor], max_new_tokens: int, min_new_tokens: int = 0,
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
    if not cache_sets_mask(cache):
        # Only a block set without block 0 lands here (block importance drops each block once).
        return continue_greedy(rt, token, None, inputs["attention_mask"], inputs["position_ids"], max_new_tokens,
                               min_new_tokens, embeds=inputs["inputs_embeds"], extras=visual_extras(inputs))
    return continue_greedy(rt, token, cache, inputs["attention_mask"], inputs["position_ids"], max_new_tokens,
                           min_new_tokens)


def cache_sets_mask(cache: DynamicCache) -> bool:
    """Whether decoding from ``cache`` gets the right causal mask.

    HF sizes the decode mask from the first layer's cached length; if block 0 did not run in
    the prefill, that layer is empty and every later step would attend to itself alone
    (silently wrong answers, no error).
    """
    return cache.layers[0].get_seq_length() > 0


@torch.inference_mode()
def continue_greedy(rt: Decodable, token: torch.Tensor, cache: DynamicCache | None, mask: torch.Tensor,
                    pos: torch.Tensor, max_new_tokens: int, min_new_tokens: int = 0,
                    embeds: torch.Tensor | None = None, extras: Mapping[str, Any] | None = None) -> torch.Tensor:
    """Greedy decode after a prefill: ``token`` [B] is the first generated token, ``cache``
    holds the prompt's keys and values, ``mask``/``pos`` [B, L] are the prompt's. Returns
    [B, <= max_new_tokens] token ids, ``token`` first (PAD after EOS).

    Without a cache, ``embeds`` [B, L, H] (the prompt's) and its :func:`visual_extras` are given and
    each step reruns the whole sequence: the way to decode when block 0 does not run
    (:func:`cache_sets_mask`). ``pos`` may be M-RoPE's [3, B, L]: every axis advances by one per token.
    With a cache, the runtime's decode path (``rt.decoder``, ``model.decode``) takes the steps where it can; it
    reads ``cache`` and never changes it, so a :func:`fork_cache` continues as well."""
    if cache is None and embeds is None:
        raise ValueError("continue_greedy needs a cache or the prompt's embeddings")
    if cache is not None and not cache_sets_mask(cache):
        raise ValueError("this cache's first layer is empty (block 0 did not run), so HF would build a wrong decode "
                         "mask; decode without a cache (generate does so by itself)")
    if cache is not None and not any(layer is rt.all_layers[0] for layer in rt.lm.layers):
        raise ValueError("block 0 does not run, so no decode path can continue a cache: HF reads the query's position "
                         "from the first cache layer, which would not advance; decode without a cache (generate "
                         "does so by itself)")
    if cache is None:
        step = recompute_step(rt, embeds, mask, pos, extras)
    elif rt.decoder is not None:
        step = rt.decoder.steps(rt, cache, mask, pos, max_new_tokens)
    else:
        step = cached_step(rt, cache, mask, pos)
    return greedy_loop(rt, token, step, max_new_tokens, min_new_tokens)


def decode_step(lm: nn.Module, head: nn.Module, token: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor,
                cache: Any) -> torch.Tensor:
    """One token [B] through the language model into ``cache``: the next position's logits [B, V]. Every decode
    path takes this step (the static ones compile a copy of it: :mod:`knobctl.model.static_decode`)."""
    hidden = lm(inputs_embeds=lm.embed_tokens(token[:, None]), attention_mask=mask, position_ids=pos,
                use_cache=True, **{CACHE_KEYWORD: cache}).last_hidden_state  # [B, 1, H]
    return head(hidden[:, -1])  # [B, V]


def cached_step(rt: Decodable, cache: DynamicCache, mask: torch.Tensor, pos: torch.Tensor) -> StepFn:
    """The eager step: one token through the language model, growing ``cache`` (HF's dynamic cache)."""
    lm, head = rt.lm, rt.model.lm_head
    state = {"mask": mask, "pos": pos}

    def step(token: torch.Tensor) -> torch.Tensor:
        state["mask"] = torch.cat([state["mask"], state["mask"].new_ones(token.shape[0], 1)], dim=1)  # [B, L + t]
        state["pos"] = state["pos"][..., -1:] + 1  # [(3,) B, 1]
        return decode_step(lm, head, token, state["mask"], state["pos"], cache)  # [B, V]
    return step


def recompute_step(rt: Decodable, embeds: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor,
                   extras: Mapping[str, Any] | None) -> StepFn:
    """The step without a cache: the whole sequence so far reruns for every token."""
    lm, head = rt.lm, rt.model.lm_head
    state = {"embeds": embeds, "mask": mask, "pos": pos}

    def step(token: torch.Tensor) -> torch.Tensor:
        state["mask"] = torch.cat([state["mask"], state["mask"].new_ones(token.shape[0], 1)], dim=1)  # [B, L + t]
        state["embeds"] = torch.cat([state["embeds"], lm.embed_tokens(token[:, None])], dim=1)  # [B, L + t, H]
        state["pos"] = torch.cat([state["pos"], state["pos"][..., -1:] + 1], dim=-1)  # [(3,) B, L + t]
        hidden = prefill(rt, {"inputs_embeds": state["embeds"], "attention_mask": state["mask"],
                              "position_ids": state["pos"], **(extras or {})})  # [B, L + t, H]
        return head(hidden[:, -1])  # [B, V]
    return step


def greedy_loop(rt: Decodable, token: torch.Tensor, step: StepFn, max_new_tokens: int,
                min_new_tokens: int = 0) -> torch.Tensor:
    """[B, <= max_new_tokens] greedy ids from the first token [B] on, one ``step`` per further token; EOS is
    banned before ``min_new_tokens`` and a finished row continues with PAD."""
    eos = rt.ids[EOS]
    done = token == eos  # [B]
    out = [token]
    for i in range(1, max_new_tokens):
        if bool(done.all()):
            break
        token = next_token(rt, step(token), ban_eos=i < min_new_tokens)  # [B]
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


def teacher_forced(rt: Decodable, visual: Visual, questions: Sequence[Sequence[int]],
                   targets: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of each target token given the prompt and the targets before it, in one forward.

    ``visual`` (embeds [B, T, H]) from :meth:`Runtime.encode_images`, ``questions`` and ``targets`` token
    ids (targets usually an answer and EOS). Returns logits [B, S, V] and labels [B, S]
    (S = the longest target; -100 where a shorter target has no token), under whatever knobs
    or blocks are applied around the call.
    """
    prompts = rt.prompt_from_ids(questions, visual.num_tokens)
    inputs = rt.embed(visual, [p + list(t) for p, t in zip(prompts, targets)])
    hidden = prefill(rt, inputs)  # [B, L, H]
    width = hidden.shape[1]
    # Sequences are left-padded, so each row's targets are its last len(t) tokens.
    n_t = torch.tensor([len(t) for t in targets], device=hidden.device)  # [B]
    span = int(n_t.max())
    pos = torch.arange(width - span, width, device=hidden.device)  # [S]
    valid = pos[None, :] >= (width - n_t)[:, None]  # [B, S]
    logits = rt.model.lm_head(hidden[:, pos - 1])  # [B, S, V]: position p-1 predicts token p
    labels = inputs["input_ids"][:, pos].masked_fill(~valid, -100)  # [B, S]
    return logits, labels
