"""Images in, tier pixels out: every entry point normalises its images through :func:`as_batch`.

A request may hand over a PIL image, an ``HxWx3`` uint8 array, a ``[3, H, W]`` or ``[H, W, 3]``
tensor, encoded bytes or a file path; a batch is a sequence of those or one ``[B, H, W, 3]``
uint8 (or ``[B, 3, H, W]`` float) tensor. :func:`as_batch` tells one image from a batch, so
``rt.answer``, the two-stage flow and the timed fixed-knob request accept the same inputs.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from knobctl.model.spec import TierSpec

ImageLike = Image.Image | np.ndarray | torch.Tensor | bytes | str | Path
Images = Sequence[ImageLike] | torch.Tensor


@dataclass(frozen=True)
class Visual:
    """A batch of images encoded for the language model at one tier (:meth:`Runtime.encode_images`).

    ``grid`` and ``deepstack`` are empty for knobctl's Llava format. The HF families lay out positions
    from each image's patch grid (M-RoPE), and Qwen3-VL adds one DeepStack feature per early layer at
    the image's positions."""

    embeds: torch.Tensor  # [B, T, H]: one row of visual tokens per request, in prompt order
    grid: torch.Tensor | None = None  # [B, 3] (t, h, w) patches of each request's image
    deepstack: tuple[torch.Tensor, ...] = ()  # per injected layer: [B, T, H]

    @property
    def num_tokens(self) -> int:
        """Visual tokens per request."""
        return int(self.embeds.shape[1])


def to_image_tensor(image: ImageLike) -> torch.Tensor:
    """Any supported image -> float tensor [3, H, W] in 0..1 (RGB)."""
    if isinstance(image, (str, Path)):
        with Image.open(image) as im:
            image = im.convert("RGB")
    elif isinstance(image, bytes):
        with Image.open(io.BytesIO(image)) as im:
            image = im.convert("RGB")
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(np.array(image, copy=True))
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"an image must be a PIL image, an array, a tensor, encoded bytes or a path, "
                        f"got {type(image).__name__}")
    if image.ndim != 3:
        raise ValueError(f"an image must be HxWx3 or 3xHxW, got shape {tuple(image.shape)}")
    if image.shape[-1] == 3 and image.shape[0] != 3:
        image = image.permute(2, 0, 1)  # [3, H, W]
    return image.float() / 255.0 if image.dtype == torch.uint8 else image.float()


def is_single_image(images: object) -> bool:
    """True for one image (as opposed to a batch of them)."""
    if isinstance(images, (Image.Image, bytes, str, Path)):
        return True
    return isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 3


def as_batch(images: ImageLike | Images) -> Images:
    """One image or a batch -> a batch: a 4-D tensor stays as it is, anything else becomes a list."""
    if is_single_image(images):
        return [images]
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return torch.from_numpy(np.array(images, copy=True))
    return images


def batch_pixels(images: ImageLike | Images) -> list[torch.Tensor] | torch.Tensor:
    """A batch as float pixels in 0..1: one [B, 3, H, W] tensor, or one [1, 3, H, W] per image
    when the images are given one by one (their sizes may differ)."""
    images = as_batch(images)
    if isinstance(images, torch.Tensor) and images.ndim == 4:
        batch = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        return batch if batch.shape[1] == 3 else batch.permute(0, 3, 1, 2)  # [B, 3, H, W]
    return [to_image_tensor(im).unsqueeze(0) for im in images]


def tier_pixels(images: torch.Tensor, tier: TierSpec) -> torch.Tensor:
    """[B, 3, H, W] in 0..1 -> [B * num_images, 3, S, S]: global image first, then crops row-major."""
    size = tier.image_size
    glob = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    rows, cols = tier.crop_grid
    if rows * cols == 0:
        return glob
    big = F.interpolate(images, size=(rows * size, cols * size), mode="bilinear", antialias=True, align_corners=False)
    b = images.shape[0]
    crops = big.reshape(b, 3, rows, size, cols, size).permute(0, 2, 4, 1, 3, 5)  # [B, r, c, 3, S, S]
    crops = crops.reshape(b, rows * cols, 3, size, size)
    return torch.cat([glob.unsqueeze(1), crops], dim=1).reshape(-1, 3, size, size)
