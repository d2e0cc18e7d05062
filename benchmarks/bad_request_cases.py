"""The probe set's bad requests (benchmarks/bad_inputs.py runs them): a bad image or an over-long question is that
sample's error row in accuracy_table and validate, and left out of eval_base's figures, counted in the stage's
metrics; where every sample a stage selects is bad (benchmarks/bad_input_cases.py damages every row), or a cap is
below every image, it stops by name."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import yaml

from benchmarks.bad_input_cases import CAPPED, SCREENED, VQA_USERS, Case, Mutate, png_bomb, rewrite_table, set_param


def error_rows_counted(table: str, metrics: str, column: str, kind_column: str | None = None
                       ) -> Callable[[Path], str | None]:
    """The run's correct result when some samples are bad: rows with a reason in ``column`` of ``table`` (of kind
    ``error`` when ``kind_column`` is given), as many samples as the metrics' headline counts, and some samples
    answered."""
    def check(repo: Path) -> str | None:
        df = pd.read_parquet(repo / table)
        bad = df[df[column].notna()] if column in df else df.iloc[:0]
        if kind_column is not None and not (bad[kind_column] == "error").all():
            return f"error rows not of kind error in {table}"
        counted = json.loads((repo / metrics).read_text())["headline"].get("error_samples")
        if bad.empty or counted != bad["sample_id"].nunique():
            return f"{bad['sample_id'].nunique()} samples with error rows in {table}, {counted} in {metrics}"
        if df[column].notna().all():
            return f"no sample of {table} was answered"
        return None
    return check


def left_out_counted(metrics: str) -> Callable[[Path], str | None]:
    """The run's correct result where a stage leaves bad samples out: the headline counts some, and some others
    were answered."""
    def check(repo: Path) -> str | None:
        head = json.loads((repo / metrics).read_text())["headline"]
        if not head.get("error_samples") or not head.get("questions"):
            return f"{metrics}: error_samples {head.get('error_samples')}, questions {head.get('questions')}"
        return None
    return check


#: Where the stages that ask every selected sample record a bad one (an error row or a count in the metrics).
ERROR_ROWS = {"eval_base": left_out_counted("metrics/base_test.json"),"accuracy_table": error_rows_counted("data/rollouts/rollouts.parquet", "metrics/accuracy_table.json",
                                                  "error"),
              "validate": error_rows_counted("data/validate/requests.parquet", "metrics/validate.json",
                                            "request_error", "kind")}


def all_selected_but_one(rel: str, stage: str, column: str, value: Callable[[pd.DataFrame], object]) -> Mutate:
    """``value(split)`` in ``column`` of every sample the stage selects (its seeded ``num_samples``) but the first,
    so that the run has bad samples and good ones whichever rows the seed picks."""
    from knobctl.vqa.sources import select_samples

    def go(repo: Path) -> None:
        params = yaml.safe_load((repo / "params.yaml").read_text())

        def change(d: pd.DataFrame) -> pd.DataFrame:
            key = "max_samples" if stage == "eval_base" else "num_samples"
            wanted = params[stage][key] if params[stage][key] is None else min(params[stage][key], len(d))
            picked = select_samples(d.assign(position=range(len(d))), wanted, params["seed"])
            d = d.copy()
            d[column] = d[column].astype(object)
            bad = value(d)
            for i in picked["position"].iloc[1:]:
                d.at[i, column] = bad
            return d
        rewrite_table(rel, change)(repo)
    return go


def bad_request_cases() -> list[Case]:
    """A bad image or an over-long question is that sample's error row in accuracy_table and validate; where every
    sample is bad (bad_input_cases.py's split cases damage every row), the stage stops by name."""
    cases: list[Case] = []
    for stage in SCREENED:
        counted = ERROR_ROWS[stage]
        rel = VQA_USERS[stage]
        split = Path(rel).stem
        damages = [("undecodable images", "image", lambda d: b"not an image"),
                   ("truncated images", "image", lambda d: d["image"].iloc[0][:40]),
                   ("decompression-bomb images", "image", lambda d: png_bomb()),
                   ("100k-character questions", "question", lambda d: "what " * 20_000)]
        cases += [Case(stage, f"{split} split: {what} in all selected samples but one",
                       all_selected_but_one(rel, stage, column, value), legal=True, check=counted)
                  for what, column, value in damages]
        if stage not in CAPPED:  # no caps of its own in params
            continue
        cases += [Case(stage, f"params {stage}.max_image_pixels: 100 (every image above it)",
                       set_param(stage, "max_image_pixels", 100)),
                  Case(stage, f"params {stage}.max_question_tokens: 0", set_param(stage, "max_question_tokens", 0)),
                  Case(stage, f"params {stage}.max_question_tokens: .inf",
                       set_param(stage, "max_question_tokens", float("inf")))]
    return cases
