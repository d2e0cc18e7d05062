"""The cases of the bad-input probe set (benchmarks/bad_inputs.py runs and judges them): how each input is
damaged, which stage must name it, and for an input that is allowed, what its correct result shows."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

Mutate = Callable[[Path], None]


@dataclass(frozen=True)
class Case:
    stage: str
    name: str
    mutate: Mutate
    legal: bool = False  # True: the input is allowed and the stage must complete
    warns: str = ""  # allowed with a warning: the stage completes and says this on stderr
    # A legal input's result, judged: the repository after the run -> what is wrong with it (None: nothing)
    check: Callable[[Path], str | None] | None = None


# --- damaging inputs -------------------------------------------------------------------------------------

def set_param(section: str, key: str, value: object) -> Mutate:
    def go(repo: Path) -> None:
        params = yaml.safe_load((repo / "params.yaml").read_text())
        node = params if section == "" else params[section]
        *path, last = key.split(".")
        for part in path:
            node = node[part]
        node[last] = value
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return go


def rewrite_table(rel: str, change: Callable[[pd.DataFrame], pd.DataFrame]) -> Mutate:
    """The Parquet file with its rows changed and its provenance metadata kept, as a buggy writer would leave it."""
    def go(repo: Path) -> None:
        path = repo / rel
        table = pq.read_table(path)
        kept = {k: v for k, v in (table.schema.metadata or {}).items() if k != b"pandas"}
        new = pa.Table.from_pandas(change(table.to_pandas()), preserve_index=False)
        pq.write_table(new.replace_schema_metadata({**(new.schema.metadata or {}), **kept}), path)
    return go


def edit_metadata(rel: str, change: Callable[[dict], None]) -> Mutate:
    """The Parquet file's knobctl provenance changed (its rows kept), as an older or foreign writer would leave it."""
    def go(repo: Path) -> None:
        table = pq.read_table(repo / rel)
        meta = dict(table.schema.metadata or {})
        provenance = json.loads(meta[b"knobctl"])
        change(provenance)
        meta[b"knobctl"] = json.dumps(provenance).encode()
        pq.write_table(table.replace_schema_metadata(meta), repo / rel)
    return go


def truncate(rel: str, keep: float = 0.5) -> Mutate:
    def go(repo: Path) -> None:
        data = (repo / rel).read_bytes()
        (repo / rel).write_bytes(data[: int(len(data) * keep)])
    return go


def replace_bytes(rel: str, data: bytes) -> Mutate:
    return lambda repo: (repo / rel).write_bytes(data)


def delete(rel: str) -> Mutate:
    def go(repo: Path) -> None:
        path = repo / rel
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return go


def edit_json(rel: str, change: Callable[[dict], None]) -> Mutate:
    def go(repo: Path) -> None:
        data = json.loads((repo / rel).read_text())
        change(data)
        (repo / rel).write_text(json.dumps(data))
    return go


def block_output(rel: str) -> Mutate:
    """The folder an output lies in replaced by a plain file, so that writing the output fails (ENOTDIR or EEXIST)
    even for root, who ignores permissions. (An output path that is itself a stray file is simply replaced.)"""
    def go(repo: Path) -> None:
        target = (repo / rel).parent
        shutil.rmtree(target)
        target.write_text("not a folder\n")
    return go


def poison_weights(rel: str) -> Mutate:
    def go(repo: Path) -> None:
        from safetensors.torch import load_file, save_file
        tensors = load_file(repo / rel)
        name = next(k for k, v in tensors.items() if v.is_floating_point())
        tensors[name] = tensors[name].clone().fill_(float("nan"))
        save_file(tensors, repo / rel)
    return go


def copy_file(src: str, dst: str) -> Mutate:
    return lambda repo: shutil.copyfile(repo / src, repo / dst)


def rehashed(folder: str) -> Mutate:
    """The artifact folder's manifest written again over its files as they now are: what the loader's own checks
    see behind the manifest."""
    def go(repo: Path) -> None:
        from tests.conftest import rehash
        rehash(repo / folder)
    return go


def both(*steps: Mutate) -> Mutate:
    def go(repo: Path) -> None:
        for step in steps:
            step(repo)
    return go


def png_bomb() -> bytes:
    """A PNG that declares 40,000 x 40,000 pixels (1.6 G) in a few hundred bytes."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    row = b"\x00" + b"\x00" * 40_000
    data = zlib.compress(row * 64, 9)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 40_000, 40_000, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", data) + chunk(b"IEND", b""))


def first(change: Callable[[pd.DataFrame], None]) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def go(df: pd.DataFrame) -> pd.DataFrame:
        df = df.copy()
        change(df)
        return df
    return go


# Damage every row where the stage reads only some (a stage's sample selection must not dodge the case).
EVERY = slice(0, None)


def set_cell(column: str, value: object, rows: slice = slice(0, 1)) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def go(df: pd.DataFrame) -> pd.DataFrame:
        df = df.copy()
        df[column] = df[column].astype(object)
        for i in range(*rows.indices(len(df))):
            df.at[i, column] = value
        return df
    return go


# --- the cases -------------------------------------------------------------------------------------------

def params_cases() -> list[Case]:
    """Non-finite and out-of-range numbers in every stage's numbers, and malformed lists."""
    cases: list[Case] = []
    bad_numbers = {".nan": float("nan"), ".inf": float("inf"), "-.inf": float("-inf")}
    numeric = {
        "train_controller": ["lr", "steps", "batch_size", "group_size", "entropy_coef", "weight_decay",
                             "probe_reward", "dropout", "hidden"],
        "reward": ["alpha", "beta", "gamma", "delta", "epsilon"],
        "validate": ["num_samples", "speed_quantile", "calibration_requests", "repeats"],
        "fit_estimator": ["learning_rate", "num_boost_round", "num_leaves", "holdout_config_fraction"],
        "tradeoff": ["eval_fraction", "probe_l2", "num_budgets"],
        "profile_latency": ["rounds", "image_size"],
        "accuracy_table": ["part_size", "batch_size"],
    }
    reader = {"reward": "train_controller"}
    for section, keys in numeric.items():
        for key in keys:
            for label, value in bad_numbers.items():
                if label == "-.inf" and key not in ("epsilon", "lr", "alpha"):
                    continue
                cases.append(Case(reader.get(section, section), f"params {section}.{key}: {label}",
                                  set_param(section, key, value)))
    cases += [
        Case("train_controller", "params reward.alpha: 1e308", set_param("reward", "alpha", 1e308)),
        Case("train_controller", "params train_controller.budget_range: [0, .inf]",
             set_param("train_controller", "budget_range", [0.0, float("inf")])),
        Case("train_controller", "params train_controller.budget_range: [1, 0]",
             set_param("train_controller", "budget_range", [1.0, 0.0])),
        Case("train_controller", "params train_controller.loss: 'ppo'", set_param("train_controller", "loss", "ppo")),
        Case("validate", "params validate.budgets: [.inf]", set_param("validate", "budgets", [float("inf")])),
        Case("validate", "params validate.budgets: [-5]", set_param("validate", "budgets", [-5.0])),
        Case("validate", "params validate.budgets: [.nan, 10]", set_param("validate", "budgets", [float("nan"), 10.0])),
        Case("validate", "params validate.budgets: []", set_param("validate", "budgets", [])),
        Case("profile_latency", "params profile_latency.text_tokens: [4, -1]",
             set_param("profile_latency", "text_tokens", [4, -1])),
        Case("profile_latency", "params knobs.top_k: [4, 99]", set_param("knobs", "top_k", [4, 99])),
        Case("accuracy_table", "params knobs.tiers: [low, huge]", set_param("knobs", "tiers", ["low", "huge"])),
        Case("accuracy_table", "params seed: .nan", set_param("", "seed", float("nan"))),
        Case("accuracy_table", "params seed: 'zero'", set_param("", "seed", "zero")),
    ]
    return cases


VQA_USERS = {"accuracy_table": "data/vqa/val.parquet", "eval_base": "data/vqa/test.parquet",
             "validate": "data/vqa/test.parquet"}


#: The stages that cap each request and make a bad one that sample's error row (benchmarks/bad_request_cases.py).
CAPPED = ("accuracy_table", "validate")
#: ... and every stage that leaves a bad request out and counts it (eval_base: at the model's own caps).
SCREENED = (*CAPPED, "eval_base")


def vqa_cases() -> list[Case]:
    cases: list[Case] = []
    for stage, rel in VQA_USERS.items():
        split = Path(rel).stem
        damages: list[tuple[str, Mutate, bool]] = [
            ("truncated parquet", truncate(rel), False),
            ("empty file", replace_bytes(rel, b""), False),
            ("text, not parquet", replace_bytes(rel, b"sample_id,question\n1,what\n"), False),
            ("0 rows", rewrite_table(rel, lambda d: d.iloc[:0]), False),
            ("no answers column", rewrite_table(rel, lambda d: d.drop(columns=["answers"])), False),
            ("answers a string", rewrite_table(rel, set_cell("answers", "red", slice(0, None))), False),
            ("null answers", rewrite_table(rel, set_cell("answers", None)), False),
            ("null question", rewrite_table(rel, set_cell("question", None)), False),
            ("duplicate sample ids", rewrite_table(rel, lambda d: pd.concat([d, d.iloc[:1]], ignore_index=True)), False),
            ("undecodable images", rewrite_table(rel, set_cell("image", b"not an image", EVERY)), False),
            ("truncated images", rewrite_table(rel, lambda d: set_cell("image", d["image"].iloc[0][:40], EVERY)(d)), False),
            ("decompression-bomb images", rewrite_table(rel, set_cell("image", png_bomb(), EVERY)), False),
            # one such question is that sample's error (SCREENED); a split of nothing else is refused
            ("100k-character question", rewrite_table(rel, set_cell("question", "what " * 20_000)), False),
            ("100k-character questions", rewrite_table(rel, set_cell("question", "what " * 20_000, EVERY)), False),
            ("an extra column", rewrite_table(rel, lambda d: d.assign(note="x")), True),
        ]
        if stage != "accuracy_table":  # one stage is enough for the less likely damages
            damages = [d for d in damages if d[0] not in ("text, not parquet", "null question", "an extra column")]
        # a stage that caps questions itself refuses a split only where every question is too long
        skip = "100k-character question" if stage in SCREENED else "100k-character questions"
        damages = [d for d in damages if d[0] != skip]
        cases += [Case(stage, f"{split} split: {what}", mutate, legal) for what, mutate, legal in damages]
    return cases


def table_cases() -> list[Case]:
    prof, rolls, feats = "data/profile/summary.parquet", "data/rollouts/rollouts.parquet", "data/rollouts/features.parquet"
    cases = [
        Case("fit_estimator", "profile summary: truncated", truncate(prof)),
        Case("fit_estimator", "profile summary: 0 rows", rewrite_table(prof, lambda d: d.iloc[:0])),
        Case("fit_estimator", "profile summary: negative latency",
             rewrite_table(prof, set_cell("total_ms_median", -5.0, slice(0, 3)))),
        Case("fit_estimator", "profile summary: infinite latency",
             rewrite_table(prof, set_cell("prefill_ms_median", float("inf")))),
        Case("fit_estimator", "profile summary: NaN latency",
             rewrite_table(prof, set_cell("decode_ms_per_token_median", float("nan")))),
        Case("fit_estimator", "profile summary: no total_ms_median column",
             rewrite_table(prof, lambda d: d.drop(columns=["total_ms_median"]))),
        Case("fit_estimator", "profile summary: a config of another grid",
             rewrite_table(prof, set_cell("config", "huge/k9/b99"))),
        Case("fit_estimator", "profile summary: no tier table in its metadata",
             edit_metadata(prof, lambda meta: meta.pop("tiers"))),
        Case("fit_estimator", "profile summary: negative drift-corrected latency",
             rewrite_table(prof, set_cell("total_ms_adj_median", -5.0, slice(0, 3)))),
        Case("fit_estimator", "profile summary: a latency of 0 ms", rewrite_table(prof, set_cell("vision_ms_median", 0.0))),
        Case("fit_estimator", "profile summary: no repeats column",
             rewrite_table(prof, lambda d: d.drop(columns=["repeats"]))),
        Case("train_controller", "profile summary: NaN drift-corrected latency",
             rewrite_table(prof, set_cell("prefill_ms_adj_median", float("nan")))),
        Case("train_controller", "profile summary: truncated", truncate(prof)),
        Case("train_controller", "profile summary: negative latency",
             rewrite_table(prof, set_cell("total_ms_median", -5.0, slice(0, 3)))),
    ]
    for stage in ("tradeoff", "train_controller", "validate"):
        cases += [
            Case(stage, "rollouts: truncated", truncate(rolls)),
            Case(stage, "rollouts: 0 rows", rewrite_table(rolls, lambda d: d.iloc[:0])),
            Case(stage, "rollouts: score 5", rewrite_table(rolls, set_cell("score", 5.0))),
            Case(stage, "rollouts: score NaN", rewrite_table(rolls, set_cell("score", float("nan")))),
            Case(stage, "rollouts: input_tokens -1", rewrite_table(rolls, set_cell("input_tokens", -1))),
            Case(stage, "rollouts: duplicate rows", rewrite_table(rolls, lambda d: pd.concat([d, d.iloc[:1]],
                                                                                          ignore_index=True))),
            Case(stage, "rollouts: one configuration missing",  # a subset of the grid is allowed, and named
                 rewrite_table(rolls, lambda d: d[d["config"] != d["config"].iloc[0]]),
                 warns="configurations of the knobs grid are not in"),
            Case(stage, "rollouts: no score column", rewrite_table(rolls, lambda d: d.drop(columns=["score"]))),
            Case(stage, "features: truncated", truncate(feats)),
            Case(stage, "features: NaN in a vector",
                 rewrite_table(feats, lambda d: set_cell("language", [float("nan")] * len(d["language"].iloc[0]))(d))),
            Case(stage, "features: a sample missing", rewrite_table(feats, lambda d: d.iloc[1:])),
            Case(stage, "features: a vision column missing",
                 rewrite_table(feats, lambda d: d.drop(columns=["vision_high"]))),
            Case(stage, "rollouts: a sample's configurations in another order",
                 rewrite_table(rolls, lambda d: d.iloc[[1, 0, *range(2, len(d))]])),
            Case(stage, "rollouts: a tier of another grid", rewrite_table(rolls, set_cell("tier", "huge"))),
        ]
    # report reads the summaries, never the requests table
    cases += [Case("report", "validate summary: not JSON", replace_bytes("data/validate/summary.json", b"{oops")),
              Case("report", "validate summary: missing", delete("data/validate/summary.json")),
              Case("report", "training summary: not JSON", replace_bytes("plots/train/training.json", b"[1,")),
              Case("report", "tradeoff section: a list, not an object", replace_bytes("plots/tradeoff/tradeoff.json",
                                                                                    b"[]"))]
    return cases


def artifact_cases() -> list[Case]:
    est, ctl, base = "models/latency_estimator", "models/controller", "models/base"
    cases: list[Case] = []
    for stage in ("tradeoff", "train_controller", "validate"):
        cases += [
            Case(stage, "estimator: truncated LightGBM model", truncate(f"{est}/prefill_ms.txt", 0.3)),
            Case(stage, "estimator: empty LightGBM model", replace_bytes(f"{est}/decode_ms_per_token.txt", b"")),
            Case(stage, "estimator: estimator.json not JSON", replace_bytes(f"{est}/estimator.json", b"{\"features\":")),
            Case(stage, "estimator: a model file missing", delete(f"{est}/vision_ms.txt")),
            # the same number of features: LightGBM predicts with it, and without the manifest the stage ran on
            Case(stage, "estimator: a whole model file of another part",
                 copy_file(f"{est}/decode_ms_per_token.txt", f"{est}/vision_ms.txt")),
        ]
    cases += [
        Case("validate", "controller: truncated weights", truncate(f"{ctl}/controller.safetensors")),
        Case("validate", "controller: NaN weights", poison_weights(f"{ctl}/controller.safetensors")),
        Case("validate", "controller: controller.json not JSON", replace_bytes(f"{ctl}/controller.json", b"[")),
        Case("validate", "controller: config wider than its weights",
             edit_json(f"{ctl}/controller.json", lambda d: d.__setitem__("hidden", int(d.get("hidden", 8)) * 2))),
        Case("validate", "controller: probe weights truncated", truncate(f"{ctl}/probe.safetensors")),
        Case("validate", "controller: folder missing", delete(ctl)),
        Case("validate", "controller: manifest missing", delete(f"{ctl}/manifest.json")),
        Case("validate", "controller: NaN weights, the manifest rewritten over them",
             both(poison_weights(f"{ctl}/controller.safetensors"), rehashed(ctl))),
        Case("validate", "estimator: truncated LightGBM model, the manifest rewritten over it",
             both(truncate(f"{est}/prefill_ms.txt", 0.3), rehashed(est))),
    ]
    for stage in ("profile_latency", "accuracy_table"):
        cases += [
            Case(stage, "base model: truncated weights", truncate(f"{base}/model.safetensors")),
            Case(stage, "base model: NaN weights", poison_weights(f"{base}/model.safetensors")),
            Case(stage, "base model: config.json not JSON", replace_bytes(f"{base}/config.json", b"{")),
            Case(stage, "base model: config declares more text layers",
                 edit_json(f"{base}/config.json", lambda d: d["text_config"].__setitem__(
                     "num_hidden_layers", d["text_config"]["num_hidden_layers"] + 2))),
            Case(stage, "base model: knobctl.json not JSON", replace_bytes(f"{base}/knobctl.json", b"nope")),
            Case(stage, "base model: tokenizer.json missing", delete(f"{base}/tokenizer.json")),
        ]
    ranked = set_param("model", "block_order", "data/block_importance/importance.json")  # the file is read then
    importance = "data/block_importance/importance.json"
    cases += [
        Case("accuracy_table", "block importance: not JSON", both(ranked, replace_bytes(importance, b"{"))),
        Case("accuracy_table", "block importance: order repeats a block",
             both(ranked, edit_json(importance, lambda d: d.__setitem__("order", [0] * len(d["order"]))))),
        Case("eval_base", "block importance: order too short",
             both(ranked, edit_json(importance, lambda d: d.__setitem__("order", d["order"][:3])))),
    ]
    return cases


def output_cases() -> list[Case]:
    """An output that cannot be written: the stage must fail by name and leave its previous outputs whole."""
    return [Case("train_controller", "output: metrics folder not writable", block_output("metrics/train.json")),
            Case("train_controller", "output: plots folder not writable", block_output("plots/train")),
            Case("accuracy_table", "output: metrics file not writable", block_output("metrics/accuracy_table.json")),
            Case("fit_estimator", "output: metrics file not writable", block_output("metrics/estimator.json")),
            Case("validate", "output: plots folder not writable", block_output("plots/validate")),
            Case("tradeoff", "output: metrics file not writable", block_output("metrics/tradeoff.json"))]
