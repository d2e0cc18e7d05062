"""Decode paths without HF's dynamic cache (``model.decode``): a static KV cache, its step compiled, its step
replayed as a CUDA graph.

* ``eager`` (the default): HF's dynamic cache grows by concatenation every token (:mod:`knobctl.model.decoding`).
* ``static``: the prompt's keys and values are copied into a preallocated ``transformers.StaticCache`` and every
  step writes one position in place; the step itself runs eagerly.
* ``compiled``: ``static`` with the step under ``torch.compile`` (inductor, ``fullgraph``, static shapes).
* ``graph``: ``compiled`` with ``mode="reduce-overhead"``: on a GPU the whole step is captured once and replayed
  as one CUDA graph, which removes the launch overhead that makes top-k buy nothing in the stock path. CUDA only.

One compiled step per configuration and shape: the key is the blocks run, every router's ``top_k``, the batch,
the cache length, dtype and device. Each key gets a function with its own code object, so dynamo's per-code
recompile limit (8) is never shared between configurations (a shared one would fall back to eager silently after
the 8th), and a configuration seen again reuses its graph without re-tracing. Cache lengths are rounded up to a
multiple of :data:`CACHE_BUCKET` so that prompts of nearby lengths share one compiled step; the positions beyond
a row's own are masked. The prompt's cache is copied, never written to, so a :func:`knobctl.model.decoding.fork_cache`
fork continues like any other cache (the accuracy table's rollouts share one prompt's cache this way).

What a path does not take, and what happens then (:meth:`StaticDecoder.steps`):

* decoding without a cache (``generate`` for a block set without block 0, as block importance drops it): the
  eager recompute of :mod:`knobctl.model.decoding` on every path, since there is no cache to make static;
* continuing a cache under a block set without block 0: refused on every path by
  :func:`knobctl.model.decoding.continue_greedy` (HF reads the query's position from the first cache layer, which
  would not advance; eager's mask came out one position short), and no stage asks for it;
* a cache whose running layers do not all hold the prompt: refused (ValueError), as the eager path's mask
  would be wrong;
* ``compiled`` / ``graph`` with HF's ``eager`` experts kernel (a Python loop over the experts hit, which dynamo
  cannot capture whole): refused with an :class:`knobctl.params.InputError` naming the kernels that work;
* ``graph`` on a CPU: refused at load (:func:`decoder_for`).

M-RoPE positions ([3, B, L]: Qwen3-VL-MoE, GLM-4.5V) advance like the eager path's and go through the same step:
the tests hold static's tokens equal to eager's on tiny checkpoints of both and of InternVL (compiled's were
checked by hand: docs/LOG.md, "Decode paths (issue 33)").
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache, StaticCache

from knobctl.model.decoding import Decodable, StepFn, decode_step
from knobctl.model.families import layer_routers
from knobctl.model.presets import DECODE_PATHS, ModelParams
from knobctl.params import InputError

#: params.yaml's ``model.decode`` (why: docs/LOG.md, "Decode paths (issue 33)").
DEFAULT_DECODE = ModelParams.decode
#: Static cache lengths are multiples of this: fewer shapes to compile, at most this many masked positions more.
CACHE_BUCKET = 64
#: Static caches kept per runtime (batch, length, dtype, device); the oldest goes, with its compiled steps.
MAX_CACHES = 8
#: Experts kernels whose MoE a single graph captures (HF's ``eager`` kernel loops over the experts hit).
COMPILABLE_EXPERTS = ("grouped_mm", "batched_mm")


def cache_length(prompt: int, max_new_tokens: int) -> int:
    """Positions a static cache needs for a prompt and the tokens decoded after it, rounded up to the bucket."""
    need = prompt + max(max_new_tokens - 1, 1)
    return -(-need // CACHE_BUCKET) * CACHE_BUCKET


class StaticDecoder:
    """The ``static``, ``compiled`` or ``graph`` decode path of one runtime: its static caches and compiled steps."""

    def __init__(self, path: str):
        if path not in DECODE_PATHS[1:]:
            raise ValueError(f"decode path {path!r}: use one of {', '.join(DECODE_PATHS[1:])} (eager needs none)")
        self.path = path
        self._caches: dict[tuple[Any, ...], StaticCache] = {}
        self._steps: dict[tuple[Any, ...], Callable[..., torch.Tensor]] = {}
        self._routers: dict[int, list[nn.Module]] = {}

    @property
    def compiled_steps(self) -> int:
        """Steps compiled so far: one per configuration and shape met."""
        return len(self._steps)

    def steps(self, rt: Decodable, cache: DynamicCache, mask: torch.Tensor, pos: torch.Tensor,
              max_new_tokens: int) -> StepFn:
        """A step continuing ``cache`` through a static cache (:class:`knobctl.model.decoding.DecodePath`)."""
        index = {id(layer): i for i, layer in enumerate(rt.all_layers)}
        running = tuple(index[id(layer)] for layer in rt.lm.layers)
        prompt = mask.shape[1]
        short = [i for i in running if i >= len(cache.layers) or cache.layers[i].get_seq_length() != prompt]
        if short:
            raise ValueError(f"cache layers {short} do not hold the prompt's {prompt} positions; prefill every "
                             "block that runs into the cache first")
        batch = mask.shape[0]
        template = cache.layers[running[0]]
        shape = (batch, cache_length(prompt, max_new_tokens), template.keys.dtype, template.keys.device)
        static = self._static_cache(rt, shape, template)
        for i in running:
            static.layers[i].keys[:, :, :prompt].copy_(cache.layers[i].keys)
            static.layers[i].values[:, :, :prompt].copy_(cache.layers[i].values)
        for layer in static.layers:
            layer.cumulative_length.fill_(prompt)
        full = torch.cat([mask, mask.new_ones(batch, shape[1] - prompt)], dim=1)  # [B, max_len]
        run = decode_step if self.path == "static" else self._compiled(rt, running, shape)
        lm, head = rt.lm, rt.model.lm_head
        state = {"pos": pos}
        graph = self.path == "graph"

        def step(token: torch.Tensor) -> torch.Tensor:
            state["pos"] = state["pos"][..., -1:] + 1  # [(3,) B, 1]
            if graph:  # the previous replay's outputs have been read: the graph may overwrite them
                torch.compiler.cudagraph_mark_step_begin()
            return run(lm, head, token, full, state["pos"], static)  # [B, V]
        return step

    def _static_cache(self, rt: Decodable, shape: tuple[Any, ...], template: Any) -> StaticCache:
        """The runtime's static cache of ``shape`` (batch, length, dtype, device), every layer allocated, so a
        compiled step finds the same tensors (static addresses) on every call."""
        if shape not in self._caches:
            if len(self._caches) >= MAX_CACHES:
                old = next(iter(self._caches))
                del self._caches[old]
                self._steps = {k: v for k, v in self._steps.items() if k[2:] != old}
            static = StaticCache(config=rt.lm.config, max_cache_len=shape[1])
            keys = template.keys.new_zeros(shape[0], *template.keys.shape[1:])  # [B, heads, L, dim]
            values = template.values.new_zeros(shape[0], *template.values.shape[1:])  # [B, heads, L, dim]
            for layer in static.layers:
                layer.lazy_initialization(keys, values)
            self._caches[shape] = static
        return self._caches[shape]

    def _compiled(self, rt: Decodable, running: tuple[int, ...], shape: tuple[Any, ...]) -> Callable[..., torch.Tensor]:
        top_k = tuple(r.top_k for i in running for r in self._layer_routers(rt, i))
        key = (running, top_k, *shape)
        if key not in self._steps:
            experts = getattr(rt.lm.config, "_experts_implementation", None)
            if experts not in COMPILABLE_EXPERTS:
                raise InputError(f"model.decode={self.path} needs an experts kernel that one graph captures "
                                 f"({', '.join(COMPILABLE_EXPERTS)}); the model runs {experts!r}: set "
                                 "model.experts_implementation (profile_latency.experts_implementation for a "
                                 "profile) to grouped_mm, or use model.decode=static or eager")
            # A code object of its own per key: dynamo's compiled graphs and recompile limit are per code object.
            code = decode_step.__code__.replace(co_name=f"decode_step_{len(self._steps)}")
            fn = types.FunctionType(code, decode_step.__globals__, code.co_name)
            mode = "reduce-overhead" if self.path == "graph" else None
            self._steps[key] = torch.compile(fn, fullgraph=True, dynamic=False, mode=mode)
        return self._steps[key]

    def _layer_routers(self, rt: Decodable, index: int) -> list[nn.Module]:
        if index not in self._routers:
            self._routers[index] = layer_routers([rt.all_layers[index]])[0]
        return self._routers[index]


def decoder_for(path: str, device: torch.device) -> StaticDecoder | None:
    """The runtime's decode path for ``model.decode`` (None: eager); ``graph`` off a GPU is an input error."""
    if path not in DECODE_PATHS:
        raise InputError(f"model.decode={path!r}: allowed: {', '.join(DECODE_PATHS)}")
    if path == "graph" and device.type != "cuda":
        raise InputError(f"model.decode=graph replays CUDA graphs and needs a CUDA device; this runtime is on "
                         f"{device.type}: use model.decode=compiled (torch.compile, the fastest path measured on a CPU) "
                         "or eager (docs/LOG.md, \"Decode paths (issue 33)\")")
    return None if path == "eager" else StaticDecoder(path)
