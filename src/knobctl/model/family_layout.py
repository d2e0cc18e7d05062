"""How a checkpoint of a supported HF MoE VLM family, loaded as it comes from the hub, lays out a request.

:class:`FamilyLayout` is the backend (:class:`knobctl.model.layout.ModelLayout`) of a Qwen3-VL-MoE or
GLM-4.5V folder, beside :class:`knobctl.model.llava_layout.LlavaLayout` for knobctl's own format: the prompt
comes from the checkpoint's chat template and tokenizer, the image goes through the family's own (PIL) image processor at the tier's visual-token
budget and through the model's own vision tower and merger, positions are the family's M-RoPE positions
(``get_rope_index``), and Qwen3-VL's DeepStack features are added at the image's positions after the early
layers. Everything after that (prefill, greedy decoding with a KV cache, cache forks, the decision block's
features, the two-stage flow, cached rollouts, timing) is the Runtime's own code for every family.

Departures from the family's stock processor and ``generate``, each chosen so that the stages can reuse
work across configurations and requests:

* the question is tokenized on its own and placed between the template's token ids before and after it
  (a BPE tokenizer could merge across that boundary where the stock processor tokenizes the whole text);
* a tier is a budget that every image fills: the processor's maximum pixels are the tier's and its minimum
  those of the largest square grid within it, so every image is resized, aspect kept, to about the tier's
  visual tokens (the stock processor only caps large images, which would leave a small image at the same
  few tokens in every tier);
* decoding stops at one token, the first of the checkpoint's end-of-turn ids (``generation_config``);
* DeepStack features are added by hooks on the layers rather than by loop position
  (:mod:`knobctl.model.deepstack`), so they stay where they belong when blocks are skipped or a prefill is
  split at the decision block.

The tests hold :meth:`Runtime.answer` on a tiny random checkpoint equal to the stock processor and ``generate``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from PIL import Image
from torch import nn

from knobctl.model.checkpoint import load_weights
from knobctl.model.families import Family, check_top_k, family_of
from knobctl.model.images import ImageLike, Images, Visual, batch_pixels
from knobctl.model.layout import Loaded, LoadOptions, random_weights
from knobctl.model.presets import Preset
from knobctl.model.spec import EOS, IMAGE, PAD, ModelSpec

#: Stands in for the question while the chat template is rendered, to split the template around it.
QUESTION_MARK = "\x00knobctl-question\x00"
#: Decoding length when params do not set one: VQA answers are a few words.
MAX_NEW_TOKENS = 10


@dataclass
class FamilyLayout:
    """A family's prompt, image and position layout, from the checkpoint's own tokenizer and image processor."""

    family: Family
    tokenizer: Any
    image_processor: Any
    image_token_id: int
    tiers: Mapping[str, int]  # tier -> visual tokens per image
    source: str
    _counts: dict[tuple[str, int], int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.head, self.tail, self.after = self._template_pieces()

    # ------------------------------------------------------------------ shape
    @property
    def tier_tokens(self) -> dict[str, int] | None:
        return dict(self.tiers)

    @property
    def special_ids(self) -> frozenset[int]:
        """The chat and image tokens: added tokens of the checkpoint's tokenizer."""
        return frozenset(self.tokenizer.all_special_ids) | frozenset(self.tokenizer.get_added_vocab().values())

    def token_ids(self, model: nn.Module) -> dict[str, int]:
        """The family's own tokens under knobctl's names: the first end-of-turn id of ``generation_config``."""
        eos = model.generation_config.eos_token_id
        eos = eos[0] if isinstance(eos, (list, tuple)) else eos
        eos = self.tokenizer.eos_token_id if eos is None else eos
        if eos is None:
            raise ValueError(f"{self.source}: neither generation_config.json nor the tokenizer names an end "
                             "token; add the model's eos_token_id to generation_config.json")
        pad = self.tokenizer.pad_token_id
        return {PAD: eos if pad is None else pad, EOS: eos, IMAGE: self.image_token_id}

    def check_grid(self, model: nn.Module, top_k: Sequence[int], source: str) -> None:
        """A group-limited router keeps fewer than all experts: say so where the grid asks for more."""
        check_top_k(model.config.to_dict(), self.family, top_k, source)

    def tier_inputs(self, tier: str) -> dict[str, int]:
        return {"max_visual_tokens": self.tiers[tier], "num_images": 1, "image_size": self.image_size}

    # ------------------------------------------------------------------ text
    def _template_pieces(self) -> tuple[list[int], list[int], list[int]]:
        """Token ids of the prompt before the image placeholder, between it and the question, and after the
        question: the chat template where the checkpoint has one, else the family's image markers."""
        start, placeholder, end = self.family.image_markers
        if getattr(self.tokenizer, "chat_template", None):
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION_MARK}]}]
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            text = f"{start}{placeholder}{end}{QUESTION_MARK}"
        before, found, after = text.partition(QUESTION_MARK)
        if before.count(placeholder) != 1 or not found:
            raise ValueError(f"{self.source}: the chat template places {before.count(placeholder)} {placeholder} "
                             "before the question, not 1; knobctl needs one image ahead of the question")
        head, _, tail = before.partition(placeholder)

        def ids(piece: str) -> list[int]:
            return self.tokenizer(piece, add_special_tokens=False)["input_ids"] if piece else []

        return ids(head), ids(tail), ids(after)

    def prompt_from_ids(self, questions: Sequence[Sequence[int]], num_visual: int) -> list[list[int]]:
        """The chat template around already-tokenized questions, its placeholder expanded to ``num_visual``."""
        head = self.head + [self.image_token_id] * num_visual + self.tail
        return [head + list(q) + self.after for q in questions]

    # ------------------------------------------------------------------ vision
    def processor_size(self, tier: str) -> dict[str, int]:
        if tier not in self.tiers:
            raise ValueError(f"tier {tier!r} is not defined for {self.source}; it has: {', '.join(self.tiers)}")
        tokens = self.tiers[tier]
        # The floor is the largest square grid within the budget: a floor at the budget itself would round
        # a square image up past it (the processor rounds each side to whole merged patches).
        return self.family.processor_size(tokens, min_tokens=math.isqrt(tokens) ** 2)

    @property
    def image_size(self) -> int:
        """Side at which the stages decode dataset images: what the largest tier sees of a square image, so
        that no tier's image is an upscaled one."""
        side = int(getattr(self.image_processor, "patch_size", 16)) * int(getattr(self.image_processor, "merge_size", 2))
        return side * math.isqrt(max(self.tiers.values()))

    def pixels(self, images: ImageLike | Images, tier: str) -> dict[str, torch.Tensor]:
        """The image processor's outputs for a batch at a tier: pixel_values [patches, D], image_grid_thw [B, 3]."""
        batch = batch_pixels(images)
        frames = list(batch) if isinstance(batch, torch.Tensor) else [b[0] for b in batch]  # [3, H, W] each
        pil = [Image.fromarray((f.permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy()) for f in frames]
        return self.image_processor(images=pil, size=self.processor_size(tier), return_tensors="pt")

    def visual_tokens(self, tier: str) -> int:
        """Visual tokens a square image of :attr:`image_size` pixels takes at a tier (the processor's own resize)."""
        key = (tier, self.image_size)
        if key not in self._counts:
            blank = np.zeros((self.image_size, self.image_size, 3), np.uint8)
            grid = self.pixels([blank], tier)["image_grid_thw"]
            self._counts[key] = int(grid.prod(-1).sum()) // int(getattr(self.image_processor, "merge_size", 2)) ** 2
        return self._counts[key]

    def encode(self, model: nn.Module, images: ImageLike | Images, tier: str) -> Visual:
        """The family's vision tower and merger at a tier: one row of visual tokens per image."""
        x = self.pixels(images, tier)
        device = next(model.parameters()).device
        grid = x["image_grid_thw"].to(device)  # [B, 3]
        out = model.model.get_image_features(x["pixel_values"].to(device, model.dtype), grid)
        sizes = {int(e.shape[0]) for e in out.pooler_output}
        if len(sizes) != 1:
            raise ValueError(f"the images of one batch give {sorted(sizes)} visual tokens at tier {tier!r}; "
                             "give images of one size per batch (the stages decode every image at one size)")
        deepstack = getattr(out, "deepstack_features", None) or ()
        return Visual(embeds=torch.stack(list(out.pooler_output)), grid=grid,  # [B, T, H]
                      deepstack=tuple(torch.stack(list(f)) for f in deepstack))  # each [B, T, H]

    # ------------------------------------------------------------------ inputs
    def position_inputs(self, model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, image: torch.Tensor,
                        visual: Visual) -> dict[str, Any]:
        """M-RoPE positions [3, B, L], and the image slots with the DeepStack features they take."""
        positions, _ = model.model.get_rope_index(ids, image.int(), image_grid_thw=visual.grid,
                                                  attention_mask=mask)  # [3, B, L]
        return {"position_ids": positions, "visual_mask": image, "deepstack": visual.deepstack}


def shape_layout(name: str, config: Any, eos: tuple[str, int], tier_tokens: Mapping[str, int] | None = None,
                 words: int = 1000) -> FamilyLayout:
    """The layout of a random-weight shape preset: a word tokenizer (the words ``w1 ..`` at ids from 1, the
    family's image markers and ``eos`` at the ids the config gives them) and the family's image processor
    at the config's patch and merge sizes. Latency does not depend on which words a prompt holds."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    family = family_of(config.to_dict(), name)
    start, placeholder, end = family.image_markers
    ids = {placeholder: config.image_token_id, eos[0]: eos[1],
           start: getattr(config, "vision_start_token_id", None) or config.image_start_token_id,
           end: getattr(config, "vision_end_token_id", None) or config.image_end_token_id}
    backend = Tokenizer(models.WordLevel(vocab={"<unk>": 0, **{f"w{i}": i for i in range(1, words)}, **ids},
                                         unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token=eos[0],
                                                     additional_special_tokens=[start, placeholder, end])
    vision = config.vision_config
    processor = getattr(transformers, family.image_processor_class)(
        patch_size=vision.patch_size, temporal_patch_size=vision.temporal_patch_size, merge_size=vision.spatial_merge_size)
    return FamilyLayout(family=family, tokenizer=tokenizer, image_processor=processor,
                        image_token_id=int(config.image_token_id),
                        tiers=dict(tier_tokens or dict(family.tier_tokens)), source=name)


def load_folder(path: Path, family: Family, options: LoadOptions) -> Loaded:
    """A hub-layout folder of an HF family: its model class, tokenizer and PIL image processor (the stock
    processors also build a video processor, which needs torchvision), and the layout they make."""
    model = load_weights(getattr(transformers, family.model_class), path, options.dtype or torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    processor = getattr(transformers, family.image_processor_class).from_pretrained(path, local_files_only=True)
    layout = FamilyLayout(family=family, tokenizer=tokenizer, image_processor=processor,
                          image_token_id=int(model.config.image_token_id),
                          tiers=dict(options.tier_tokens or dict(family.tier_tokens)), source=str(path))
    return Loaded(model=model, spec=ModelSpec(tiers={}, max_new_tokens=MAX_NEW_TOKENS), layout=layout)


def build_preset(name: str, preset: Preset, options: LoadOptions) -> Loaded:
    """A family's published shape with random weights and a word tokenizer (:func:`shape_layout`), for latency."""
    config = preset.make()
    layout = shape_layout(name, config, preset.eos, options.tier_tokens)
    model = random_weights(getattr(transformers, layout.family.model_class), config, options.device, options.dtype)
    model.generation_config.eos_token_id = layout.tokenizer.eos_token_id
    return Loaded(model=model, spec=ModelSpec(tiers={}, max_new_tokens=MAX_NEW_TOKENS), layout=layout)
