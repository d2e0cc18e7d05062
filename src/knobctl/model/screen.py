"""Requests the model cannot be asked, found before it runs: each becomes that sample's error row.

A dataset may hold a few bad requests: an image that does not decode (not an image, cut short), one that
declares more pixels than a decoder should allocate (a decompression bomb), a question longer than the model
can read. Each is a property of one sample, so the accuracy table and validate record it as that sample's
error (prediction and score null, counted in the stage's summary and metrics) and go on, as they do for a
sample whose forward pass raises; eval_base and block_importance leave it out of their figures and count it
(:func:`askable`). Only a split where every sample fails stops the stage.

The caps come from params (``max_image_pixels``, ``max_question_tokens`` in the ``accuracy_table`` and
``validate`` sections); null, and the stages without those keys, take the model's own limits (:func:`request_caps`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from knobctl.model.runtime import Runtime
from knobctl.params import InputError
from knobctl.vqa.sources import MAX_IMAGE_PIXELS, DataError, decode_image


@dataclass(frozen=True)
class RequestCaps:
    """The largest image (declared pixels) and question (tokens) a request may have, and where each came from."""

    max_image_pixels: int
    max_question_tokens: int
    source: str  # how the question cap was set, for the error rows


def request_caps(rt: Runtime, max_image_pixels: int | None, max_question_tokens: int | None, max_new_tokens: int,
                 section: str) -> RequestCaps:
    """The caps of ``section``'s params, or the model's own where they are null: for pixels the decoder's
    decompression-bomb limit (:data:`knobctl.vqa.sources.MAX_IMAGE_PIXELS`, below PIL's own); for the question,
    the positions the language model was built for less the longest prompt around a question (the highest
    tier's visual and special tokens) and the answer's ``max_new_tokens``, and at most the tokenizer's
    ``model_max_length``."""
    pixels = MAX_IMAGE_PIXELS if max_image_pixels is None else max_image_pixels
    if max_question_tokens is not None:
        return RequestCaps(pixels, max_question_tokens, f"{section}.max_question_tokens")
    limits = []
    positions = getattr(rt.config.text_config, "max_position_embeddings", None)
    if positions:
        prompt = max(t["prompt_tokens"] for t in rt.tier_table().values())
        limits.append((positions - prompt - max_new_tokens,
                       f"the model's {positions} positions - {prompt} prompt tokens - {max_new_tokens} answer tokens"))
    tokenizer_max = getattr(rt.tokenizer, "model_max_length", None)
    if isinstance(tokenizer_max, int) and tokenizer_max < 10**9:  # tokenizers without a limit store 1e30
        limits.append((tokenizer_max, f"the tokenizer's model_max_length {tokenizer_max}"))
    if not limits:
        return RequestCaps(pixels, 10**9, "no limit: the model declares none")
    cap, why = min(limits)
    return RequestCaps(pixels, max(cap, 1), f"{why}; {section}.max_question_tokens sets another")


@dataclass(frozen=True)
class Screened:
    """A part's requests after screening: the decoded images of the samples that passed ([G, H, W, 3], in
    order), their positions in the part, and each sample's error (None where it passed)."""

    images: np.ndarray
    good: list[int]
    errors: list[str | None]


def screen(rt: Runtime, part: pd.DataFrame, question_ids: Sequence[Sequence[int]], caps: RequestCaps,
           section: str) -> Screened:
    """Decode every image of ``part`` at the model's size and check it and the question against ``caps``."""
    images, good, errors = [], [], []
    for i, (blob, ids) in enumerate(zip(part["image"], question_ids)):
        error = None
        if len(ids) > caps.max_question_tokens:
            error = (f"question: {len(ids):,} tokens, more than the cap of {caps.max_question_tokens:,} "
                     f"({caps.source})")
        else:
            try:
                images.append(decode_image(blob, rt.image_size, "image", caps.max_image_pixels, fix="",
                                           cap=f"the cap of {section}.max_image_pixels"))
            except DataError as exc:
                error = str(exc)
        errors.append(error)
        if error is None:
            good.append(i)
    empty = np.zeros((0, rt.image_size, rt.image_size, 3), np.uint8)
    return Screened(np.stack(images) if images else empty, good, errors)


@dataclass(frozen=True)
class Askable:
    """The samples a model can be asked (the input's rows, in order), their images decoded at the model's size
    ([N, S, S, 3] uint8, as :func:`knobctl.vqa.sources.decode_images` gives them), and one row per sample it
    cannot: sample_id, question_type and the reason."""

    asked: pd.DataFrame
    images: np.ndarray
    errors: pd.DataFrame


def askable(rt: Runtime, samples: pd.DataFrame, section: str) -> Askable:
    """``samples`` screened at the model's own caps (:func:`request_caps`, the answer at its ``max_new_tokens``);
    an :class:`~knobctl.params.InputError` when none can be asked, naming the first reason."""
    qids = rt.tokenizer(samples["question"].tolist(), add_special_tokens=False)["input_ids"]
    caps = request_caps(rt, None, None, rt.spec.max_new_tokens, section)
    screened = screen(rt, samples, qids, caps, section)
    errors = screened.errors
    failed = [i for i, e in enumerate(errors) if e is not None]
    rows = samples.iloc[failed]
    table = pd.DataFrame({"sample_id": rows["sample_id"].to_numpy(), "question_type": rows["question_type"].to_numpy(),
                          "error": [errors[i] for i in failed]})
    if failed and len(failed) == len(samples):
        raise InputError(f"every one of the {len(samples)} samples {section} selected failed, e.g. "
                         f"{table['sample_id'].iloc[0]}: {table['error'].iloc[0]}; fix the split "
                         "(`dvc repro prepare_data`)")
    asked = samples if not failed else samples.drop(index=samples.index[failed]).reset_index(drop=True)
    return Askable(asked, screened.images, table)
