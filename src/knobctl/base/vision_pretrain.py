"""Warm-start the vision path on image-level labels mined from the training questions.

LLaVA-style models start from a pretrained vision tower; the tiny default has none, and
trained end to end from scratch it learns colour within a few hundred steps but sits at
chance on shape for longer than the time budget allows (the LLM settles on answering
from the question before the vision tower has anything to say). So before the VLM
trains, the CLIP tower and the projector are trained alone for a few hundred cheap
steps (no LLM involved) to classify, per image, the answers of question types whose
answer is a property of the whole image: on easy-VQA, the one shape's colour and its
shape. Labels come from the training split's own answers, so no extra data is used.
The classification heads are thrown away afterwards; every tier is seen, so the
features are useful at every resolution.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from knobctl.execution import progress_bar
from knobctl.model.runtime import Runtime


@dataclass(frozen=True)
class ImageLabels:
    """Per question type: class names and a label per image (-1 where unknown)."""

    names: dict[str, list[str]]
    labels: dict[str, np.ndarray]  # type -> [N_images] int64


def mine_image_labels(df: pd.DataFrame, image_index: np.ndarray, num_images: int, types: Sequence[str]) -> ImageLabels:
    """An image's label for a type is its answer when all its questions of that type agree."""
    names, labels = {}, {}
    for qtype in types:
        rows = np.flatnonzero(df["question_type"].to_numpy() == qtype)
        if len(rows) == 0:
            continue
        answers = pd.Series([df["answers"].iloc[r][0] for r in rows], index=image_index[rows])
        per_image = answers.groupby(level=0).agg(lambda s: s.iloc[0] if s.nunique() == 1 else None).dropna()
        classes = sorted(per_image.unique())
        lab = np.full(num_images, -1, dtype=np.int64)
        lab[per_image.index.to_numpy()] = [classes.index(a) for a in per_image]
        names[qtype], labels[qtype] = classes, lab
    return ImageLabels(names=names, labels=labels)


def pretrain_vision(
    rt: Runtime,
    images: torch.Tensor,
    labels: ImageLabels,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    gen: torch.Generator,
    tier_weights: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """Train vision tower + projector with linear heads; returns final accuracy per type.

    ``tier_weights`` sets how often each tier is drawn (uniform when None): shape is
    nearly invisible at the low tier, so its gradient there is mostly noise.
    """
    if steps <= 0 or not labels.labels:
        return {}
    hidden = rt.config.text_config.hidden_size
    heads = nn.ModuleDict({t: nn.Linear(hidden, len(n)) for t, n in labels.names.items()})
    params = list(rt.model.model.vision_tower.parameters()) + list(rt.model.model.multi_modal_projector.parameters())
    opt = torch.optim.AdamW(params + list(heads.parameters()), lr=lr, weight_decay=0.0)
    targets = {t: torch.from_numpy(v) for t, v in labels.labels.items()}
    tiers = list(rt.spec.tiers)
    weights = torch.tensor([float((tier_weights or {}).get(t, 1.0)) for t in tiers])
    rt.model.train()
    acc: dict[str, list[float]] = {t: [] for t in targets}
    for step in progress_bar(range(steps), desc="vision warm-start", unit="step"):
        idx = torch.randint(0, images.shape[0], (batch_size,), generator=gen)
        tier = tiers[int(torch.multinomial(weights, 1, generator=gen))]
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / 20)
        feats = rt.encode_images(images[idx], tier).mean(dim=1)  # [B, H]
        loss = feats.new_zeros(())
        for t, head in heads.items():
            y = targets[t][idx]  # [B]
            logits = head(feats)  # [B, C]
            loss = loss + F.cross_entropy(logits, y, ignore_index=-1)
            known = y >= 0
            acc[t].append(float((logits.argmax(-1)[known] == y[known]).float().mean()) if known.any() else 0.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return {t: round(float(np.mean(v[-50:])), 4) for t, v in acc.items()}
