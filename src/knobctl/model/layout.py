"""The backend interface: what a model format does differently, and what loading one gives.

:class:`knobctl.model.runtime.Runtime` runs every model the same way (knob scopes, left-padded
embeddings, prefill and decoding, the decision block's features); what differs per backend is a
:class:`ModelLayout`, the way a request is laid out for the model: the tiers, the vision path, the prompt
around a question, the token ids the decoding loop uses and the positions. Two backends implement it:

* :class:`knobctl.model.llava_layout.LlavaLayout`: knobctl's own format (Llava + OLMoE, the tiers of
  ``knobctl.json``, a word-level tokenizer);
* :class:`knobctl.model.family_layout.FamilyLayout`: a checkpoint of an HF MoE VLM family as the hub lays
  it out (Qwen3-VL-MoE, GLM-4.5V), with its own tokenizer, chat template and image processor.

:data:`knobctl.model.backends.BACKENDS` maps each backend to the functions that load its checkpoints and
build its presets, each returning a :class:`Loaded`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from knobctl.model.families import Family
from knobctl.model.images import ImageLike, Images, Visual
from knobctl.model.presets import TinyDims
from knobctl.model.spec import ModelSpec


@runtime_checkable
class ModelLayout(Protocol):
    """How one backend lays out a request for its model; :class:`knobctl.model.runtime.Runtime` holds one and
    has no code of its own per backend. Methods that run the model take it as their first argument."""

    family: Family
    tokenizer: Any
    source: str  # the checkpoint or preset, for messages

    @property
    def tiers(self) -> Mapping[str, Any]:
        """Tier name -> what the tier means to the backend (a TierSpec, or visual tokens per image)."""
        ...

    @property
    def image_size(self) -> int:
        """Side at which the stages decode dataset images before the tier's own resize."""
        ...

    @property
    def tier_tokens(self) -> dict[str, int] | None:
        """Visual tokens per image at each tier where params set them (``model.tier_tokens``); None where the
        checkpoint's own files set the tiers."""
        ...

    @property
    def special_ids(self) -> frozenset[int]:
        """Token ids no synthetic question may hold, besides the runtime's ids (PAD, EOS, IMAGE, ...)."""
        ...

    def token_ids(self, model: nn.Module) -> dict[str, int]:
        """The ids the decoding loop and the features use, keyed by knobctl's names (PAD, EOS, IMAGE, ...)."""
        ...

    def check_grid(self, model: nn.Module, top_k: Sequence[int], source: str) -> None:
        """Raise naming a ``knobs.top_k`` value the routers cannot honour for a reason of the backend's own."""
        ...

    def visual_tokens(self, tier: str) -> int:
        """Visual tokens that enter the LLM at a tier (for a square image of :attr:`image_size`)."""
        ...

    def tier_inputs(self, tier: str) -> dict[str, int]:
        """What a tier feeds the vision tower besides the visual tokens: images per request, pixels per side."""
        ...

    def encode(self, model: nn.Module, images: ImageLike | Images, tier: str) -> Visual:
        """The vision path at a tier: one row of visual tokens per request, [B, T, H]."""
        ...

    def prompt_from_ids(self, questions: Sequence[Sequence[int]], num_visual: int) -> list[list[int]]:
        """The prompt around already-tokenized questions, with ``num_visual`` image slots."""
        ...

    def position_inputs(self, model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, image: torch.Tensor,
                        visual: Visual) -> dict[str, Any]:
        """Positions of left-padded prompts (``ids`` and ``mask`` [B, L], ``image`` the image slots) and whatever
        else the forward needs of the images, as :meth:`knobctl.model.runtime.Runtime.embed` returns them."""
        ...


@dataclass(frozen=True)
class LoadOptions:
    """What the caller of ``load_runtime`` chose besides the source."""

    source: str  # as the caller named it, for messages
    device: torch.device
    dtype: torch.dtype | None = None  # None: the checkpoint's own, float32 for a preset
    vocab: Sequence[str] = ()  # texts the tiny preset's word tokenizer is built from
    dims: TinyDims | None = None  # the tiny preset's sizes (None: the defaults)
    tier_tokens: Mapping[str, int] | None = None  # an HF family's visual tokens per tier (None: the family's)


@dataclass(frozen=True)
class Loaded:
    """A model as its backend loaded it, before a block order, device or dtype applies."""

    model: nn.Module
    spec: ModelSpec
    layout: ModelLayout


def random_weights(model_class: type, config: Any, device: torch.device, dtype: torch.dtype | None) -> nn.Module:
    """A preset's model, random weights built directly on the device in ``dtype``: a true-size preset never
    initialises billions of float32 parameters on the CPU first."""
    saved_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype or torch.float32)
    try:
        with device:
            return model_class(config)
    finally:
        torch.set_default_dtype(saved_dtype)
