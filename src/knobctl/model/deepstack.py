"""Qwen3-VL's DeepStack under skipped blocks: feature ``j`` enters the residual stream after original layer ``j``.

The stock text model adds its DeepStack features after the first layers *by loop position*
(``deepstack_visual_embeds[i]`` after the i-th layer it runs), so with blocks skipped a feature would land on a
later layer than it belongs to. Here every feature is placed by hooks on the layers, by original index:
:func:`deepstack_injected` does it for the runtime's own forwards (prefill, a prefill split at the decision
block, decoding without a cache), and :func:`deepstack_rerouted` hands a stock forward's own DeepStack
arguments to it, so a stock ``model(**inputs)`` or ``generate`` under :func:`knobctl.model.families.knobs_applied`
places them the same way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn


@contextlib.contextmanager
def deepstack_injected(all_layers: Sequence[nn.Module], running: Sequence[nn.Module], inputs: Mapping[str, Any],
                       after: int = -1) -> Iterator[None]:
    """Within the scope, DeepStack feature ``j`` enters the residual stream at the prompt's image positions
    (``inputs['visual_mask']``) right after original layer ``j``: added to that layer's output when it is
    among the ``running`` layers, else to the input of the first running layer after it, which is where
    the stock model puts it when the skipped layers are identities. The forward starts from the residual
    stream after original layer ``after`` (-1: the token embeddings; the two-stage flow continues from the
    decision block's output), which holds every feature ``j <= after`` already: those are not added again.

    The output hooks run before any other forward hook of the layer (``prepend``), so a recorded block
    output (:meth:`knobctl.model.runtime.Runtime.block_outputs`) is the residual stream the next layer reads,
    DeepStack included; a forward over a longer sequence (decoding without a cache) adds to the prompt's
    positions only. A feature is [B, T, H] or, as the stock model passes it, [B * T, H]."""
    features = inputs.get("deepstack") or ()
    if not features:
        yield
        return
    mask = inputs["visual_mask"]  # [B, L]
    index = {id(m): i for i, m in enumerate(all_layers)}
    order = [index[id(m)] for m in running]  # original indices, loop order

    def added(hidden: torch.Tensor, feature: torch.Tensor) -> torch.Tensor | None:
        width = mask.shape[1]
        if hidden.shape[1] < width:  # a decoding step: no image positions
            return None
        extra = torch.zeros_like(hidden[:, :width])  # [B, L, H]
        extra[mask] = feature.reshape(-1, feature.shape[-1]).to(hidden.dtype)
        return torch.cat([hidden[:, :width] + extra, hidden[:, width:]], dim=1)  # [B, L', H]

    def behind(feature: torch.Tensor) -> Callable[..., Any]:
        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            hidden = added(output[0] if isinstance(output, tuple) else output, feature)
            if hidden is None:
                return None
            return (hidden, *output[1:]) if isinstance(output, tuple) else hidden
        return hook

    def ahead(feature: torch.Tensor) -> Callable[..., Any]:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
            hidden = added(args[0], feature)
            return None if hidden is None else (hidden, *args[1:])
        return hook

    handles = []
    for j, feature in enumerate(features):
        if j <= after:
            continue
        if j in order:
            handles.append(all_layers[j].register_forward_hook(behind(feature), prepend=True))
        elif later := [i for i in order if i > j]:
            handles.append(all_layers[later[0]].register_forward_pre_hook(ahead(feature)))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def deepstack_rerouted(decoder: nn.Module, all_layers: Sequence[nn.Module]) -> Iterator[None]:
    """Within the scope, a stock forward of the text ``decoder`` hands its DeepStack arguments
    (``deepstack_visual_embeds``, ``visual_pos_masks``) to :func:`deepstack_injected` for the length of that
    forward instead of adding them by loop position; ``all_layers`` is the decoder's full layer list, whichever
    of them ``decoder.layers`` holds now. A forward without them (the runtime's own) is left as it is."""
    during = contextlib.ExitStack()

    def before(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
               ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        features = kwargs.get("deepstack_visual_embeds")
        if not features:
            return None
        inputs = {"deepstack": tuple(features), "visual_mask": kwargs["visual_pos_masks"]}
        during.enter_context(deepstack_injected(all_layers, module.layers, inputs))
        return args, {**kwargs, "deepstack_visual_embeds": None, "visual_pos_masks": None}

    def after(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        during.close()

    handles = [decoder.register_forward_pre_hook(before, with_kwargs=True),
               decoder.register_forward_hook(after, with_kwargs=True, always_call=True)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        during.close()
