"""The controller's input features, taken where each stage of the controller decides.

Everything the controller sees is what a request reveals before the work it chooses runs:

* stage 1 (tier), before the vision tower: the **language feature** (below, from the question's token
  embeddings), the **budget** (its code: :mod:`knobctl.controller.policy`) and the **question's length** in
  tokens (it selects the row of the fit mask, the estimated latency of every configuration at that length);
* stage 2 (top_k, blocks), after the decision block at the chosen tier: the **vision feature** at that tier
  (below), the **tier** itself, the language feature and the budget.

The image's size is not a feature yet: every image of the embedded default and every tier of the hub
families is resized to a fixed number of visual tokens, so the size tells the controller nothing. Where a
family's visual tokens follow the image (its processor's own settings), the size is known before the vision
tower runs and belongs in stage 1.

Stage 1 picks the tier before the vision encoder runs, so its feature sees the question
only. Stage 2 picks top_k and blocks after the decision block (block 0, the first transformer
block: :data:`knobctl.model.families.DECISION_BLOCK`) has run over the full prompt at the chosen
tier, so its feature sees the image too. The decision block always runs at the model's
own top-k, so neither feature depends on the knobs being chosen.

:data:`FEATURE_DEFINITIONS` states both features; the accuracy table records it in its metadata.
Stage 1 runs on every request before anything else, so its feature must cost next to nothing:
an embedding lookup, where running the decision block over the question alone cost several
times the controller's whole budget (docs/LOG.md, "After issue 6's controller changes").

The accuracy table caches both, batched, with :func:`language_features` and
:func:`vision_features`. The live two-stage flow computes them for one request with
:func:`language_feature_one` and :func:`vision_feature_one`, which do the pooling in numpy:
in eager torch each of the pooling's small ops pays a dispatch cost that, summed, was a visible
share of a request on the CPU. Tests hold both paths equal.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from knobctl.model.decoding import prefill
from knobctl.model.families import DECISION_BLOCK
from knobctl.model.presets import IMAGE, PAD
from knobctl.model.runtime import Runtime

#: What the two features are (H = the language model's hidden size; both are float32 vectors of 2H).
FEATURE_DEFINITIONS = (
    "language feature of a question: the token embeddings of the question's own tokens (no transformer block): "
    "their mean, then their elementwise max. vision feature of a (question, image, tier): the full prompt "
    "[BOS] <image> x T question [SEP] at that tier (T visual tokens) through the vision tower, the projector, the "
    "embedding and the decision block (block 0). From that block's output, before any norm: the mean over the T "
    "image positions, then the state at [SEP], which has attended to image and question. Both are float32 vectors "
    "of twice the language model's hidden size."
)


def pool_states(states: torch.Tensor, select: torch.Tensor) -> torch.Tensor:
    """[B, L, H] states and a [B, L] bool selection -> [B, 2H]: the selected mean, then the last state."""
    weights = select.to(states.dtype)  # [B, L]
    count = weights.sum(1).clamp(min=1.0)  # [B]
    mean = (states * weights[..., None]).sum(1) / count[:, None]  # [B, H]
    return torch.cat([mean, states[:, -1]], dim=-1).float()  # [B, 2H]


@torch.inference_mode()
def decision_states(rt: Runtime, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The decision block's output over embedded prompts (:meth:`Runtime.embed`): [B, L, H]."""
    with rt.blocks_run([DECISION_BLOCK]), rt.block_outputs(keep_sequence=[DECISION_BLOCK]) as outs:
        prefill(rt, inputs)
    return outs.sequence[DECISION_BLOCK]


def vision_features(rt: Runtime, states: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Stage 2's feature from the decision block's states [B, L, H] of full prompts [B, L]: [B, 2H]."""
    return pool_states(states, input_ids == rt.ids[IMAGE])


def vision_feature_one(rt: Runtime, states: torch.Tensor, input_ids: torch.Tensor) -> np.ndarray:
    """:func:`vision_features` of one prompt (states [1, L, H], ids [1, L]) as float32 numpy [2H]."""
    h = states[0].detach().float().cpu().numpy()  # [L, H]; a view on a float32 CPU model
    select = (input_ids[0] == rt.ids[IMAGE]).cpu().numpy()  # [L]
    mean = h[select].mean(0) if select.any() else np.zeros(h.shape[1], np.float32)  # [H]
    return np.concatenate([mean, h[-1]])  # [2H]


def language_feature_one(rt: Runtime, question_ids: Sequence[int]) -> np.ndarray:
    """:func:`language_features` of one tokenized question as float32 numpy [2H]."""
    if not len(question_ids):
        return np.zeros(2 * rt.lm.embed_tokens.weight.shape[1], np.float32)
    emb = rt.lm.embed_tokens.weight.detach()[list(question_ids)].float().cpu().numpy()  # [W, H]
    return np.concatenate([emb.mean(0), emb.max(0)])  # [2H]


@torch.inference_mode()
def language_features(rt: Runtime, question_ids: Sequence[Sequence[int]]) -> torch.Tensor:
    """Stage 1's feature of tokenized questions: [B, 2H] (mean, then max, of the token embeddings)."""
    width = max(max(len(q) for q in question_ids), 1)
    ids = torch.tensor([list(q) + [rt.ids[PAD]] * (width - len(q)) for q in question_ids], device=rt.device)  # [B, W]
    real = (torch.arange(width, device=rt.device) < torch.tensor([len(q) for q in question_ids],
                                                                   device=rt.device)[:, None])  # [B, W]
    emb = rt.lm.embed_tokens(ids).float()  # [B, W, H]
    mean = (emb * real[..., None]).sum(1) / real.sum(1, keepdim=True).clamp(min=1)  # [B, H]
    top = emb.masked_fill(~real[..., None], float("-inf")).amax(1)  # [B, H]
    return torch.cat([mean, torch.where(real.any(1, keepdim=True), top, torch.zeros_like(top))], dim=-1)
