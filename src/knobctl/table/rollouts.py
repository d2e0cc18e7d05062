"""Cached rollouts: every (sample, configuration) of the knob grid answered once, greedily.

Rows are exactly what :meth:`Runtime.answer` returns for the same batch, but the work
that configurations share is done once:

* the vision tower, the projector and the prompt embedding run once per (batch, tier)
  and serve all of that tier's top_k x num_blocks configurations;
* per (tier, top_k), one prefill runs the deepest block count; hooks record every block's
  output at the last prompt position, and a block count N takes its first token from the
  final norm and LM head on the N-th block's output: the same arithmetic as a prefill that
  stops after N blocks (early exit). This holds when the blocks run for N are a prefix of
  those run for the deepest count (always with ``block_order: first``). A count whose blocks
  leave that prefix (a ranked ``block_order``, such as block_importance's) branches off:
  the blocks the two sets share from the start are not rerun; its prefill continues from
  the deepest run's output of the last shared block, into a cache of its own that takes the
  shared blocks' keys and values from the deepest run's (the two-stage flow's continuation);
* each N then decodes greedily from a fork of that prefill's KV cache, whose first N
  blocks hold exactly the keys and values a prefill of N blocks would have written;
* the decision block's output of the same prefill gives the vision feature
  (:mod:`knobctl.model.features`), which no knob changes.

Error policy: a sample the model cannot be asked (an image that does not decode or is too large, a
question too long: :mod:`knobctl.model.screen`) gets a row per configuration with its ``error``
(prediction null, score NaN, lengths -1) and NaN features without running. A batch that raises is
retried one sample at a time, and a sample that raises alone gets the same rows. The run goes on;
the stage counts errors in its metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import torch

from knobctl.cluster import EXECUTORS, RayParams
from knobctl.knobs import KnobConfig, KnobGrid
from knobctl.model.decoding import continue_greedy, fork_cache, new_cache, next_token, prefill
from knobctl.model.families import DECISION_BLOCK
from knobctl.model.features import language_features, vision_features
from knobctl.model.presets import EOS
from knobctl.model.runtime import DTYPES, Runtime
from knobctl.model.screen import request_caps, screen
from knobctl.params import ParamsError, build, require, require_choice, require_device, require_int
from knobctl.vqa.metric import vqa_score
from knobctl.vqa.sources import SPLITS

R = TypeVar("R")


@dataclass(frozen=True)
class RolloutParams:
    """The ``accuracy_table`` section of params.yaml."""

    split: str = "val"
    num_samples: int | None = None
    configs: tuple[str, ...] | None = None
    part_size: int = 250
    batch_size: int = 250
    max_new_tokens: int | None = None
    device: str = "auto"
    dtype: str = "float32"
    num_threads: int = 0
    # A larger image or longer question is that sample's error row (knobctl.model.screen); null: the model's limits.
    max_image_pixels: int | None = None
    max_question_tokens: int | None = None
    # Where the parts run (src/knobctl/table/ray_executor.py); neither changes a byte of the table.
    executor: str = "local"
    ray: RayParams = field(default_factory=RayParams)

    def __post_init__(self) -> None:
        require_choice(self.executor, "accuracy_table.executor", EXECUTORS)
        self.ray.check("accuracy_table.ray")
        require(self.split in SPLITS, "accuracy_table.split", self.split,
                f"allowed: {', '.join(SPLITS)} (keep test for the validate stage)")
        if self.num_samples is not None:
            require_int(self.num_samples, "accuracy_table.num_samples")
        for name in ("part_size", "batch_size"):
            require_int(getattr(self, name), f"accuracy_table.{name}")
        for name in ("max_new_tokens", "max_image_pixels", "max_question_tokens"):
            if getattr(self, name) is not None:
                require_int(getattr(self, name), f"accuracy_table.{name}")
        require_int(self.num_threads, "accuracy_table.num_threads", 0)
        require_choice(self.dtype, "accuracy_table.dtype", tuple(DTYPES))
        require_device(self.device, "accuracy_table.device")
        require(self.configs is None or len(self.configs) > 0, "accuracy_table.configs", self.configs,
                "use null for the whole grid or list labels such as high/k8/b16")

    @classmethod
    def from_params(cls, section: Mapping[str, Any]) -> RolloutParams:
        return build(cls, section, "accuracy_table")


def select_configs(grid: KnobGrid, labels: Sequence[str] | None) -> list[KnobConfig]:
    """The grid, or the named subset of it, in grid order."""
    configs = grid.configs()
    if labels is None:
        return configs
    known = {k.label for k in configs}
    for label in labels:
        if label not in known:
            raise ParamsError(f"accuracy_table.configs holds {label!r}, which is not in the knobs grid; "
                             f"labels look like {configs[-1].label} (tier/k<top_k>/b<num_blocks>)")
    return [k for k in configs if k.label in set(labels)]


def plan_chains(rt: Runtime, block_counts: Sequence[int]) -> list[list[int]]:
    """Block counts that one prefill can serve together: those whose blocks are a prefix of the
    deepest count's blocks share its prefill; any other count gets one of its own."""
    counts = sorted(block_counts)
    deepest = rt.spec.blocks_for(counts[-1], rt.num_layers)
    shared = [n for n in counts if rt.spec.blocks_for(n, rt.num_layers) == deepest[:n]]
    return [shared] + [[n] for n in counts if n not in shared]


def shared_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many blocks two execution orders run alike from the start."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


@dataclass(frozen=True)
class BatchResult:
    """One batch's rollouts: generated ids per configuration, prompt lengths and features."""

    tokens: dict[KnobConfig, torch.Tensor]  # config -> [B, T] greedy ids (PAD after EOS)
    input_tokens: dict[str, torch.Tensor]  # tier -> [B] prompt length
    language: torch.Tensor  # [B, 2H]
    vision: dict[str, torch.Tensor]  # tier -> [B, 2H]


@torch.inference_mode()
def rollout_batch(
    rt: Runtime, images: torch.Tensor, question_ids: Sequence[Sequence[int]], configs: Sequence[KnobConfig],
    max_new_tokens: int,
) -> BatchResult:
    """Greedy answers of one batch under every configuration, sharing work as the module says."""
    tokens: dict[KnobConfig, torch.Tensor] = {}
    input_tokens: dict[str, torch.Tensor] = {}
    vision: dict[str, torch.Tensor] = {}
    for tier in dict.fromkeys(k.tier for k in configs):
        visual = rt.encode_images(images, tier)  # [B, T_visual, H]
        inputs = rt.embed(visual, rt.prompt_from_ids(question_ids, visual.num_tokens))
        mask, pos = inputs["attention_mask"], inputs["position_ids"]  # [B, L]
        input_tokens[tier] = mask.sum(1).cpu()  # [B]
        for top_k in dict.fromkeys(k.top_k for k in configs if k.tier == tier):
            counts = [k.num_blocks for k in configs if k.tier == tier and k.top_k == top_k]
            main, *branches = plan_chains(rt, counts)
            deepest = KnobConfig(tier, top_k, main[-1])
            order = rt.spec.blocks_for(deepest.num_blocks, rt.num_layers)
            branch_blocks = {n: rt.spec.blocks_for(n, rt.num_layers) for [n] in branches}
            common = {n: shared_prefix(order, b) for n, b in branch_blocks.items()}  # blocks run alike
            # Blocks a branch starts from: keep their whole output (else only the last position).
            starts = {order[d - 1] for d in common.values()}
            cache = new_cache(rt)
            with rt.knobs_applied(deepest), rt.block_outputs(keep_sequence=[DECISION_BLOCK, *starts]) as outs:
                prefill(rt, inputs, cache)
            if tier not in vision:
                vision[tier] = vision_features(rt, outs.sequence[DECISION_BLOCK], inputs["input_ids"])
            for n, blocks in branch_blocks.items():  # before the main chain's decoding grows the cache
                knobs = KnobConfig(tier, top_k, n)
                d = common[n]
                own = new_cache(rt)  # empty: the model derives the prompt's causal mask from its length
                with rt.knobs_applied(knobs), rt.blocks_run(blocks[d:]):
                    hidden = prefill(rt, inputs, own, embeds=outs.sequence[order[d - 1]], after=order[d - 1])  # [B, L, H]
                shared = fork_cache(cache)
                for b in blocks[:d]:
                    own.layers[b] = shared.layers[b]
                first = next_token(rt, rt.model.lm_head(hidden[:, -1]), ban_eos=False)  # [B]
                with rt.knobs_applied(knobs):
                    tokens[knobs] = continue_greedy(rt, first, own, mask, pos, max_new_tokens).cpu()
            for n in main:
                first = next_token(rt, rt.head_logits(outs.last[order[n - 1]]), ban_eos=False)  # [B]
                own = cache if n == main[-1] else fork_cache(cache)
                knobs = KnobConfig(tier, top_k, n)
                with rt.knobs_applied(knobs):
                    tokens[knobs] = continue_greedy(rt, first, own, mask, pos, max_new_tokens).cpu()
    return BatchResult(tokens=tokens, input_tokens=input_tokens, language=language_features(rt, question_ids).cpu(),
                       vision={t: v.cpu() for t, v in vision.items()})


def run_isolated(run: Callable[[int, int], R], n: int) -> list[tuple[int, R | None, str | None]]:
    """``run(start, stop)`` on the whole range; if it raises, on each item alone.

    Returns (start, result, error) pieces covering 0..n in order; a piece with an error is
    one item whose run raised by itself.
    """
    try:
        return [(0, run(0, n), None)]
    except Exception as exc:  # noqa: BLE001  (isolated below, then recorded as a row)
        if n == 1:
            return [(0, None, f"{type(exc).__name__}: {exc}"[:500])]
    pieces = []
    for i in range(n):
        try:
            pieces.append((i, run(i, i + 1), None))
        except Exception as exc:  # noqa: BLE001  (the sample's rows carry the error)
            pieces.append((i, None, f"{type(exc).__name__}: {exc}"[:500]))
    return pieces


def output_lengths(tokens: torch.Tensor, eos: int) -> np.ndarray:
    """Generated tokens per row of [B, T] ids, EOS included (the decode steps the request ran)."""
    is_eos = tokens == eos  # [B, T]
    first = is_eos.int().argmax(1)  # [B]
    return torch.where(is_eos.any(1), first + 1, torch.full_like(first, tokens.shape[1])).numpy()


class _Decoder:
    """Token ids -> text, memoised: a table holds few distinct answers."""

    def __init__(self, rt: Runtime):
        self.rt, self.memo = rt, {}

    def __call__(self, tokens: torch.Tensor) -> list[str]:
        rows = [tuple(r) for r in tokens.tolist()]
        missing = list(dict.fromkeys(r for r in rows if r not in self.memo))
        if missing:
            self.memo.update(zip(missing, self.rt.decode(torch.tensor(missing))))
        return [self.memo[r] for r in rows]


def rollout_part(
    rt: Runtime, part: pd.DataFrame, configs: Sequence[KnobConfig], p: RolloutParams,
    on_batch: Callable[[int], None] | None = None, section: str = "accuracy_table",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows (sample-major, configurations in grid order) and features of one part of the samples. A sample whose
    image or question the model cannot take (:mod:`knobctl.model.screen`) gets error rows without running;
    ``section`` names the params section of the caps in them."""
    all_qids = rt.tokenizer(part["question"].tolist(), add_special_tokens=False)["input_ids"]
    steps = p.max_new_tokens or rt.spec.max_new_tokens
    caps = request_caps(rt, p.max_image_pixels, p.max_question_tokens, steps, section)
    screened = screen(rt, part, all_qids, caps, section)
    images = torch.from_numpy(screened.images)
    asked = part if len(screened.good) == len(part) else part.iloc[screened.good]
    qids = [all_qids[i] for i in screened.good]
    decode, eos = _Decoder(rt), rt.ids[EOS]
    tiers = list(dict.fromkeys(k.tier for k in configs))
    dim = 2 * rt.config.text_config.hidden_size
    rows: list[pd.DataFrame] = []
    feats: list[pd.DataFrame] = []
    for start in range(0, len(asked), p.batch_size):
        stop = min(start + p.batch_size, len(asked))

        def run(a: int, b: int, s: int = start) -> BatchResult:
            return rollout_batch(rt, images[s + a : s + b], qids[s + a : s + b], configs, steps)

        for offset, res, error in run_isolated(run, stop - start):
            n = len(res.language) if res is not None else 1
            sub = asked.iloc[start + offset : start + offset + n]
            rows.append(_rows(sub, configs, res, error, decode, eos))
            feats.append(_features(sub, tiers, res, dim))
        if on_batch is not None:
            on_batch(stop - start)
    if len(asked) == len(part):
        return pd.concat(rows, ignore_index=True), pd.concat(feats, ignore_index=True)
    for i, error in enumerate(screened.errors):
        if error is not None:
            rows.append(_rows(part.iloc[i : i + 1], configs, None, error, decode, eos))
            feats.append(_features(part.iloc[i : i + 1], tiers, None, dim))
        if on_batch is not None and error is not None:
            on_batch(1)
    return _in_part_order(pd.concat(rows, ignore_index=True), part), _in_part_order(pd.concat(feats, ignore_index=True),
                                                                                    part)


def _in_part_order(df: pd.DataFrame, part: pd.DataFrame) -> pd.DataFrame:
    """``df``'s rows sorted by their sample's position in ``part`` (stable: configurations keep grid order)."""
    position = pd.Series(np.arange(len(part)), index=part["sample_id"].to_numpy())
    order = np.argsort(position.loc[df["sample_id"].to_numpy()].to_numpy(), kind="stable")
    return df.iloc[order].reset_index(drop=True)


def _rows(sub: pd.DataFrame, configs: Sequence[KnobConfig], res: BatchResult | None, error: str | None,
          decode: _Decoder, eos: int) -> pd.DataFrame:
    n, c = len(sub), len(configs)
    pred: list[Any] = [None] * (n * c)
    out_tokens = np.full(n * c, -1, dtype=np.int64)
    in_tokens = np.full(n * c, -1, dtype=np.int64)
    if res is not None:
        for j, k in enumerate(configs):
            pred[j::c] = decode(res.tokens[k])
            out_tokens[j::c] = output_lengths(res.tokens[k], eos)
            in_tokens[j::c] = res.input_tokens[k.tier].numpy()
    answers = np.repeat(sub["answers"].to_numpy(), c)
    memo: dict[tuple[int, str], float] = {}
    owner = np.repeat(np.arange(n), c)
    score = np.array([np.nan if p is None else memo.setdefault((i, p), vqa_score(p, list(a)))
                      for i, p, a in zip(owner, pred, answers)])
    return pd.DataFrame({
        "sample_id": np.repeat(sub["sample_id"].to_numpy(), c),
        "question_type": np.repeat(sub["question_type"].to_numpy(), c),
        "config": [k.label for k in configs] * n,
        "tier": [k.tier for k in configs] * n,
        "top_k": np.tile([k.top_k for k in configs], n),
        "num_blocks": np.tile([k.num_blocks for k in configs], n),
        "prediction": pred,
        "score": score,
        "input_tokens": in_tokens,
        "output_tokens": out_tokens,
        "error": [error] * (n * c),
    })


def _features(sub: pd.DataFrame, tiers: Sequence[str], res: BatchResult | None, dim: int) -> pd.DataFrame:
    nan = np.full((len(sub), dim), np.nan, dtype=np.float32)
    out = {"sample_id": sub["sample_id"].to_numpy(), "question_type": sub["question_type"].to_numpy(),
           "language": list(res.language.numpy() if res is not None else nan)}
    for t in tiers:
        out[f"vision_{t}"] = list(res.vision[t].numpy() if res is not None else nan)
    return pd.DataFrame(out)
