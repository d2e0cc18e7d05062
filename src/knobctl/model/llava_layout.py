"""knobctl's own format: a stock ``LlavaForConditionalGeneration`` (CLIP vision tower, OLMoE language model), the
tiers of its ``knobctl.json`` and a word-level tokenizer; the presets ``tiny`` (the embedded default) and
``molmoe-1b-shape``, and the folders :func:`knobctl.model.runtime.save_runtime` writes.

A tier resizes each image (for a tier of crops: a global view plus a grid of crops) before the vision tower
and may average-pool the patch grid before the projector (:class:`knobctl.model.spec.TierSpec`), so both the
vision tower's input and the visual tokens entering the LLM shrink. The prompt is
``[BOS] <image> x T question [SEP]``; positions count each left-padded row's real tokens.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlavaForConditionalGeneration, PreTrainedTokenizerFast

from knobctl.model.checkpoint import REBUILD, TOKENIZER_FILE, CheckpointError, load_weights
from knobctl.model.families import FAMILIES, Family
from knobctl.model.images import ImageLike, Images, Visual, batch_pixels, tier_pixels
from knobctl.model.layout import Loaded, LoadOptions, random_weights
from knobctl.model.presets import Preset
from knobctl.model.spec import BOS, EOS, IMAGE, PAD, SEP, SPEC_FILE, ModelSpec, TierSpec
from knobctl.model.tokenizer import build_word_tokenizer


@dataclass
class LlavaLayout:
    """The request layout of knobctl's own format (:class:`knobctl.model.layout.ModelLayout`): the tiers of
    ``knobctl.json``, the CLIP tower with the tier's pooling and the projector, the word tokenizer's prompt."""

    tokenizer: Any
    tiers: Mapping[str, TierSpec]
    image_size: int  # the vision config's: the side at which the stages decode dataset images
    patch_size: int
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    source: str
    family: Family = FAMILIES["llava"]
    ids: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        vocab = self.tokenizer.get_vocab()
        self.ids = {tok: vocab[tok] for tok in (PAD, BOS, EOS, SEP, IMAGE)}

    @classmethod
    def of(cls, config: Any, spec: ModelSpec, tokenizer: Any, source: str) -> LlavaLayout:
        """The layout of a LlavaConfig with its knob spec and word tokenizer."""
        vision = config.vision_config
        return cls(tokenizer=tokenizer, tiers=spec.tiers, image_size=vision.image_size, patch_size=vision.patch_size,
                   image_mean=spec.image_mean, image_std=spec.image_std, source=source)

    # ------------------------------------------------------------------ shape
    @property
    def tier_tokens(self) -> dict[str, int] | None:
        return None  # knobctl.json sets the tiers

    @property
    def special_ids(self) -> frozenset[int]:
        return frozenset()  # the word tokenizer's specials besides the runtime's ids: [UNK], a word to the profile

    def token_ids(self, model: nn.Module) -> dict[str, int]:
        if self.ids[IMAGE] != model.config.image_token_id:
            raise ValueError(
                f"{self.source}: tokenizer id of {IMAGE} is {self.ids[IMAGE]} but config.image_token_id is "
                f"{model.config.image_token_id}"
            )
        return dict(self.ids)

    def check_grid(self, model: nn.Module, top_k: Sequence[int], source: str) -> None:
        """Nothing beyond the experts per MoE block, which the grid's own check bounds: OLMoE routes ungrouped."""

    def tier(self, name: str) -> TierSpec:
        if name not in self.tiers:
            raise ValueError(f"tier {name!r} is not defined for {self.source}; it has: {', '.join(self.tiers)}")
        return self.tiers[name]

    def visual_tokens(self, tier: str) -> int:
        return self.tier(tier).num_tokens(self.patch_size)

    def tier_inputs(self, tier: str) -> dict[str, int]:
        spec = self.tier(tier)
        return {"num_images": spec.num_images, "image_size": spec.image_size}

    # ------------------------------------------------------------------ vision
    def pixel_values(self, model: nn.Module, images: ImageLike | Images, tier: str) -> torch.Tensor:
        """Normalised pixels for the vision tower: [B * num_images, 3, S, S] (one image or a batch:
        :func:`knobctl.model.images.as_batch`)."""
        spec = self.tier(tier)
        batch = batch_pixels(images)
        if isinstance(batch, torch.Tensor):
            pix = tier_pixels(batch, spec)
        else:
            pix = torch.cat([tier_pixels(im, spec) for im in batch])
        mean = torch.tensor(self.image_mean).view(1, 3, 1, 1)
        std = torch.tensor(self.image_std).view(1, 3, 1, 1)
        return ((pix - mean) / std).to(next(model.parameters()).device, model.dtype)

    def encode(self, model: nn.Module, images: ImageLike | Images, tier: str) -> Visual:
        """Vision tower + optional pooling + projector: embeds [B, T_visual, H_llm]."""
        spec = self.tier(tier)
        pix = self.pixel_values(model, images, tier)  # [B*n, 3, S, S]
        inner, config = model.model, model.config
        layer = config.vision_feature_layer
        out = inner.vision_tower(pix, output_hidden_states=layer != -1, interpolate_pos_encoding=True)
        feats = out.last_hidden_state if layer == -1 else out.hidden_states[layer]  # [B*n, 1+P, Dv]
        if config.vision_feature_select_strategy == "default":
            feats = feats[:, 1:]
        if spec.pool > 1:
            n, p, d = feats.shape
            side = round(p**0.5)
            grid = feats.transpose(1, 2).reshape(n, d, side, side)
            feats = F.avg_pool2d(grid, spec.pool).flatten(2).transpose(1, 2)  # [B*n, P/pool^2, Dv]
        proj = inner.multi_modal_projector(feats)  # [B*n, t, H]
        return Visual(proj.reshape(-1, spec.num_images * proj.shape[1], proj.shape[-1]))  # [B, T, H]

    # ------------------------------------------------------------------ text
    def prompt_from_ids(self, questions: Sequence[Sequence[int]], num_visual: int) -> list[list[int]]:
        """[BOS] <image> x num_visual question-words [SEP], one list per question."""
        head = [self.ids[BOS]] + [self.ids[IMAGE]] * num_visual
        return [head + list(q) + [self.ids[SEP]] for q in questions]

    def position_inputs(self, model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, image: torch.Tensor,
                        visual: Visual) -> dict[str, Any]:
        return {"position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}  # [B, L]: each row's real tokens from 0


def load_folder(path: Path, family: Family, options: LoadOptions) -> Loaded:
    """A folder :func:`knobctl.model.runtime.save_runtime` wrote: weights, word tokenizer and knob spec."""
    spec = ModelSpec.load(path)
    if spec is None:
        raise CheckpointError(f"{path} has no {SPEC_FILE} (tier layout); copy one from a preset and edit it")
    try:
        tokenizer = PreTrainedTokenizerFast.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # the tokenizers library raises bare Exceptions that name no file
        raise CheckpointError(f"{path / TOKENIZER_FILE} does not load ({exc}); {REBUILD}") from exc
    model = load_weights(LlavaForConditionalGeneration, path, options.dtype or torch.float32)
    return Loaded(model=model, spec=spec, layout=LlavaLayout.of(model.config, spec, tokenizer, options.source))


def build_preset(name: str, preset: Preset, options: LoadOptions) -> Loaded:
    """A preset of random weights, its word tokenizer built from ``options.vocab``."""
    tokenizer = build_word_tokenizer(options.vocab)
    config, spec = preset.make(len(tokenizer), options.dims)
    model = random_weights(LlavaForConditionalGeneration, config, options.device, options.dtype)
    return Loaded(model=model, spec=spec, layout=LlavaLayout.of(config, spec, tokenizer, options.source))
