"""How a checkpoint of a supported HF MoE VLM family, loaded as it comes from the hub, lays out a request.

:class:`FamilyLayout` is the backend (:class:`knobctl.model.layout.ModelLayout`) of a Qwen3-VL-MoE or
GLM-4.5V folder, beside :class:`knobctl.model.llava_layout.LlavaLayout` for knobctl's own format: the prompt
comes from the checkpoint's chat template and tokenizer, the image goes through the family's own (PIL) image processor at the tier's visual-token
budget and through the model's own vision tower and merger, positions are the family's M-RoPE positions
(``get_rope_index``), and Qwen3-VL's DeepStack features are added at the image's positions after the early
layers. Everything after that (prefill, greedy decoding with a KV cache, cache forks, the decision block's
features, the two-stage flow, cached rollouts, timing) is the Runtime's own code for every family.

The full configuration is the checkpoint as released: the high tier is its own processor's ``size`` (read
from its preprocessor config), and pixels per visual token come from the same config (patch x merge size,
squared, times the temporal patch where the family's resize counts it). A lower tier lowers the cap on pixels;
an image smaller than a cap keeps its own size, as the stock processor keeps it. The tests hold
:meth:`Runtime.answer` at the full configuration equal to the stock processor and ``generate``, for a square
and a non-square image, on checkpoints whose patch size is not the family's released one and whose tokenizer
is byte-level BPE.

Departures from the family's stock processor and ``generate``, each chosen so that the stages can reuse
work across configurations and requests:

* the question is tokenized on its own and placed between the template's token ids before and after it; the
  layout refuses at load a tokenizer whose ids for a whole prompt differ from the pieces' (a BPE merge across
  the question's boundary), so this never silently changes the prompt;
* the stages decode every dataset image as a square of :attr:`FamilyLayout.image_size` pixels, the side
  that fills the highest cap up to :data:`STAGE_TOKENS` visual tokens (a released cap of 16,384 would make every
  image a 4,096-pixel square);
* decoding stops at one token, the first of the checkpoint's end-of-turn ids (``generation_config``);
* DeepStack features are added by hooks on the layers rather than by loop position
  (:mod:`knobctl.model.deepstack`), so they stay where they belong when blocks are skipped or a prefill is
  split at the decision block.
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
from knobctl.params import InputError

#: Stands in for the question while the chat template is rendered, to split the template around it.
QUESTION_MARK = "\x00knobctl-question\x00"
#: Decoding length when params do not set one: VQA answers are a few words.
MAX_NEW_TOKENS = 10
#: The most visual tokens a square dataset image is decoded to fill in the stages (:attr:`FamilyLayout.image_size`).
STAGE_TOKENS = 1280
#: Questions the load-time check tokenizes whole and in pieces (:meth:`FamilyLayout.check_question_boundary`).
PROBE_QUESTIONS = ("What color is the shape?", " is it red?", "How many\nobjects are there", "1+1=?")


def processor_bounds(processor: Any, source: str) -> tuple[int, int]:
    """The image processor's own (min, max) pixels per image: ``size``'s shortest and longest edge."""
    size = processor.size
    get = size.get if isinstance(size, Mapping) else (lambda key: getattr(size, key, None))
    low, high = get("shortest_edge"), get("longest_edge")
    if not low or not high:
        raise InputError(f"{source}: the image processor's size is {dict(size) if isinstance(size, Mapping) else size}"
                         "; knobctl needs its shortest_edge and longest_edge (min and max pixels per image), as the "
                         "family's released preprocessor_config.json gives them")
    return int(low), int(high)


def pixels_per_token(family: Family, processor: Any) -> int:
    """Pixels of the processor's budget per visual token: (patch x merge)^2, times the temporal patch where the
    family's resize counts a still image once per frame of it."""
    side = int(processor.patch_size) * int(processor.merge_size)
    return side * side * (int(processor.temporal_patch_size) if family.budget_counts_frames else 1)


def own_cap(family: Family, processor: Any, source: str) -> int:
    """Visual tokens per image the checkpoint's processor allows as released."""
    return processor_bounds(processor, source)[1] // pixels_per_token(family, processor)


def tier_caps(family: Family, own: int, overrides: Mapping[str, int] | None) -> dict[str, int]:
    """Visual-token caps per tier: ``overrides`` (params' model.tier_tokens) where given, else the family's caps
    for the lower tiers (no higher than the checkpoint's own, ``own``) and the checkpoint's own for the high tier."""
    if overrides:
        return dict(overrides)
    lower = {tier: min(tokens, own) for tier, tokens in family.tier_tokens if tier != "high"}
    return {**lower, "high": own}


def pil_images(images: ImageLike | Images) -> list[Image.Image]:
    """A batch as the PIL images a stock processor takes."""
    batch = batch_pixels(images)
    frames = list(batch) if isinstance(batch, torch.Tensor) else [b[0] for b in batch]  # [3, H, W] each
    return [Image.fromarray((f.permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy()) for f in frames]


@dataclass
class FamilyLayout:
    """A family's prompt, image and position layout, from the checkpoint's own tokenizer and image processor."""

    family: Family
    tokenizer: Any
    image_processor: Any
    image_token_id: int
    tiers: Mapping[str, int]  # tier -> cap on visual tokens per image
    source: str
    _counts: dict[tuple[str, int], int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.head, self.tail, self.after = self._template_pieces()
        self.check_question_boundary()

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
        placeholder = self.family.image_markers[1]
        text = self._prompt_text(QUESTION_MARK)
        before, found, after = text.partition(QUESTION_MARK)
        if before.count(placeholder) != 1 or not found:
            raise ValueError(f"{self.source}: the chat template places {before.count(placeholder)} {placeholder} "
                             "before the question, not 1; knobctl needs one image ahead of the question")
        head, _, tail = before.partition(placeholder)

        def ids(piece: str) -> list[int]:
            return self.tokenizer(piece, add_special_tokens=False)["input_ids"] if piece else []

        return ids(head), ids(tail), ids(after)

    def check_question_boundary(self) -> None:
        """Refuse a tokenizer that would merge a question with the template around it: the pieces' ids must be
        the whole prompt's, as the stock processor tokenizes it."""
        placeholder = self.family.image_markers[1]
        for question in PROBE_QUESTIONS:
            ids = self.tokenizer(question, add_special_tokens=False)["input_ids"]
            pieces = self.prompt_from_ids([ids], 1)[0]
            text = self._prompt_text(question).replace(placeholder, self.image_text(1))
            whole = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            if pieces != whole:
                raise InputError(f"{self.source}: the tokenizer merges the question {question!r} with the chat "
                                 "template around it (the whole prompt's ids differ from the pieces'); knobctl "
                                 "tokenizes questions on their own, so it needs a template that puts a special "
                                 "token or a line break on each side of the question")

    def _prompt_text(self, question: str) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return f"{self.template_image}{question}"

    @property
    def template_image(self) -> str:
        """An image as a chat template writes it, for a checkpoint without one: its start, placeholder and end."""
        return "".join(self.family.image_markers)

    def image_text(self, num_visual: int) -> str:
        """What the stock processor puts in the template's image placeholder: the placeholder ``num_visual`` times."""
        return self.family.image_markers[1] * num_visual

    def image_ids(self, num_visual: int) -> list[int]:
        """The ids of :meth:`image_text`."""
        return [self.image_token_id] * num_visual

    def prompt_from_ids(self, questions: Sequence[Sequence[int]], num_visual: int) -> list[list[int]]:
        """The chat template around already-tokenized questions, its placeholder expanded to ``num_visual``."""
        head = self.head + self.image_ids(num_visual) + self.tail
        return [head + list(q) + self.after for q in questions]

    # ------------------------------------------------------------------ vision
    def processor_size(self, tier: str) -> dict[str, int]:
        """The processor's ``size`` at a tier: its own at the checkpoint's cap, else the tier's cap on pixels
        (the floor lowered with it where the cap falls below the processor's own minimum)."""
        if tier not in self.tiers:
            raise ValueError(f"tier {tier!r} is not defined for {self.source}; it has: {', '.join(self.tiers)}")
        low, high = processor_bounds(self.image_processor, self.source)
        if self.tiers[tier] == own_cap(self.family, self.image_processor, self.source):
            return {"shortest_edge": low, "longest_edge": high}
        cap = self.tiers[tier] * pixels_per_token(self.family, self.image_processor)
        return {"shortest_edge": min(low, cap), "longest_edge": cap}

    @property
    def image_size(self) -> int:
        """Side at which the stages decode dataset images: a square that fills the highest cap (up to
        :data:`STAGE_TOKENS`), so that no tier's image is an upscaled one."""
        side = int(self.image_processor.patch_size) * int(self.image_processor.merge_size)
        return side * math.isqrt(min(max(self.tiers.values()), STAGE_TOKENS))

    def pixels(self, images: ImageLike | Images, tier: str) -> dict[str, torch.Tensor]:
        """The image processor's outputs for a batch at a tier: pixel_values [patches, D], image_grid_thw [B, 3]."""
        return self.image_processor(images=pil_images(images), size=self.processor_size(tier), return_tensors="pt")

    def visual_tokens(self, tier: str) -> int:
        """Visual tokens a square image of :attr:`image_size` pixels takes at a tier (the processor's own resize)."""
        key = (tier, self.image_size)
        if key not in self._counts:
            blank = np.zeros((self.image_size, self.image_size, 3), np.uint8)
            self._counts[key] = self.tokens_of(self.pixels([blank], tier))
        return self._counts[key]

    def tokens_of(self, pixels: Mapping[str, torch.Tensor]) -> int:
        """Visual tokens of the first image of a batch the processor laid out: its patch grid over the merge."""
        return int(pixels["image_grid_thw"][0].prod()) // int(getattr(self.image_processor, "merge_size", 2)) ** 2

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


def word_tokenizer(config: Any, family: Family, eos: tuple[str, int], words: int = 1000) -> Any:
    """A shape preset's tokenizer: the words ``w1 ..`` at ids from 1 (but the markers'), the family's image markers
    and ``eos`` at the ids the config gives them. Latency does not depend on which words a prompt holds."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    start, placeholder, end = family.image_markers
    ids = {placeholder: config.image_token_id, eos[0]: eos[1],
           start: getattr(config, "vision_start_token_id", None) or config.image_start_token_id,
           end: getattr(config, "vision_end_token_id", None) or config.image_end_token_id}
    taken = set(ids.values())  # a word at a marker's id would make the marker's text tokenize to another id
    vocab = {"<unk>": 0, **{f"w{i}": i for i in range(1, words) if i not in taken}, **ids}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token=eos[0],
                                                additional_special_tokens=[start, placeholder, end])


def shape_layout(name: str, config: Any, eos: tuple[str, int], tier_tokens: Mapping[str, int] | None = None,
                 words: int = 1000) -> FamilyLayout:
    """The layout of a random-weight shape preset: a :func:`word_tokenizer` and the family's image processor
    at the config's patch and merge sizes."""
    family = family_of(config.to_dict(), name)
    tokenizer = word_tokenizer(config, family, eos, words)
    vision = config.vision_config
    processor = getattr(transformers, family.image_processor_class)(
        patch_size=vision.patch_size, temporal_patch_size=vision.temporal_patch_size, merge_size=vision.spatial_merge_size)
    tiers = dict(tier_tokens or dict(family.tier_tokens))
    # No released processor config comes with a shape preset: its own cap is its highest tier's.
    processor.size = {"shortest_edge": processor_bounds(processor, name)[0],
                      "longest_edge": max(tiers.values()) * pixels_per_token(family, processor)}
    return FamilyLayout(family=family, tokenizer=tokenizer, image_processor=processor,
                        image_token_id=int(config.image_token_id), tiers=tiers, source=name)


def load_folder(path: Path, family: Family, options: LoadOptions) -> Loaded:
    """A hub-layout folder of an HF family: its model class, tokenizer and PIL image processor (the stock
    processors also build a video processor, which needs torchvision), and the layout they make."""
    model = load_weights(getattr(transformers, family.model_class), path, options.dtype or torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    processor = getattr(transformers, family.image_processor_class).from_pretrained(path, local_files_only=True)
    layout = FamilyLayout(family=family, tokenizer=tokenizer, image_processor=processor,
                          image_token_id=int(model.config.image_token_id),
                          tiers=tier_caps(family, own_cap(family, processor, str(path)), options.tier_tokens),
                          source=str(path))
    return Loaded(model=model, spec=ModelSpec(tiers={}, max_new_tokens=MAX_NEW_TOKENS), layout=layout)


def build_preset(name: str, preset: Preset, options: LoadOptions) -> Loaded:
    """A family's published shape with random weights and a word tokenizer (:func:`shape_layout`), for latency."""
    config = preset.make()
    layout = shape_layout(name, config, preset.eos, options.tier_tokens)
    model = random_weights(getattr(transformers, layout.family.model_class), config, options.device, options.dtype)
    model.generation_config.eos_token_id = layout.tokenizer.eos_token_id
    return Loaded(model=model, spec=ModelSpec(tiers={}, max_new_tokens=MAX_NEW_TOKENS), layout=layout)
