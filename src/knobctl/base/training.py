"""Train the embedded default (``tiny``) on a VQA table, end to end, under a knob recipe.

Which computation each batch runs through is the recipe (``train_base.knob_sampling``,
:mod:`knobctl.base.recipe`): ``uniform`` draws one knob configuration per batch from the grid,
so every exit and every top-k trains to the same quality; ``pretrained`` trains at the full
configuration with varied tiers, LayerDrop and a share of reduced top-k batches, so the knobs
degrade the model at inference as they degrade a pretrained MoE VLM. The loss is next-token
cross-entropy on the answer words and the end token only (the prompt is not a target).

Departures from a plain LLaVA recipe, on purpose: no frozen or pretrained parts (the
whole model trains from scratch, end to end); the router load-balancing loss is off by default
(``router_aux_loss``; :mod:`knobctl.base.router_balance` names its own departures) because the
default's top-k is all of its experts, where the loss is constant; a linear warm-up, a
constant plateau, then cosine decay over the last ``decay_fraction`` of the steps,
so learning takes off before the rate falls.

The run is resumable: every ``checkpoint_every`` steps of either phase (the vision
warm-start, then the VLM steps), and once between the two, the weights, optimizer state
and RNG state go to a checkpoint folder (safetensors + JSON); a rerun with the same
params continues from there and ends with the same weights as an uninterrupted run.
Saving only reads state, so a run with checkpoints gives the same weights as one without.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from knobctl.base.recipe import KNOB_SAMPLINGS, draw_batch_knobs
from knobctl.base.router_balance import balance_loss, router_logits_recorded
from knobctl.base.vision_pretrain import WarmStartState, mine_image_labels, pretrain_vision
from knobctl.execution import deterministic, progress_bar
from knobctl.io import atomic_dir, params_hash, recover_dir
from knobctl.knobs import TIER_ORDER, KnobConfig, KnobGrid
from knobctl.model.decoding import teacher_forced
from knobctl.model.presets import EOS, ModelParams
from knobctl.model.runtime import Runtime, load_runtime
from knobctl.params import build, require, require_choice, require_int
from knobctl.vqa.sources import decode_images


@dataclass(frozen=True)
class TrainBaseParams:
    """The ``train_base:`` section of params.yaml."""

    steps: int = 3000
    batch_size: int = 128
    lr: float = 1e-3
    warmup_steps: int = 50
    decay_fraction: float = 0.3
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    checkpoint_every: int = 200
    eval_batch_size: int = 256
    eval_max_samples: int | None = 1500
    type_sampling_power: float = 1.0
    vision_warmstart_steps: int = 600
    vision_warmstart_lr: float = 0.002
    vision_warmstart_types: tuple[str, ...] = ("color", "pattern", "shape", "text")
    vision_warmstart_tier_weights: Mapping[str, float] | None = field(
        default_factory=lambda: {"low": 0.0, "medium": 0.0, "high": 1.0})
    num_threads: int = 0
    knob_sampling: str = "pretrained"
    tier_weights: Mapping[str, float] | None = None
    reduced_topk_share: float = 0.0
    layer_drop: float = 0.0
    router_aux_loss: float = 0.0

    def __post_init__(self) -> None:
        require_choice(self.knob_sampling, "train_base.knob_sampling", KNOB_SAMPLINGS)
        require(0 <= self.reduced_topk_share <= 1, "train_base.reduced_topk_share", self.reduced_topk_share,
                "use a share of batches in [0, 1]")
        require(self.router_aux_loss >= 0, "train_base.router_aux_loss", self.router_aux_loss,
                "use a weight >= 0 for the load-balancing loss (0 = none; OLMoE trained with 0.01)")
        require(0 <= self.layer_drop < 1, "train_base.layer_drop", self.layer_drop,
                "use a skip probability in [0, 1) for the last block (0 = no LayerDrop)")
        for name in ("steps", "batch_size", "checkpoint_every", "eval_batch_size"):
            require_int(getattr(self, name), f"train_base.{name}")
        for name in ("warmup_steps", "vision_warmstart_steps", "num_threads"):
            require_int(getattr(self, name), f"train_base.{name}", 0)
        if self.eval_max_samples is not None:
            require_int(self.eval_max_samples, "train_base.eval_max_samples")
        require(self.lr > 0, "train_base.lr", self.lr, "use a positive learning rate such as 1e-3")
        require(self.vision_warmstart_lr > 0, "train_base.vision_warmstart_lr", self.vision_warmstart_lr,
                "use a positive learning rate such as 2e-3")
        require(0 <= self.type_sampling_power <= 1, "train_base.type_sampling_power", self.type_sampling_power,
                "use 0 (equal shares) .. 1 (as in the data)")
        require(0 <= self.decay_fraction <= 1, "train_base.decay_fraction", self.decay_fraction,
                "use a fraction in [0, 1]")
        require(0 <= self.min_lr_ratio <= 1, "train_base.min_lr_ratio", self.min_lr_ratio, "use a ratio in [0, 1]")
        require(self.weight_decay >= 0 and self.grad_clip > 0, "train_base.weight_decay/grad_clip",
                (self.weight_decay, self.grad_clip), "weight_decay must be >= 0 and grad_clip > 0")
        for name in ("vision_warmstart_tier_weights", "tier_weights"):
            weights = getattr(self, name)
            if weights is not None:
                require(not set(weights) - set(TIER_ORDER), f"train_base.{name}", dict(weights),
                        f"map tier names ({', '.join(TIER_ORDER)}) to non-negative weights")
                require(all(w >= 0 for w in weights.values()) and sum(weights.values()) > 0,
                        f"train_base.{name}", dict(weights), "weights must be >= 0 and not all 0")

    @classmethod
    def from_params(cls, section: Mapping[str, Any]) -> TrainBaseParams:
        return build(cls, section, "train_base")


def lr_at(step: int, p: TrainBaseParams) -> float:
    """Warm-up, plateau, then cosine decay to ``min_lr_ratio * lr`` over the last steps."""
    if step < p.warmup_steps:
        return p.lr * (step + 1) / p.warmup_steps
    decay_start = int(p.steps * (1 - p.decay_fraction))
    if step < decay_start:
        return p.lr
    frac = (step - decay_start) / max(1, p.steps - decay_start)
    return p.lr * (p.min_lr_ratio + (1 - p.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


@dataclass(frozen=True)
class EncodedSplit:
    """A split ready for batching: decoded images, question and answer token ids."""

    images: torch.Tensor  # [N_images, H, W, 3] uint8
    image_index: np.ndarray  # [N] row -> image
    questions: list[list[int]]
    answers: list[list[int]]
    types: np.ndarray  # [N] row -> question type code


def encode_split(rt: Runtime, df: pd.DataFrame, size: int) -> EncodedSplit:
    codes, _ = pd.factorize(df["image_id"])
    first = pd.Series(range(len(df))).groupby(codes).first().to_numpy()
    images = torch.from_numpy(decode_images(df["image"].iloc[first].tolist(), size=size))
    tok = rt.tokenizer
    questions = tok(df["question"].tolist(), add_special_tokens=False)["input_ids"]
    answers = tok([a[0] for a in df["answers"]], add_special_tokens=False)["input_ids"]
    types = pd.factorize(df["question_type"], sort=True)[0]
    return EncodedSplit(images=images, image_index=np.asarray(codes), questions=questions, answers=answers, types=types)


def type_pools(data: EncodedSplit, power: float) -> tuple[list[np.ndarray], torch.Tensor]:
    """Rows of each question type, and each type's share of a batch: frequency ** power.

    power 1 samples questions as they come; 0 gives every type an equal share. Why not 1:
    easy-VQA is 74% yes/no, whose answers the question text alone predicts to about 0.79,
    and a model fed mostly those settles on that prior before it learns colour or shape.
    """
    pools = [np.flatnonzero(data.types == t) for t in np.unique(data.types)]
    weights = torch.tensor([len(p) for p in pools], dtype=torch.float64) ** power
    return pools, weights / weights.sum()


def sample_rows(pools: list[np.ndarray], shares: torch.Tensor, batch_size: int, gen: torch.Generator) -> np.ndarray:
    """Row indices of one batch: a type per row by ``shares``, then a row of that type."""
    kind = torch.multinomial(shares, batch_size, replacement=True, generator=gen).numpy()
    picks = torch.rand(batch_size, generator=gen, dtype=torch.float64).numpy()
    return np.array([pools[k][int(p * len(pools[k]))] for k, p in zip(kind, picks)])


def batch_loss(rt: Runtime, data: EncodedSplit, rows: np.ndarray, knobs: KnobConfig,
               blocks: Sequence[int] | None = None) -> torch.Tensor:
    """Answer cross-entropy of one batch under one knob configuration (``blocks``: exactly these blocks run)."""
    eos = rt.ids[EOS]
    scope = rt.knobs_applied(knobs) if blocks is None else rt.blocks_applied(blocks, knobs.top_k)
    with scope:
        visual = rt.encode_images(data.images[data.image_index[rows]], knobs.tier)  # [B, T, H]
        logits, labels = teacher_forced(rt, visual, [data.questions[r] for r in rows],
                                        [data.answers[r] + [eos] for r in rows])  # [B, S, V], [B, S]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)


VLM, WARMSTART = "vlm", "vision_warmstart"  # the phase a checkpoint was taken in (state.json "phase")


def _optimizer_tensors(state: Mapping[str, Any], prefix: str = "") -> dict[str, torch.Tensor]:
    return {f"{prefix}{pid}.{name}": value if torch.is_tensor(value) else torch.tensor(value)
            for pid, st in state["state"].items() for name, value in st.items()}


def _optimizer_state(tensors: Mapping[str, torch.Tensor], param_groups: list[dict[str, Any]]) -> dict[str, Any]:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    return {"state": state, "param_groups": param_groups}


def _save_checkpoint(path: Path, rt: Runtime, opt: torch.optim.Optimizer, gen: torch.Generator, step: int, tag: str,
                     warm_accuracy: Mapping[str, float] | None = None) -> None:
    """A VLM-phase checkpoint after ``step`` steps (0: the warm-start just finished)."""
    with atomic_dir(path) as tmp:
        save_file({k: v.contiguous() for k, v in rt.model.state_dict().items()}, tmp / "model.safetensors")
        state = opt.state_dict()
        scalars = {"param_groups": state["param_groups"], "step": step, "tag": tag, "phase": VLM,
                   "vision_warmstart_accuracy": dict(warm_accuracy or {})}
        tensors = _optimizer_tensors(state)
        tensors["rng"] = gen.get_state()
        tensors["torch_rng"] = torch.get_rng_state()
        save_file(tensors, tmp / "optimizer.safetensors")
        (tmp / "state.json").write_text(json.dumps(scalars))


def _save_warmstart(path: Path, rt: Runtime, warm: WarmStartState, tag: str) -> None:
    """A checkpoint inside the vision warm-start: the model, and the warm-start's own state."""
    with atomic_dir(path) as tmp:
        save_file({k: v.contiguous() for k, v in rt.model.state_dict().items()}, tmp / "model.safetensors")
        tensors = _optimizer_tensors(warm.optimizer, prefix="opt.")
        tensors |= {f"head.{k}": v.contiguous() for k, v in warm.heads.items()}
        tensors |= {f"accuracy.{t}": torch.tensor(v, dtype=torch.float64) for t, v in warm.accuracy.items()}
        tensors |= {"rng": warm.gen, "torch_rng": warm.torch_rng}
        save_file(tensors, tmp / "warmstart.safetensors")
        (tmp / "state.json").write_text(json.dumps({"param_groups": warm.optimizer["param_groups"],
                                                    "step": warm.step, "tag": tag, "phase": WARMSTART}))


def _checkpoint_meta(path: Path, tag: str) -> dict[str, Any] | None:
    """state.json of a checkpoint of this very run (same params), else None."""
    meta_path = path / "state.json"
    if not meta_path.exists():
        return None
    meta = json.loads(meta_path.read_text())
    return meta if meta.get("tag") == tag else None


def _load_checkpoint(path: Path, meta: Mapping[str, Any], rt: Runtime, opt: torch.optim.Optimizer,
                     gen: torch.Generator) -> int:
    rt.model.load_state_dict(load_file(path / "model.safetensors"))
    tensors = load_file(path / "optimizer.safetensors")
    gen.set_state(tensors.pop("rng"))
    if "torch_rng" in tensors:  # absent from checkpoints written before it was saved
        torch.set_rng_state(tensors.pop("torch_rng"))
    opt.load_state_dict(_optimizer_state(tensors, meta["param_groups"]))
    return int(meta["step"])


def _load_warmstart(path: Path, meta: Mapping[str, Any], rt: Runtime) -> WarmStartState:
    rt.model.load_state_dict(load_file(path / "model.safetensors"))
    tensors = load_file(path / "warmstart.safetensors")

    def group(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

    return WarmStartState(
        step=int(meta["step"]), heads=group("head."), optimizer=_optimizer_state(group("opt."), meta["param_groups"]),
        gen=tensors["rng"], torch_rng=tensors["torch_rng"],
        accuracy={t: v.tolist() for t, v in group("accuracy.").items()},
    )


def param_groups(rt: Runtime, params: TrainBaseParams) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on norms, biases and embeddings."""
    decay, no_decay = [], []
    for name, param in rt.model.named_parameters():
        (no_decay if param.ndim < 2 or "norm" in name or "embed" in name else decay).append(param)
    return [{"params": decay, "weight_decay": params.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_tiny(train: pd.DataFrame, model: ModelParams, seed: int) -> Runtime:
    """A fresh tiny runtime whose word vocabulary covers the training questions and answers."""
    tokenizer_texts = train["question"].tolist() + [a for ans in train["answers"] for a in ans]
    torch.manual_seed(seed)
    # The checkpoint keeps the preset's "first" order: model.block_order is applied by the stages
    # that load the trained model, because the block_importance stage measures it afterwards.
    rt = load_runtime("tiny", device="cpu", vocab=tokenizer_texts, dims=model.tiny_dims())
    rt.model.config.text_config._experts_implementation = model.experts_implementation
    return rt


def train_base(
    train: pd.DataFrame,
    grid: KnobGrid,
    model: ModelParams,
    params: TrainBaseParams,
    seed: int,
    checkpoint_dir: Path | None = None,
) -> tuple[Runtime, dict[str, Any]]:
    """Train the tiny preset; returns the runtime and a small training summary.

    Deterministic algorithms are on throughout, so the same params and seed give the same weights on one machine,
    and a resumed run ends as an uninterrupted one does."""
    with deterministic():
        return _train(train, grid, model, params, seed, checkpoint_dir)


def _train(train: pd.DataFrame, grid: KnobGrid, model: ModelParams, params: TrainBaseParams, seed: int,
           checkpoint_dir: Path | None) -> tuple[Runtime, dict[str, Any]]:
    torch.manual_seed(seed)
    rt = build_tiny(train, model, seed)
    grid.validate_for(num_experts=rt.num_experts, num_layers=rt.num_layers, tiers=rt.spec.tiers)
    data = encode_split(rt, train, size=rt.image_size)
    opt = torch.optim.AdamW(param_groups(rt, params), lr=params.lr, betas=(0.9, 0.98))
    gen = torch.Generator().manual_seed(seed)
    tag = params_hash({"train": asdict(params), "model": asdict(model) | {"block_order": None}, "grid": asdict(grid), "seed": seed, "n": len(train)})
    if checkpoint_dir:
        recover_dir(checkpoint_dir)  # a kill in the middle of saving a checkpoint
    meta = _checkpoint_meta(checkpoint_dir, tag) if checkpoint_dir else None
    phase = meta.get("phase", VLM) if meta else None  # checkpoints without a phase were all VLM ones
    warm: dict[str, float] = {}
    if phase == VLM:
        start = _load_checkpoint(checkpoint_dir, meta, rt, opt, gen)
        warm_from = params.vision_warmstart_steps
        warm = meta.get("vision_warmstart_accuracy", {})
    else:
        start = 0
        resume = _load_warmstart(checkpoint_dir, meta, rt) if phase == WARMSTART else None
        warm_from = resume.step if resume else 0
        labels = mine_image_labels(train, data.image_index, data.images.shape[0], params.vision_warmstart_types)
        warm = pretrain_vision(
            rt, data.images, labels, steps=params.vision_warmstart_steps, batch_size=params.batch_size,
            lr=params.vision_warmstart_lr, gen=torch.Generator().manual_seed(seed + 1),
            tier_weights=params.vision_warmstart_tier_weights, resume=resume,
            checkpoint_every=params.checkpoint_every if checkpoint_dir else 0,
            on_checkpoint=lambda state: _save_warmstart(checkpoint_dir, rt, state, tag),
        )
        if checkpoint_dir and params.vision_warmstart_steps > 0:
            _save_checkpoint(checkpoint_dir, rt, opt, gen, 0, tag, warm)  # a kill now keeps the whole warm-start
    rt.model.train()
    pools, shares = type_pools(data, params.type_sampling_power)
    n = len(data.questions)
    losses: list[float] = []
    t0 = time.perf_counter()
    bar = progress_bar(range(start, params.steps), desc="train_base", initial=start, total=params.steps, unit="step")
    for step in bar:
        rows = sample_rows(pools, shares, params.batch_size, gen)
        drawn = draw_batch_knobs(params.knob_sampling, grid, rt.num_layers, gen, tier_weights=params.tier_weights,
                                 reduced_topk_share=params.reduced_topk_share, layer_drop=params.layer_drop)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, params)
        if params.router_aux_loss > 0:
            with router_logits_recorded(rt.routers) as seen:
                loss = batch_loss(rt, data, rows, drawn.knobs, drawn.blocks)
            total = loss + params.router_aux_loss * balance_loss(seen)
        else:
            loss = total = batch_loss(rt, data, rows, drawn.knobs, drawn.blocks)
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(rt.model.parameters(), params.grad_clip)
        opt.step()
        losses.append(loss.item())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}", knobs=drawn.label)
        if checkpoint_dir and (step + 1) % params.checkpoint_every == 0 and step + 1 < params.steps:
            _save_checkpoint(checkpoint_dir, rt, opt, gen, step + 1, tag, warm)
    rt.model.eval()
    summary = {
        "steps": params.steps,
        "resumed_from_step": start,
        "resumed_from_warmstart_step": warm_from,
        "final_loss": float(np.mean(losses[-50:])) if losses else None,
        "train_seconds_this_run": round(time.perf_counter() - t0, 1),
        "train_samples": n,
        "vision_warmstart_accuracy": warm,
    }
    return rt, summary
