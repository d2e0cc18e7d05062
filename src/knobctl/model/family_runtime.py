"""How a checkpoint of a supported HF MoE VLM family, loaded as it comes from the hub, lays out a request.

:class:`FamilyLayout` is what :class:`knobctl.model.runtime.Runtime` does differently for a Qwen3-VL-MoE or
GLM-4.5V folder than for knobctl's own Llava format: the prompt comes from the checkpoint's chat template
and tokenizer, the image goes through the family's own (PIL) image processor at the tier's visual-token
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
  (:func:`deepstack_injected`), so they stay where they belong when blocks are skipped or a prefill is
  split at the decision block.

The tests hold :meth:`Runtime.answer` on a tiny random checkpoint equal to the stock processor and ``generate``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from PIL import Image
from torch import nn

from knobctl.model.checkpoint import load_weights
from knobctl.model.families import Family, family_of
from knobctl.model.images import ImageLike, Images, Visual, batch_pixels

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

    def visual_tokens(self, tier: str, image_size: int) -> int:
        """Visual tokens a square image of ``image_size`` pixels takes at a tier (the processor's own resize)."""
        key = (tier, image_size)
        if key not in self._counts:
            blank = np.zeros((image_size, image_size, 3), np.uint8)
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
    def embed(self, model: nn.Module, visual: Visual, sequences: Sequence[Sequence[int]], pad: int
              ) -> dict[str, Any]:
        """Left-padded embeddings with the visual tokens in the image slots, and M-RoPE positions [3, B, L]."""
        lm = model.model.language_model
        device = lm.embed_tokens.weight.device
        width = max(len(s) for s in sequences)
        ids = torch.tensor([[pad] * (width - len(s)) + list(s) for s in sequences], device=device)  # [B, L]
        lengths = torch.tensor([len(s) for s in sequences], device=device)  # [B]
        mask = (torch.arange(width, device=device) >= width - lengths[:, None]).long()  # [B, L]
        image = ids == self.image_token_id  # [B, L]
        embeds = lm.embed_tokens(ids).masked_scatter(image[..., None], visual.embeds.to(lm.embed_tokens.weight.dtype))
        positions, _ = model.model.get_rope_index(ids, image.int(), image_grid_thw=visual.grid,
                                                  attention_mask=mask)  # [3, B, L]
        return {"input_ids": ids, "inputs_embeds": embeds, "attention_mask": mask, "position_ids": positions,
                "visual_mask": image, "deepstack": visual.deepstack}


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


def load_family(path: Path, family: Family, tier_tokens: Mapping[str, int] | None, dtype: torch.dtype | None
                ) -> tuple[nn.Module, FamilyLayout]:
    """A hub-layout folder of an HF family: its model class, tokenizer and PIL image processor (the stock
    processors also build a video processor, which needs torchvision), and the layout they make."""
    model = load_weights(getattr(transformers, family.model_class), path, dtype or torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    processor = getattr(transformers, family.image_processor_class).from_pretrained(path, local_files_only=True)
    layout = FamilyLayout(family=family, tokenizer=tokenizer, image_processor=processor,
                          image_token_id=int(model.config.image_token_id),
                          tiers=dict(tier_tokens or dict(family.tier_tokens)), source=str(path))
    return model, layout


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
    output (:meth:`Runtime.block_outputs`) is the residual stream the next layer reads, DeepStack included;
    a forward over a longer sequence (decoding without a cache) adds to the prompt's positions only."""
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

    def behind(feature: torch.Tensor):
        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            hidden = added(output[0] if isinstance(output, tuple) else output, feature)
            if hidden is None:
                return None
            return (hidden, *output[1:]) if isinstance(output, tuple) else hidden
        return hook

    def ahead(feature: torch.Tensor):
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
