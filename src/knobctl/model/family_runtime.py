"""A local checkpoint of a supported HF MoE VLM family, loaded as it comes from the hub, answering with knobs.

:func:`load_family_model` loads a directory with the family's own classes (``local_files_only``, no
remote code, safetensors only), its tokenizer and chat template, and its image processor: the PIL
one, since the stock processors build a video processor that needs torchvision. The family is read
from ``config.json`` before any weights are built (:func:`knobctl.model.families.family_of`).

:meth:`FamilyModel.answer` lays a request out as the family's processor does (the chat template's
image placeholder, expanded to one token per merged patch of the image at the tier's size), and
decodes greedily with the model's own ``generate`` inside :func:`knobctl.model.families.knobs_applied`.
The stages do not use it yet: they run knobctl's Llava runtime (:mod:`knobctl.model.runtime`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers
from PIL import Image
from torch import nn

from knobctl.knobs import KnobConfig
from knobctl.model.checkpoint import CheckpointError, checkpoint_family
from knobctl.model.families import Family, decoder, knobs_applied


@dataclass
class FamilyModel:
    """A loaded model of a supported family, its tokenizer and image processor, and its tiers."""

    model: nn.Module
    family: Family
    tokenizer: Any
    image_processor: Any
    source: str
    tiers: Mapping[str, int] = field(default_factory=dict)  # tier -> max visual tokens per image
    last_visual_tokens: list[int] = field(default_factory=list)  # per request of the latest answer()

    @property
    def num_layers(self) -> int:
        return len(decoder(self.model).layers)

    @property
    def image_token_id(self) -> int:
        return int(self.model.config.image_token_id)

    def prompt(self, question: str) -> str:
        """The request as text, with one image placeholder: the checkpoint's chat template where it has one."""
        if getattr(self.tokenizer, "chat_template", None):
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        start, placeholder, end = self.family.image_markers
        return f"{start}{placeholder}{end} {question}"

    def inputs(self, image: Image.Image, question: str, tier: str) -> dict[str, torch.Tensor]:
        """One request's model inputs at a tier, as the family's processor lays them out."""
        if tier not in self.tiers:
            raise ValueError(f"tier {tier!r} is not defined for {self.source}; it has: {', '.join(self.tiers)}")
        pixels = self.image_processor(images=[image.convert("RGB")], size=self.family.processor_size(self.tiers[tier]),
                                      return_tensors="pt")
        merge = int(getattr(self.image_processor, "merge_size", 2))
        count = int(pixels["image_grid_thw"].prod(-1).sum()) // merge**2
        placeholder = self.family.image_markers[1]
        text = self.prompt(question)
        if (found := text.count(placeholder)) != 1:
            raise ValueError(f"{self.source}: the prompt holds {found} {placeholder} placeholders, "
                             "not 1; the chat template does not place one image as the family's processor expects")
        ids = self.tokenizer(text.replace(placeholder, placeholder * count), add_special_tokens=False,
                             return_tensors="pt")["input_ids"]  # [1, L]
        device = next(self.model.parameters()).device
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                  "mm_token_type_ids": (ids == self.image_token_id).int(), **pixels}
        return {k: v.to(device) for k, v in inputs.items()}

    @torch.inference_mode()
    def answer(self, images: Sequence[Image.Image], questions: Sequence[str], knobs: KnobConfig,
               max_new_tokens: int = 16) -> list[str]:
        """Greedy answers, one request at a time, with the knobs applied (the first ``num_blocks`` blocks)."""
        if len(images) != len(questions):
            raise ValueError(f"{len(images)} images but {len(questions)} questions; pass one image per question")
        self.last_visual_tokens = []
        answers = []
        with knobs_applied(self.model, self.family, range(knobs.num_blocks), knobs.top_k):
            for image, question in zip(images, questions):
                x = self.inputs(image, question, knobs.tier)
                self.last_visual_tokens.append(int((x["input_ids"] == self.image_token_id).sum()))
                out = self.model.generate(**x, max_new_tokens=max_new_tokens, do_sample=False)  # [1, L + new]
                answers.append(self.tokenizer.decode(out[0, x["input_ids"].shape[1]:], skip_special_tokens=True).strip())
        return answers


def load_family_model(source: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                      tiers: Mapping[str, int] | None = None) -> FamilyModel:
    """A local HF directory of a supported family, exactly as downloaded; ``tiers`` overrides the family's
    visual tokens per tier. Unsupported families and remote code are refused before any weights are built."""
    path = Path(source)
    family = checkpoint_family(path)
    if not family.model_class:
        raise CheckpointError(f"{path} is knobctl's own {family.name} format: load it with knobctl.load_runtime")
    model = getattr(transformers, family.model_class).from_pretrained(
        path, local_files_only=True, trust_remote_code=False, use_safetensors=True, dtype=dtype or torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    image_processor = getattr(transformers, family.image_processor_class).from_pretrained(path, local_files_only=True)
    model.to(device).eval()
    return FamilyModel(model=model, family=family, tokenizer=tokenizer, image_processor=image_processor,
                       source=str(path), tiers=dict(tiers or family.tier_tokens))
