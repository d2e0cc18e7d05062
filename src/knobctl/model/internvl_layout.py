"""How an InternVL checkpoint with a Qwen3-MoE language model (InternVL3.5-30B-A3B's layout), loaded as it
comes from the hub, lays out a request: the backend ``internvl`` beside :class:`knobctl.model.family_layout.FamilyLayout`.

It shares the family layout's prompt (the checkpoint's chat template and tokenizer, the question tokenized on
its own and checked against the whole prompt's ids at load) and differs in three places:

* **tiles, not pixels.** The image processor cuts an image into square tiles of the vision tower's input side
  (448 px as released), on the grid of at most ``max_patches`` tiles whose aspect is closest to the image's,
  plus a thumbnail of the whole image when there is more than one tile; every tile gives the same number of
  visual tokens (:attr:`InternVLLayout.tile_tokens`: 256 as released, (448 / 14)^2 patches pixel-shuffled
  by ``downsample_ratio`` 0.5). A tier is a cap on visual tokens, applied as ``max_patches``; the high tier is
  the checkpoint's own ``max_patches``, so the full configuration is the model as released.
* **the image's markers come from the processor**: the template holds ``<IMG_CONTEXT>`` once and the stock
  processor puts ``<img>``, the context tokens and ``</img>`` in its place; :meth:`InternVLLayout.image_ids`
  does the same.
* **positions are 1-D** (no M-RoPE): each row's real tokens count from 0, as for knobctl's own format.

The stages decode every dataset image as a square that fills the highest cap up to :data:`STAGE_TILES` tiles.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn

from knobctl.model.checkpoint import load_weights
from knobctl.model.families import Family, family_of
from knobctl.model.family_layout import MAX_NEW_TOKENS, FamilyLayout, pil_images, tier_caps, word_tokenizer
from knobctl.model.images import ImageLike, Images, Visual
from knobctl.model.layout import Loaded, LoadOptions, random_weights
from knobctl.model.presets import Preset
from knobctl.model.spec import ModelSpec

#: Tiles a square dataset image is decoded to fill in the stages: a 3 x 3 grid and its thumbnail.
STAGE_TILES = 10


def tile_tokens(config: Any) -> int:
    """Visual tokens per tile: the vision tower's patches per side, squared, pixel-shuffled by ``downsample_ratio``."""
    vision = config.vision_config
    side = vision.image_size[0] if isinstance(vision.image_size, (list, tuple)) else vision.image_size
    patch = vision.patch_size[0] if isinstance(vision.patch_size, (list, tuple)) else vision.patch_size
    return round((side // patch) ** 2 * config.downsample_ratio ** 2)


def max_patches_for(tokens: int, per_tile: int) -> int:
    """The processor's ``max_patches`` that keeps an image within ``tokens``: a grid of more than one tile
    brings a thumbnail with it."""
    tiles = tokens // per_tile
    return 1 if tiles <= 2 else tiles - 1


def own_tiles_cap(processor: Any, per_tile: int) -> int:
    """Visual tokens per image the checkpoint's processor allows as released."""
    if not getattr(processor, "crop_to_patches", False):
        return per_tile
    return (int(processor.max_patches) + 1) * per_tile


@dataclass
class InternVLLayout(FamilyLayout):
    """InternVL's tiles, image markers and 1-D positions on top of the family layout's prompt."""

    tile_tokens: int = 256

    @property
    def own_cap(self) -> int:
        return own_tiles_cap(self.image_processor, self.tile_tokens)

    def max_patches(self, tier: str) -> int:
        if tier not in self.tiers:
            raise ValueError(f"tier {tier!r} is not defined for {self.source}; it has: {', '.join(self.tiers)}")
        if self.tiers[tier] == self.own_cap:
            return int(self.image_processor.max_patches)
        return max_patches_for(self.tiers[tier], self.tile_tokens)

    @property
    def image_size(self) -> int:
        """Side at which the stages decode dataset images: the square grid of tiles that fills the highest cap
        (up to :data:`STAGE_TILES` tiles)."""
        side = int(self.image_processor.size.height if hasattr(self.image_processor.size, "height")
                   else self.image_processor.size["height"])
        cap = min(max(self.tiers.values()), STAGE_TILES * self.tile_tokens)
        return side * math.isqrt(max_patches_for(cap, self.tile_tokens))

    @property
    def template_image(self) -> str:
        return self.family.image_markers[1]

    def image_text(self, num_visual: int) -> str:
        start, placeholder, end = self.family.image_markers
        return start + placeholder * num_visual + end

    def image_ids(self, num_visual: int) -> list[int]:
        start, _, end = self.family.image_markers
        return [self.tokenizer.convert_tokens_to_ids(start), *[self.image_token_id] * num_visual,
                self.tokenizer.convert_tokens_to_ids(end)]

    def pixels(self, images: ImageLike | Images, tier: str) -> dict[str, torch.Tensor]:
        """The processor's tiles for a batch at a tier: pixel_values [tiles, 3, S, S], num_patches [B]."""
        return self.image_processor(images=pil_images(images), max_patches=self.max_patches(tier), return_tensors="pt")

    def tokens_of(self, pixels: Mapping[str, torch.Tensor]) -> int:
        return int(pixels["num_patches"][0]) * self.tile_tokens

    def encode(self, model: nn.Module, images: ImageLike | Images, tier: str) -> Visual:
        x = self.pixels(images, tier)
        tiles = {int(n) for n in x["num_patches"]}
        if len(tiles) != 1:
            raise ValueError(f"the images of one batch give {sorted(tiles)} tiles at tier {tier!r}; give images of "
                             "one size per batch (the stages decode every image at one size)")
        device = next(model.parameters()).device
        out = model.model.get_image_features(x["pixel_values"].to(device, model.dtype),
                                             vision_feature_layer=model.config.vision_feature_layer,
                                             vision_feature_select_strategy=model.config.vision_feature_select_strategy)
        feats = out.pooler_output  # [tiles, t, H]
        return Visual(embeds=feats.reshape(len(x["num_patches"]), -1, feats.shape[-1]))  # [B, T, H]

    def position_inputs(self, model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, image: torch.Tensor,
                        visual: Visual) -> dict[str, Any]:
        return {"position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}  # [B, L]: each row's real tokens from 0


def layout_of(family: Family, tokenizer: Any, processor: Any, config: Any, overrides: Mapping[str, int] | None,
              source: str) -> InternVLLayout:
    per_tile = tile_tokens(config)
    return InternVLLayout(family=family, tokenizer=tokenizer, image_processor=processor,
                          image_token_id=int(config.image_token_id),
                          tiers=tier_caps(family, own_tiles_cap(processor, per_tile), overrides), source=source,
                          tile_tokens=per_tile)


def load_folder(path: Path, family: Family, options: LoadOptions) -> Loaded:
    """A hub-layout InternVL folder: its model class, tokenizer and PIL image processor (the stock processor also
    builds a video processor, which needs torchvision)."""
    model = load_weights(getattr(transformers, family.model_class), path, options.dtype or torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    processor = getattr(transformers, family.image_processor_class).from_pretrained(path, local_files_only=True)
    layout = layout_of(family, tokenizer, processor, model.config, options.tier_tokens, str(path))
    return Loaded(model=model, spec=ModelSpec(tiers={}, max_new_tokens=MAX_NEW_TOKENS), layout=layout)


def build_preset(name: str, preset: Preset, options: LoadOptions) -> Loaded:
    """InternVL's published shape with random weights, a word tokenizer and the released processor settings
    (448-px tiles, at most 12 and a thumbnail), for latency."""
    config = preset.make()
    family = family_of(config.to_dict(), name)
    side = config.vision_config.image_size
    side = side[0] if isinstance(side, (list, tuple)) else side
    processor = getattr(transformers, family.image_processor_class)(
        size={"height": side, "width": side}, crop_to_patches=True, min_patches=1, max_patches=12)
    layout = layout_of(family, word_tokenizer(config, family, preset.eos), processor, config,
                       options.tier_tokens, name)
    model = random_weights(getattr(transformers, family.model_class), config, options.device, options.dtype)
    model.generation_config.eos_token_id = layout.tokenizer.eos_token_id
    return Loaded(model=model, spec=ModelSpec(tiers={}, max_new_tokens=MAX_NEW_TOKENS), layout=layout)

