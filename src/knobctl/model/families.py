"""Knob adapters for the MoE VLM families: where each keeps its decoder layers, routers and visual-token
setting, and how ``top_k`` and ``num_blocks`` are applied to a loaded HF model and undone.

Every supported family keeps its text decoder's layers at ``model.model.language_model.layers``
and one router per MoE layer at ``layer.mlp.gate``, which stores ``top_k`` as a module attribute at
init and reads it at forward time (editing the config after loading changes nothing); the experts
module takes k from the shape of the router's output, so setting the router is enough.

* ``top_k``: every router after the decision block (block 0) is set to ``top_k``; the decision block
  runs at the model's own top-k. A group-limited router (``n_group``, ``topk_group``) can pick at
  most ``topk_group * num_experts / n_group`` experts: a larger k silently picks excluded experts in
  transformers' code, so :func:`max_top_k` bounds the grid. A router that does not renormalise the
  kept weights (``renormalises`` below) shrinks the MoE output as k falls: the report says so.
* ``num_blocks``: the layers list is swapped for the kept layers, in model order, each keeping its
  ``layer_idx``. In the HF families the KV cache pre-creates one slot per configured layer and reads
  the sequence length from slot 0, so block 0 must be kept (a skipped layer's slot stays empty).
  Qwen3-VL's DeepStack adds visual features after the first executed layers *by loop position*;
  with blocks skipped, :func:`knobs_applied` has a stock forward place feature j after original
  layer j instead (:mod:`knobctl.model.deepstack`), so skipping never shifts a feature onto a later layer.
* ``tier``: a cap on the visual tokens per image, through the family's processor setting that bounds them
  (:attr:`Family.tier_setting`). The high tier is the checkpoint's own processor setting, so the full
  configuration is the model as released; lower tiers lower the cap (:mod:`knobctl.model.family_layout`).

A directory is classified from its ``config.json`` alone (:func:`family_of`), before any weights
are built: a family that is not supported is an error naming the supported ones.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from knobctl.params import InputError

if TYPE_CHECKING:  # the registry serves the stages' --help (knobctl.model.sources), which must not load torch
    from torch import nn

#: The block after which Stage 2 decides; it always runs, at the model's own top-k.
DECISION_BLOCK = 0


class UnsupportedModel(InputError):
    """A model whose family knobctl has no adapter for; the message names the supported families."""


@dataclass(frozen=True)
class Family:
    """One MoE VLM family: what its config calls things and what each knob means for it."""

    model_type: str  # config.json's model_type
    name: str
    text_model_types: tuple[str, ...]  # text_config.model_type values accepted
    experts_keys: tuple[str, ...]  # text config keys that may hold the routed experts per MoE layer (first found)
    renormalises: str  # what the router does with the kept experts' weights
    tier_setting: str  # the processor setting a tier maps to
    # Whether the processor's pixel budget counts a still image once per temporal patch (GLM-4.5V's resize
    # does; Qwen3-VL's does not): pixels per visual token are then temporal_patch x (patch x merge)^2.
    budget_counts_frames: bool = False
    # Caps on visual tokens per image of the lower tiers of a checkpoint (the high tier is its own
    # processor's cap), and all three of a random-weight shape preset; params' model.tier_tokens replaces them.
    tier_tokens: tuple[tuple[str, int], ...] = (("low", 256), ("medium", 576), ("high", 1280))
    deepstack: bool = False  # visual features added after the first layers by loop position
    keep_first_block: bool = True  # the KV cache reads the sequence length from layer 0's slot
    model_class: str = ""  # the transformers class that loads a checkpoint of the family
    image_processor_class: str = ""  # its PIL image processor (the stock processors need torchvision)
    image_markers: tuple[str, str, str] = ("", "", "")  # image start, the placeholder token, image end
    # How its checkpoints load and lay out a request (knobctl.model.backends.BACKENDS): "hub", a folder as the
    # hub lays it out (knobctl.model.family_layout), "internvl", the same with InternVL's tiles
    # (knobctl.model.internvl_layout), or "knobctl", knobctl's own format (knobctl.model.llava_layout)
    backend: str = "hub"
    short_name: str = ""  # the family in a few words, for the stages' --help (model_sources)

    def text_config(self, config: Mapping[str, Any]) -> Mapping[str, Any]:
        return config.get("text_config") or {}

    def num_experts(self, config: Mapping[str, Any]) -> int:
        text = self.text_config(config)
        return int(next((text[k] for k in self.experts_keys if text.get(k)), 0))



FAMILIES: dict[str, Family] = {f.model_type: f for f in (
    Family(model_type="llava", name="Llava + OLMoE (knobctl's own format: the tiny default, molmoe-1b-shape)",
           text_model_types=("olmoe",), experts_keys=("num_experts",),
           renormalises="only with norm_topk_prob (OLMoE: false, so the MoE output shrinks as top_k falls)",
           tier_setting="knobctl.json tiers (image size, crops, pooling)",
           keep_first_block=False,  # knobctl's own decode loop keeps no per-layer cache slots
           backend="knobctl", short_name="Llava + OLMoE"),
    Family(model_type="qwen3_vl_moe", name="Qwen3-VL-MoE (e.g. Qwen3-VL-30B-A3B)", text_model_types=("qwen3_vl_moe_text",),
           # the hub's config.json says num_experts; transformers 5 saves it as num_local_experts
           experts_keys=("num_experts", "num_local_experts"),
           renormalises="always (softmax over all experts, then the kept weights sum to 1)",
           tier_setting="image processor size.longest_edge (max pixels per image)", deepstack=True, model_class="Qwen3VLMoeForConditionalGeneration",
           image_processor_class="Qwen2VLImageProcessorPil",
           image_markers=("<|vision_start|>", "<|image_pad|>", "<|vision_end|>"), short_name="Qwen3-VL-MoE"),
    Family(model_type="glm4v_moe", name="GLM-4.5V (glm4v_moe)", text_model_types=("glm4v_moe_text",),
           experts_keys=("n_routed_experts",),
           renormalises="with norm_topk_prob (GLM-4.5V: true), then times routed_scaling_factor; one shared "
                        "expert always runs",
           tier_setting="image processor size.longest_edge (twice the max pixels per image)",
           budget_counts_frames=True,  # block 0 is dense (first_k_dense_replace): it has no router
           model_class="Glm4vMoeForConditionalGeneration", image_processor_class="Glm4vImageProcessorPil",
           image_markers=("<|begin_of_image|>", "<|image|>", "<|end_of_image|>"), short_name="GLM-4.5V"),
    Family(model_type="internvl", name="InternVL with a Qwen3-MoE language model (e.g. InternVL3.5-30B-A3B)",
           text_model_types=("qwen3_moe",), experts_keys=("num_experts", "num_local_experts"),
           renormalises="with norm_topk_prob (Qwen3-30B-A3B: true)",
           tier_setting="image processor max_patches (448-px tiles per image, 256 visual tokens each, and a "
                        "thumbnail)",
           # one tile; a 2 x 2 grid and its thumbnail; the high tier is the checkpoint's own max_patches
           tier_tokens=(("low", 256), ("medium", 1280), ("high", 2560)),
           model_class="InternVLForConditionalGeneration", image_processor_class="GotOcr2ImageProcessorPil",
           image_markers=("<img>", "<IMG_CONTEXT>", "</img>"), backend="internvl", short_name="InternVL"),
)}


def supported() -> str:
    return ", ".join(f"{f.model_type} ({f.name})" for f in FAMILIES.values())


def family_of(config: Mapping[str, Any], source: str = "the model") -> Family:
    """The family of a parsed ``config.json``; :class:`UnsupportedModel` naming the supported ones otherwise."""
    model_type = config.get("model_type")
    family = FAMILIES.get(str(model_type))
    if family is None:
        raise UnsupportedModel(f"{source}: model_type {model_type!r} is not a supported MoE VLM family; "
                               f"knobctl supports: {supported()}")
    text_type = (config.get("text_config") or {}).get("model_type")
    if text_type not in family.text_model_types:
        raise UnsupportedModel(f"{source}: a {model_type} model whose text model is {text_type!r}; knobctl needs "
                               f"{' or '.join(family.text_model_types)} (a top-k MoE language model)")
    return family


def max_top_k(config: Mapping[str, Any], family: Family) -> int:
    """The largest top-k every router can honour: the number of experts, or for a group-limited router
    the experts of the ``topk_group`` groups it keeps."""
    text = family.text_config(config)
    experts = family.num_experts(config)
    groups, kept = int(text.get("n_group") or 1), int(text.get("topk_group") or 1)
    return experts if groups <= 1 else kept * experts // groups


def check_top_k(config: Mapping[str, Any], family: Family, values: Sequence[int], source: str) -> None:
    """Raise naming the first ``knobs.top_k`` value the model's routers cannot honour."""
    limit = max_top_k(config, family)
    for k in values:
        if not 1 <= k <= limit:
            why = ("its routers keep topk_group of n_group expert groups" if limit < family.num_experts(config)
                   else "its number of experts per MoE layer")
            raise InputError(f"{source}: knobs.top_k={k} is outside 1..{limit} ({why}); use values in that range")


def is_router(module: nn.Module) -> bool:
    return isinstance(getattr(module, "top_k", None), int) and isinstance(getattr(module, "num_experts", None), int)


def decoder(model: nn.Module) -> nn.Module:
    """The text decoder: the module whose ``layers`` the blocks knob swaps."""
    return model.model.language_model


def layer_routers(layers: Sequence[nn.Module]) -> list[list[nn.Module]]:
    """Per decoder layer, its routers (empty for a dense layer)."""
    return [[m for m in layer.modules() if is_router(m)] for layer in layers]


@contextlib.contextmanager
def knobs_applied(model: nn.Module, family: Family, blocks: Iterable[int], top_k: int,
                  all_layers: nn.ModuleList | None = None,
                  routers: Sequence[Sequence[nn.Module]] | None = None) -> Iterator[None]:
    """Within the scope, routers after the decision block pick ``top_k`` experts and only ``blocks``
    run, in model order; everything is restored on exit, exceptions included. ``all_layers`` is the
    full layer list and ``routers`` its :func:`layer_routers` when the caller already holds them (the
    model's own list is swapped in the scope; a runtime called per request should not rescan every
    module each time)."""
    from torch import nn

    from knobctl.model.deepstack import deepstack_rerouted

    lm = decoder(model)
    full = lm.layers if all_layers is None else all_layers
    blocks = list(blocks)
    order = sorted(blocks)
    if not order or len(set(order)) != len(order) or not 0 <= order[0] <= order[-1] < len(full):
        raise ValueError(f"blocks {list(blocks)} must be distinct indices in 0..{len(full) - 1}")
    if family.keep_first_block and order[0] != 0:
        raise ValueError(f"blocks {list(blocks)} skip block 0; a {family.name} model must run it (its KV cache "
                         "reads the sequence length from block 0)")
    routers = layer_routers(full) if routers is None else routers
    flat = [r for rs in routers for r in rs]
    if not flat:
        raise ValueError("the language model has no top-k MoE routers; knobctl needs an MoE LM")
    limit = min(r.num_experts for r in flat)
    if not 1 <= top_k <= limit:
        raise ValueError(f"top_k={top_k} is outside 1..{limit} (the model's experts)")
    saved_k = [r.top_k for r in flat]
    saved_layers = lm.layers
    with contextlib.ExitStack() as scope:
        try:
            for i, rs in enumerate(routers):
                for r in rs:
                    if i != DECISION_BLOCK:
                        r.top_k = top_k
            if len(order) < len(full):
                lm.layers = nn.ModuleList([full[i] for i in order])
                if family.deepstack:
                    scope.enter_context(deepstack_rerouted(lm, full))
            yield
        finally:
            lm.layers = saved_layers
            for r, k in zip(flat, saved_k):
                r.top_k = k

