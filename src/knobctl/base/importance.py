"""Block importance: what dropping each transformer block alone costs, and the block order it implies.

On calibration samples at the full configuration (the grid's highest tier and top_k), every
block set below is scored three ways against all blocks run:

* VQA accuracy of the greedy answers (:func:`knobctl.model.decoding.generate`, as
  :meth:`Runtime.answer` and the evaluation do), scored with :func:`knobctl.vqa.metric.vqa_score`;
* mean log-likelihood per token of the reference answer and EOS under teacher forcing
  (:func:`knobctl.model.decoding.teacher_forced`, base training's loss with the sign flipped);
* mean KL(full || dropped) of the next-token distributions at those same answer tokens.

Each block alone is dropped once, block 0 included for the record (not on an HF family, whose KV cache
needs block 0 to run); the ranking puts block 0
first whatever it measured (it is the decision block and always runs), then the others by
``rank_by``. With that order the cumulative curve drops the least important blocks first, down
to the grid's lowest block count, beside the ``first`` policy's curve (blocks 0..N-1). Agreement
is the Spearman correlation of the rankings made on two seeded halves of the samples.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from knobctl.execution import progress_bar
from knobctl.io import rounded
from knobctl.knobs import KnobGrid
from knobctl.model.decoding import generate, teacher_forced
from knobctl.model.families import DECISION_BLOCK
from knobctl.model.presets import EOS
from knobctl.model.runtime import Runtime
from knobctl.model.screen import Askable, askable
from knobctl.params import build, require, require_choice, require_device, require_int
from knobctl.vqa.metric import vqa_score
from knobctl.vqa.sources import decode_images, select_samples

RANK_BY = ("loglik", "kl", "accuracy")


@dataclass(frozen=True)
class ImportanceParams:
    """The ``block_importance:`` section of params.yaml."""

    source: str = "models/base"
    split: str = "train"
    num_samples: int | None = 300
    rank_by: str = "loglik"
    batch_size: int = 300
    device: str = "auto"
    num_threads: int = 0

    def __post_init__(self) -> None:
        # val feeds the accuracy table and test the validate stage; an order fitted there would leak into them.
        require(self.split in ("train", "val"), "block_importance.split", self.split,
                "allowed: train, val (keep test for the validate stage)")
        if self.num_samples is not None:
            require_int(self.num_samples, "block_importance.num_samples", 2)
        require_choice(self.rank_by, "block_importance.rank_by", RANK_BY)
        require_int(self.batch_size, "block_importance.batch_size")
        require_int(self.num_threads, "block_importance.num_threads", 0)
        require_device(self.device, "block_importance.device")

    @classmethod
    def from_params(cls, section: Mapping[str, Any]) -> ImportanceParams:
        return build(cls, section, "block_importance")


@dataclass(frozen=True)
class Batch:
    """Calibration samples encoded once: the vision tower does not depend on the blocks."""

    visual: torch.Tensor  # [B, T, H] at the full tier
    questions: list[list[int]]
    targets: list[list[int]]  # reference answer + EOS
    answers: list[list[str]]  # every reference answer, for the VQA score


@dataclass(frozen=True)
class SampleFigures:
    """One block set's figures per sample, as sums so any subset's means follow (the halves)."""

    score: np.ndarray  # [N] VQA score of the greedy answer
    loglik: np.ndarray  # [N] summed over the sample's answer tokens
    kl: np.ndarray  # [N] summed over the sample's answer tokens


@dataclass(frozen=True)
class Figures:
    """Means over samples (accuracy) or answer tokens (loglik, kl)."""

    accuracy: float
    loglik: float
    kl: float


@dataclass(frozen=True)
class BlockFigures:
    """What dropping one block alone does; drops are full minus dropped (positive = it hurts)."""

    block: int
    accuracy: float
    accuracy_drop: float
    loglik: float
    loglik_drop: float
    kl: float


def reference_answer(answers: Sequence[str]) -> str:
    """The most frequent answer (first on ties): easy-VQA has one; VQAv2's ten may disagree."""
    return max(dict.fromkeys(answers), key=list(answers).count)


@torch.inference_mode()
def encode(rt: Runtime, df: pd.DataFrame, tier: str, batch_size: int, images: np.ndarray | None = None) -> list[Batch]:
    """The samples in batches, their images (``images`` if already decoded at the model's size) through the vision
    tower at ``tier``."""
    if images is None:
        images = decode_images(df["image"].tolist(), size=rt.image_size)
    images = torch.from_numpy(images)  # [N, S, S, 3] uint8
    tok = rt.tokenizer
    questions = tok(df["question"].tolist(), add_special_tokens=False)["input_ids"]
    refs = tok([reference_answer(a) for a in df["answers"]], add_special_tokens=False)["input_ids"]
    answers = [list(a) for a in df["answers"]]
    eos = rt.ids[EOS]
    return [Batch(visual=rt.encode_images(images[s:s + batch_size], tier), questions=questions[s:s + batch_size],
                  targets=[r + [eos] for r in refs[s:s + batch_size]], answers=answers[s:s + batch_size])
            for s in range(0, len(df), batch_size)]


class Measurer:
    """Scores block sets on the calibration batches, each set once; KL is taken from all blocks run."""

    def __init__(self, rt: Runtime, batches: Sequence[Batch], top_k: int):
        self.rt, self.batches, self.top_k = rt, batches, top_k
        self.full = tuple(range(rt.num_layers))
        self.reference: list[torch.Tensor] = []  # per batch [B, S, V] log-probs of the full model
        self.memo: dict[tuple[int, ...], SampleFigures] = {}
        self.tokens = np.array([len(t) for b in batches for t in b.targets], dtype=np.float64)  # [N]

    @torch.inference_mode()
    def __call__(self, blocks: Sequence[int]) -> SampleFigures:
        key = tuple(sorted(blocks))
        if key in self.memo:
            return self.memo[key]
        if key != self.full and self.full not in self.memo:
            self(self.full)  # the KL reference comes first
        rt, parts = self.rt, []
        for i, b in enumerate(self.batches):
            with rt.blocks_applied(key, self.top_k):
                inputs = rt.embed(b.visual, rt.prompt_from_ids(b.questions, b.visual.num_tokens))
                preds = rt.decode(generate(rt, inputs, rt.spec.max_new_tokens))
                logits, labels = teacher_forced(rt, b.visual, b.questions, b.targets)  # [B, S, V], [B, S]
            logp = F.log_softmax(logits.float(), dim=-1)  # [B, S, V]
            if key == self.full:
                self.reference.append(logp)
            valid = labels >= 0  # [B, S]
            ll = logp.gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)  # [B, S]
            kl = F.kl_div(logp, self.reference[i], log_target=True, reduction="none").sum(-1)  # [B, S]
            parts.append((np.array([vqa_score(p, a) for p, a in zip(preds, b.answers)]),
                          (ll * valid).sum(1).double().cpu().numpy(), (kl * valid).sum(1).double().cpu().numpy()))
        figures = SampleFigures(*(np.concatenate(col) for col in zip(*parts)))
        self.memo[key] = figures
        return figures

    def figures(self, blocks: Sequence[int], rows: np.ndarray | None = None) -> Figures:
        f = self(blocks)
        rows = np.arange(len(self.tokens)) if rows is None else rows
        tokens = self.tokens[rows].sum()
        return Figures(float(f.score[rows].mean()), float(f.loglik[rows].sum() / tokens),
                       float(f.kl[rows].sum() / tokens))


def block_figures(full: Figures, dropped: Mapping[int, Figures]) -> list[BlockFigures]:
    return [BlockFigures(b, f.accuracy, full.accuracy - f.accuracy, f.loglik, full.loglik - f.loglik, f.kl)
            for b, f in sorted(dropped.items())]


def rank_blocks(per_block: Sequence[BlockFigures], rank_by: str) -> tuple[int, ...]:
    """Block 0 first (the decision block always runs), then the largest cost of dropping first:
    ``rank_by``'s figure, ties broken by the log-likelihood drop, then the lower block index."""
    require_choice(rank_by, "block_importance.rank_by", RANK_BY)
    primary = {"loglik": "loglik_drop", "kl": "kl", "accuracy": "accuracy_drop"}[rank_by]
    rest = sorted((f for f in per_block if f.block != DECISION_BLOCK),
                  key=lambda f: (-getattr(f, primary), -f.loglik_drop, f.block))
    return (DECISION_BLOCK, *(f.block for f in rest))


def spearman(order_a: Sequence[int], order_b: Sequence[int]) -> float | None:
    """Rank correlation of two orders over the blocks after block 0 (None for fewer than two).

    Orders are permutations, so ranks never tie and the closed form is exact."""
    a = [b for b in order_a if b != DECISION_BLOCK]
    pos_b = {blk: i for i, blk in enumerate(b for b in order_b if b != DECISION_BLOCK)}
    n = len(a)
    if n < 2:
        return None
    d2 = sum((i - pos_b[blk]) ** 2 for i, blk in enumerate(a))
    return 1 - 6 * d2 / (n * (n * n - 1))


def cost_pct(full: float, value: float) -> float | None:
    """Relative accuracy lost, in % of the full configuration's (None when that is 0)."""
    return 100 * (full - value) / full if full > 0 else None


def likelihood_cost_pct(loglik_drop: float) -> float:
    """% fall of the reference tokens' geometric-mean probability: a log-likelihood drop as a share."""
    return 100 * (1 - math.exp(-loglik_drop))


def curve_point(n: int, dropped: Sequence[int], full: Figures, f: Figures, first: Figures) -> dict[str, Any]:
    """One count of the curve: the ranked order's figures beside the ``first`` policy's."""
    return {"num_blocks": n, "dropped": list(dropped),
            "accuracy": rounded(f.accuracy, 4), "accuracy_cost_pct": rounded(cost_pct(full.accuracy, f.accuracy), 2),
            "loglik": rounded(f.loglik, 6), "loglik_drop": rounded(full.loglik - f.loglik, 6),
            "likelihood_cost_pct": rounded(likelihood_cost_pct(full.loglik - f.loglik), 2), "kl": rounded(f.kl, 6),
            "first_accuracy": rounded(first.accuracy, 4),
            "first_accuracy_cost_pct": rounded(cost_pct(full.accuracy, first.accuracy), 2),
            "first_loglik": rounded(first.loglik, 6), "first_loglik_drop": rounded(full.loglik - first.loglik, 6)}


def importance_samples(rt: Runtime, df: pd.DataFrame, params: ImportanceParams, seed: int) -> Askable:
    """The split's seeded ``num_samples``, less those the model cannot be asked (an undecodable image, a question
    over its positions): those are counted, as the accuracy table's error rows are."""
    return askable(rt, select_samples(df, params.num_samples, seed, params.split, key="block_importance.num_samples"),
                   "block_importance")


def measure_importance(rt: Runtime, samples: pd.DataFrame, grid: KnobGrid, params: ImportanceParams,
                       seed: int, images: np.ndarray | None = None) -> dict[str, Any]:
    """Per-block figures, the order, its cumulative curve and the halves' agreement (module docstring), on
    ``samples`` and their decoded ``images`` (both :func:`importance_samples`'; None: decoded here)."""
    rt.validate_grid(grid)
    tier, top_k, layers = grid.full.tier, grid.full.top_k, rt.num_layers
    measure = Measurer(rt, encode(rt, samples, tier, params.batch_size, images), top_k)
    everything = list(range(layers))
    # An HF family's KV cache cannot run without block 0 (knobctl.model.families): its cost is not measured there.
    droppable = [b for b in everything if b != DECISION_BLOCK or not rt.family.keep_first_block]
    drop_sets = {b: [i for i in everything if i != b] for b in droppable}
    for blocks in progress_bar([everything, *drop_sets.values()], desc="block_importance", unit="block set"):
        measure(blocks)
    full = measure.figures(everything)
    per_block = block_figures(full, {b: measure.figures(s) for b, s in drop_sets.items()})
    order = rank_blocks(per_block, params.rank_by)

    halves = np.array_split(np.random.default_rng([seed, 1]).permutation(len(samples)), 2)
    half_orders = []
    for rows in halves:
        half_full = measure.figures(everything, rows)
        half_orders.append(rank_blocks(block_figures(
            half_full, {b: measure.figures(s, rows) for b, s in drop_sets.items()}), params.rank_by))

    counts = range(layers, min(grid.num_blocks) - 1, -1)
    curve_sets = [(sorted(order[:n]), list(range(n))) for n in counts]
    todo = [s for pair in curve_sets for s in pair if tuple(s) not in measure.memo]
    for blocks in progress_bar(list({tuple(s): s for s in todo}.values()), desc="block_importance curve",
                               unit="block set"):
        measure(blocks)
    curve = [curve_point(n, [b for b in everything if b not in ranked], full, measure.figures(ranked),
                         measure.figures(first)) for n, (ranked, first) in zip(counts, curve_sets)]

    return {
        "order": list(order),
        "rank_by": params.rank_by,
        "config": {"tier": tier, "top_k": top_k, "num_blocks": layers},
        "full": {"accuracy": rounded(full.accuracy, 4), "loglik": rounded(full.loglik, 6)},
        "per_block": [{"block": f.block, "accuracy": rounded(f.accuracy, 4), "accuracy_drop": rounded(f.accuracy_drop, 4),
                       "accuracy_cost_pct": rounded(cost_pct(full.accuracy, f.accuracy), 2), "loglik": rounded(f.loglik, 6),
                       "loglik_drop": rounded(f.loglik_drop, 6), "kl": rounded(f.kl, 6)} for f in per_block],
        "curve": curve,
        "half_orders": [list(o) for o in half_orders],
        "agreement_spearman": rounded(spearman(*half_orders), 4),
        "n_samples": len(samples),
        "answer_tokens": int(measure.tokens.sum()),
        "split": params.split,
    }


def headline(result: Mapping[str, Any]) -> dict[str, Any]:
    """The metrics file's headline: block 0's accuracy cost, that of dropping 1, 2, ... blocks least
    important first (MolmoE-1B, published: 62.7%, then 3.1 / 5.4 / 7.5 / 18.4%), the likelihood cost
    at the lowest count, and the halves' agreement."""
    layers = result["config"]["num_blocks"]
    block0 = next((p for p in result["per_block"] if p["block"] == DECISION_BLOCK), {})
    out: dict[str, Any] = {"full_accuracy": result["full"]["accuracy"],
                           "block0_accuracy_cost_pct": block0.get("accuracy_cost_pct")}
    out |= {f"drop{layers - p['num_blocks']}_accuracy_cost_pct": p["accuracy_cost_pct"] for p in result["curve"][1:]}
    if len(result["curve"]) > 1:
        lowest = result["curve"][-1]
        out[f"drop{layers - lowest['num_blocks']}_likelihood_cost_pct"] = lowest["likelihood_cost_pct"]
    out["agreement_spearman"] = result["agreement_spearman"]
    return out


def metrics(result: Mapping[str, Any], error_samples: int = 0) -> dict[str, Any]:
    """metrics/block_importance.json: the headline (the run's size, its ranking and every count's cost are in the
    result file) and the selected samples the model could not be asked."""
    return {"headline": {**headline(result), "error_samples": error_samples}}


def summary_line(result: Mapping[str, Any], wall_s: float) -> str:
    """The stage's last line: the order, the costs beside MolmoE-1B's, the agreement."""
    h = headline(result)
    drops = " / ".join("n/a" if v is None else f"{v:.1f}" for k, v in h.items()
                       if k.startswith("drop") and k.endswith("accuracy_cost_pct"))
    agree = result["agreement_spearman"]
    block0 = h["block0_accuracy_cost_pct"]
    return (f"block_importance: {result['n_samples']} samples in {wall_s:.0f} s; order {result['order']} "
            f"(by {result['rank_by']}); full accuracy {h['full_accuracy']:.3f}; accuracy cost of dropping 1.. "
            f"blocks {drops}%, block 0 alone {'n/a' if block0 is None else f'{block0:.1f}'}%; halves agree "
            f"(Spearman) {'n/a' if agree is None else f'{agree:.2f}'}")
