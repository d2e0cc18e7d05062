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
features are useful at every resolution. Each head reads the visual tokens' mean and their
elementwise max: a property of one small region (the digit of the ``mixed`` source) is a
sixteenth of the mean but all of the max, and a head on the mean alone learnt it about half as
fast (docs/LOG.md, "The vision warm-start on a small glyph").

The warm-start is resumable: every ``checkpoint_every`` steps it hands its whole state
(heads, optimizer, generators, recent accuracies) to a callback, and a run given that
state back continues bit for bit where it stopped.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

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


ACCURACY_WINDOW = 50  # the returned accuracy is the mean over this many last steps


@dataclass(frozen=True)
class WarmStartState:
    """A warm-start after ``step`` steps: with the model's weights, all it takes to go on bit for bit.

    ``torch_rng`` is the global generator's state (it drew the heads' initial weights): restored,
    any later draw from it, in the warm-start or after, gives what an uninterrupted run gets.
    """

    step: int
    heads: dict[str, torch.Tensor]
    optimizer: dict[str, Any]  # torch.optim state_dict
    gen: torch.Tensor  # the warm-start generator's state
    torch_rng: torch.Tensor
    accuracy: dict[str, list[float]]  # per type, the last ACCURACY_WINDOW steps


def snapshot(step: int, heads: nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator,
             acc: Mapping[str, list[float]]) -> WarmStartState:
    """The warm-start's state as copies: training goes on updating its tensors in place."""
    state = opt.state_dict()
    optimizer = {"state": {pid: {k: v.clone() if torch.is_tensor(v) else v for k, v in st.items()}
                           for pid, st in state["state"].items()},
                 "param_groups": state["param_groups"]}
    return WarmStartState(step=step, heads={k: v.clone() for k, v in heads.state_dict().items()}, optimizer=optimizer,
                          gen=gen.get_state(), torch_rng=torch.get_rng_state(),
                          accuracy={t: v[-ACCURACY_WINDOW:] for t, v in acc.items()})


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
    resume: WarmStartState | None = None,
    checkpoint_every: int = 0,
    on_checkpoint: Callable[[WarmStartState], None] | None = None,
) -> dict[str, float]:
    """Train vision tower + projector with linear heads; returns final accuracy per type.

    ``tier_weights`` sets how often each tier is drawn (uniform when None): shape is
    nearly invisible at the low tier, so its gradient there is mostly noise.

    ``resume`` continues from a state that ``on_checkpoint`` was handed (the model must hold
    that moment's weights already); ``on_checkpoint`` gets one every ``checkpoint_every`` steps,
    but not after the last step, which the caller saves along with what follows. Saving reads
    state only, so a run with checkpoints ends exactly like one without.
    """
    if steps <= 0 or not labels.labels:
        return {}
    hidden = rt.config.text_config.hidden_size
    heads = nn.ModuleDict({t: nn.Linear(2 * hidden, len(n)) for t, n in labels.names.items()})
    params = list(rt.model.model.vision_tower.parameters()) + list(rt.model.model.multi_modal_projector.parameters())
    opt = torch.optim.AdamW(params + list(heads.parameters()), lr=lr, weight_decay=0.0)
    targets = {t: torch.from_numpy(v) for t, v in labels.labels.items()}
    tiers = list(rt.spec.tiers)
    weights = torch.tensor([float((tier_weights or {}).get(t, 1.0)) for t in tiers])
    rt.model.train()
    acc: dict[str, list[float]] = {t: [] for t in targets}
    start = 0
    if resume is not None:
        heads.load_state_dict(resume.heads)
        opt.load_state_dict(resume.optimizer)
        gen.set_state(resume.gen)
        torch.set_rng_state(resume.torch_rng)
        acc = {t: list(resume.accuracy.get(t, [])) for t in targets}
        start = resume.step
    bar = progress_bar(range(start, steps), desc="vision warm-start", unit="step", initial=start, total=steps)
    for step in bar:
        idx = torch.randint(0, images.shape[0], (batch_size,), generator=gen)
        tier = tiers[int(torch.multinomial(weights, 1, generator=gen))]
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / 20)
        visual = rt.encode_images(images[idx], tier).embeds  # [B, T, H]
        feats = torch.cat([visual.mean(dim=1), visual.amax(dim=1)], dim=-1)  # [B, 2H]
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
        done = step + 1
        if on_checkpoint is not None and checkpoint_every > 0 and done % checkpoint_every == 0 and done < steps:
            on_checkpoint(snapshot(done, heads, opt, gen, acc))
    return {t: round(float(np.mean(v[-ACCURACY_WINDOW:])), 4) for t, v in acc.items()}
