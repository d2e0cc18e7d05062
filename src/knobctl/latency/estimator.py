"""The LightGBM latency estimator: one model per part of a request's latency.

Parts and their features (all integers; every constraint is monotone increasing, because
more tokens, experts or blocks can never make the work smaller):

* ``vision_ms``: visual_tokens, num_images, image_size, batch_size (the tier's work);
* ``prefill_ms``: input_tokens, visual_tokens, top_k, num_blocks, batch_size;
* ``decode_ms_per_token``: context_tokens, top_k, num_blocks, batch_size, where
  ``context_tokens = input_tokens + output_tokens / 2`` is the mean KV length over the decode steps.

A request's latency is ``vision + prefill + (output_tokens - 1) * decode_ms_per_token``: the
prefill's forward pass yields the first token, each further token is one decode step.

Targets are the per-(configuration, lengths) medians of the profile's repeats, so one noisy
repeat cannot pull a leaf; by default the drift-corrected medians (``knobctl.latency.stats``:
the host's slow spells divided out), ``target: raw`` for the plain ones. Trees interpolate between measured lengths but do not extrapolate
past them: predictions beyond the profiled range stay at the edge's value (the spec records
the range).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd

from knobctl.knobs import KnobConfig
from knobctl.latency.request import PARTS, request_ms
from knobctl.params import InputError, build, require, require_choice, require_int
from knobctl.weights import ArtifactMismatch, check_manifest, write_manifest

REBUILD = "rebuild it with `dvc repro fit_estimator`"


class EstimatorError(InputError):
    """An estimator folder that does not load: the message names the file."""


def _booster(path: Path) -> lgb.Booster:
    """A LightGBM model file, checked whole first: LightGBM aborts the process (no exception) on a truncated one."""
    if not path.is_file():
        raise EstimatorError(f"{path} not found; {REBUILD}")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise EstimatorError(f"{path} is not readable text ({type(exc).__name__}); {REBUILD}") from exc
    lines = text.rstrip().splitlines()
    if "end of trees" not in text or not lines or not lines[-1].startswith("pandas_categorical"):
        raise EstimatorError(f"{path} is not a whole LightGBM model (truncated?); {REBUILD}")
    try:
        return lgb.Booster(model_str=text)
    except lgb.basic.LightGBMError as exc:
        raise EstimatorError(f"{path} does not load as a LightGBM model ({exc}); {REBUILD}") from exc

FEATURES: dict[str, tuple[str, ...]] = {
    "vision_ms": ("visual_tokens", "num_images", "image_size", "batch_size"),
    "prefill_ms": ("input_tokens", "visual_tokens", "top_k", "num_blocks", "batch_size"),
    "decode_ms_per_token": ("context_tokens", "top_k", "num_blocks", "batch_size"),
}


def feature_names() -> dict[str, list[str]]:
    """Each part's feature names, as an estimator folder's manifest records them."""
    return {part: list(FEATURES[part]) for part in PARTS}


SPEC_FILE = "estimator.json"


@dataclass(frozen=True)
class EstimatorParams:
    """The ``fit_estimator`` section of params.yaml."""

    num_boost_round: int = 300
    learning_rate: float = 0.05
    num_leaves: int = 15
    min_data_in_leaf: int = 3
    holdout_config_fraction: float = 0.2
    holdout_text_tokens: tuple[int, ...] | None = None  # None: every profiled length but the min and max
    target: str = "drift_corrected"  # or "raw": which per-cell median the models fit (profile_stats)

    def __post_init__(self) -> None:
        for name in ("num_boost_round", "num_leaves", "min_data_in_leaf"):
            require_int(getattr(self, name), f"fit_estimator.{name}")
        require_choice(self.target, "fit_estimator.target", ("drift_corrected", "raw"))
        require(0 < self.learning_rate <= 1, "fit_estimator.learning_rate", self.learning_rate, "it must be in (0, 1]")
        require(0 < self.holdout_config_fraction < 1, "fit_estimator.holdout_config_fraction",
                self.holdout_config_fraction, "it must be in (0, 1), e.g. 0.2 leaves a fifth of the configurations "
                "out of training")
        if self.holdout_text_tokens is not None:
            for v in self.holdout_text_tokens:
                require_int(v, "fit_estimator.holdout_text_tokens")

    @classmethod
    def from_params(cls, section: Mapping[str, Any]) -> EstimatorParams:
        return build(cls, section, "fit_estimator")

    def lgb_params(self, seed: int) -> dict[str, Any]:
        return {
            "objective": "regression", "learning_rate": self.learning_rate, "num_leaves": self.num_leaves,
            "min_data_in_leaf": self.min_data_in_leaf, "min_data_in_bin": 1, "seed": seed, "deterministic": True,
            "force_row_wise": True, "num_threads": 1, "verbose": -1,
        }


def feature_frame(summary: pd.DataFrame, tiers: Mapping[str, Mapping[str, int]]) -> pd.DataFrame:
    """Add the tier's inputs and the decode context to a summary (or any table with knobs + lengths)."""
    df = summary.copy()
    unknown = sorted(set(df["tier"]) - set(tiers))
    if unknown:
        raise ValueError(f"tiers {unknown} are not in the estimator's tier table ({', '.join(tiers)})")
    for col in ("visual_tokens", "num_images", "image_size", "prompt_tokens"):
        if any(col not in v for v in tiers.values()):
            raise ValueError(f"the tier table has no {col!r}; rerun `dvc repro profile_latency` to record it")
        df[col] = df["tier"].map({t: v[col] for t, v in tiers.items()}).astype(int)
    if "input_tokens" not in df:
        df["input_tokens"] = df["prompt_tokens"] + df["text_tokens"]
    if "batch_size" not in df:
        df["batch_size"] = 1
    df["context_tokens"] = df["input_tokens"] + df["output_tokens"] / 2
    return df


def target_column(summary: pd.DataFrame, part: str, target: str) -> str:
    """The summary column a part is fitted to (and scored against): drift-corrected median if present."""
    adj = f"{part}_adj_median"
    return adj if target == "drift_corrected" and adj in summary else f"{part}_median"


def fit_part(df: pd.DataFrame, part: str, p: EstimatorParams, seed: int) -> lgb.Booster:
    col = target_column(df, part, p.target)
    rows = df[df[col].notna()]
    feats = list(FEATURES[part])
    data = lgb.Dataset(rows[feats].to_numpy(float), label=rows[col].to_numpy(float),
                       feature_name=feats, free_raw_data=False)
    params = {**p.lgb_params(seed), "monotone_constraints": [1] * len(feats), "monotone_constraints_method": "advanced"}
    return lgb.train(params, data, num_boost_round=p.num_boost_round)


@dataclass(frozen=True)
class LatencyEstimator:
    """Predicts each part of a request's latency; load with :meth:`load`."""

    boosters: dict[str, lgb.Booster]
    tiers: dict[str, dict[str, int]]
    spec: dict[str, Any]

    @classmethod
    def fit(cls, summary: pd.DataFrame, tiers: Mapping[str, Mapping[str, int]], p: EstimatorParams, seed: int,
            meta: Mapping[str, Any] | None = None) -> LatencyEstimator:
        df = feature_frame(summary, tiers)
        boosters = {part: fit_part(df, part, p, seed) for part in PARTS}
        spec = {
            "features": {k: list(v) for k, v in FEATURES.items()},
            "monotone": "increasing in every feature",
            "target": {part: target_column(df, part, p.target) for part in PARTS},
            "total": "vision_ms + prefill_ms + (output_tokens - 1) * decode_ms_per_token",
            "text_tokens_range": [int(df["text_tokens"].min()), int(df["text_tokens"].max())],
            "output_tokens_range": [int(df["output_tokens"].min()), int(df["output_tokens"].max())],
            "configurations": sorted(df["config"].unique().tolist()),
            "params": p.__dict__, "seed": seed, "profile": dict(meta or {}),
        }
        return cls(boosters=boosters, tiers={k: dict(v) for k, v in tiers.items()}, spec=spec)

    def save(self, directory: str | Path) -> None:
        """The estimator as ``directory``, swapped in whole (:meth:`write` into a temporary folder)."""
        from knobctl.io import atomic_dir

        with atomic_dir(directory) as tmp:
            self.write(tmp)

    def write(self, folder: Path) -> None:
        """The boosters and the spec into ``folder`` (a stage's staged output folder)."""
        for part, booster in self.boosters.items():
            booster.save_model(str(folder / f"{part}.txt"))
        (folder / SPEC_FILE).write_text(json.dumps({**self.spec, "tiers": self.tiers}, indent=2, default=str) + "\n")
        write_manifest(folder, {"features": feature_names()})

    @classmethod
    def load(cls, directory: str | Path) -> LatencyEstimator:
        directory = Path(directory)
        spec_path = directory / SPEC_FILE
        if not spec_path.is_file():
            raise FileNotFoundError(f"{spec_path} not found; run `dvc repro fit_estimator` to build the estimator")
        facts = check_manifest(directory, REBUILD)  # before LightGBM parses a file: it aborts on a truncated one
        if facts.get("features") != feature_names():
            raise ArtifactMismatch(f"{directory} was fitted on other features ({facts.get('features')}) than this "
                                   f"version prices ({feature_names()}); {REBUILD}")
        try:
            spec = json.loads(spec_path.read_text())
            tiers = spec.pop("tiers")
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, AttributeError) as exc:
            raise EstimatorError(f"{spec_path} is not the estimator's spec ({type(exc).__name__}: {exc}); "
                                 f"{REBUILD}") from exc
        boosters = {part: _booster(directory / f"{part}.txt") for part in PARTS}
        return cls(boosters=boosters, tiers=tiers, spec=spec)

    def predict(
        self, tier: Any, top_k: Any, num_blocks: Any, text_tokens: Any, output_tokens: Any, batch_size: Any = 1
    ) -> pd.DataFrame:
        """Vectorised over broadcastable inputs: one row per request, parts and total in ms."""
        arrays = np.broadcast_arrays(np.asarray(tier, dtype=object), np.asarray(top_k), np.asarray(num_blocks),
                                     np.asarray(text_tokens), np.asarray(output_tokens), np.asarray(batch_size))
        names = ("tier", "top_k", "num_blocks", "text_tokens", "output_tokens", "batch_size")
        df = feature_frame(pd.DataFrame({n: a.ravel() for n, a in zip(names, arrays)}), self.tiers)
        for part, booster in self.boosters.items():
            df[part] = booster.predict(df[list(FEATURES[part])].to_numpy(float))
        df["total_ms"] = request_ms(df["vision_ms"], df["prefill_ms"], df["decode_ms_per_token"], df["output_tokens"])
        return df

    def predict_total(self, *args: Any, **kwargs: Any) -> np.ndarray:
        return self.predict(*args, **kwargs)["total_ms"].to_numpy()

    def dense_table(
        self, configs: Sequence[KnobConfig], text_tokens: Sequence[int], output_tokens: Sequence[int],
        batch_size: int = 1,
    ) -> np.ndarray:
        """Total latency in ms, [configuration, text_tokens, output_tokens]: a whole grid priced in one call, for
        lookups by index (notebooks, custom training loops)."""
        c, t, o = len(configs), len(text_tokens), len(output_tokens)
        idx_c, idx_t, idx_o = np.meshgrid(np.arange(c), np.arange(t), np.arange(o), indexing="ij")  # [C, T, O] each
        tiers = np.array([k.tier for k in configs], dtype=object)
        ks = np.array([k.top_k for k in configs])
        bs = np.array([k.num_blocks for k in configs])
        total = self.predict_total(tiers[idx_c], ks[idx_c], bs[idx_c], np.asarray(text_tokens)[idx_t],
                                   np.asarray(output_tokens)[idx_o], batch_size)
        return total.reshape(c, t, o)  # [C, T, O]
