"""VQA sources -> ``data/vqa/{train,val,test}.parquet``.

Columns of every split: ``sample_id`` (stable string), ``image_id``, ``image`` (PNG/JPEG
bytes, so a table survives a fresh clone on its own), ``question``, ``answers`` (list of
human answers), ``question_type``.

Sources:

* ``easy_vqa``: the PyPI package ``easy-vqa`` (64x64 images, one answer per question).
  Its question type is derived from the answer: ``color``, ``shape`` or ``yes/no``.
* ``vqav2``: the official VQAv2 layout, a questions JSON, an annotations JSON (10
  human answers per question) and an image folder. ``question_type`` is the
  annotation's ``answer_type`` (``yes/no``, ``number``, ``other``).

Bad input stops the stage with an error naming the sample and file: a question with no
answers, an unreadable image or a missing file is never silently scored as 0.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from knobctl.params import build, require, require_choice, require_int

COLUMNS = ["sample_id", "image_id", "image", "question", "answers", "question_type"]
SPLITS = ("train", "val", "test")
EASY_VQA_SHAPES = frozenset({"circle", "rectangle", "triangle"})


class DataError(ValueError):
    """Bad input data; the message names the sample and the file."""


@dataclass(frozen=True)
class DataParams:
    """The ``prepare_data:`` section of params.yaml."""

    source: str = "easy_vqa"
    val_fraction: float = 0.1
    max_train_images: int | None = None
    max_test_images: int | None = None
    vqav2_train: Mapping[str, str] | None = None
    vqav2_test: Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        require_choice(self.source, "prepare_data.source", ("easy_vqa", "vqav2"))
        require(0.0 < self.val_fraction < 1.0, "prepare_data.val_fraction", self.val_fraction,
                "use a fraction strictly between 0 and 1")
        for name in ("max_train_images", "max_test_images"):
            v = getattr(self, name)
            if v is not None:
                require_int(v, f"prepare_data.{name}", 2)
        if self.source == "vqav2":
            for name in ("vqav2_train", "vqav2_test"):
                spec = getattr(self, name)
                require(bool(spec) and set(spec) == {"questions", "annotations", "images"}, f"prepare_data.{name}",
                        spec, "map questions, annotations and images to paths (the official JSON files and the "
                        "image folder)")

    @classmethod
    def from_params(cls, section: Mapping[str, Any]) -> DataParams:
        return build(cls, section, "prepare_data")


def read_image_bytes(path: Path, sample_id: str) -> bytes:
    """The file's bytes, after checking that it decodes as an image."""
    if not path.is_file():
        raise DataError(f"sample {sample_id}: image file {path} is missing")
    data = path.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.verify()
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(f"sample {sample_id}: image file {path} cannot be read as an image ({exc})") from exc
    return data


def easy_vqa_type(answer: str) -> str:
    if answer in ("yes", "no"):
        return "yes/no"
    return "shape" if answer in EASY_VQA_SHAPES else "color"


def _easy_vqa_split(split: str, max_images: int | None) -> pd.DataFrame:
    import easy_vqa

    if split == "train":
        texts, answers, image_ids = easy_vqa.get_train_questions()
        paths = easy_vqa.get_train_image_paths()
    else:
        texts, answers, image_ids = easy_vqa.get_test_questions()
        paths = easy_vqa.get_test_image_paths()
    keep = sorted(paths)[:max_images] if max_images else sorted(paths)
    images = {i: read_image_bytes(Path(paths[i]), f"easy_vqa/{split}/image{i}") for i in keep}
    rows = []
    for n, (q, a, img) in enumerate(zip(texts, answers, image_ids)):
        if img not in images:
            continue
        sid = f"easy_vqa/{split}/{n}"
        if not a:
            raise DataError(f"sample {sid}: question {q!r} has no answer (easy_vqa {split} questions.json)")
        rows.append((sid, f"{split}/{img}", images[img], q, [a], easy_vqa_type(a)))
    return pd.DataFrame(rows, columns=COLUMNS)


def load_easy_vqa(max_train_images: int | None = None, max_test_images: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, test) tables from the easy-vqa package."""
    return _easy_vqa_split("train", max_train_images), _easy_vqa_split("test", max_test_images)


def load_vqav2(questions: str | Path, annotations: str | Path, images: str | Path, max_images: int | None = None) -> pd.DataFrame:
    """A table from official VQAv2 files; image files are found by id in any name that ends with it."""
    qpath, apath, idir = Path(questions), Path(annotations), Path(images)
    for p in (qpath, apath):
        if not p.is_file():
            raise DataError(f"VQAv2 file {p} is missing")
    if not idir.is_dir():
        raise DataError(f"VQAv2 image folder {idir} is missing")
    try:
        qs = json.loads(qpath.read_text())["questions"]
        anns = {a["question_id"]: a for a in json.loads(apath.read_text())["annotations"]}
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DataError(f"VQAv2 files {qpath} / {apath} are not in the official layout ({exc!r})") from exc
    by_id: dict[int, Path] = {}
    for f in sorted(idir.iterdir()):
        stem = f.stem.rsplit("_", 1)[-1]
        if stem.isdigit():
            by_id[int(stem)] = f
    image_ids = sorted({int(q["image_id"]) for q in qs})
    if max_images:
        image_ids = image_ids[:max_images]
    wanted = set(image_ids)
    cache: dict[int, bytes] = {}
    rows = []
    for q in qs:
        img = int(q["image_id"])
        if img not in wanted:
            continue
        sid = f"vqav2/{q['question_id']}"
        ann = anns.get(q["question_id"])
        answers = [a["answer"] for a in ann.get("answers", [])] if ann else []
        if not answers:
            raise DataError(f"sample {sid}: question {q['question']!r} has no answers in {apath}")
        if img not in cache:
            if img not in by_id:
                raise DataError(f"sample {sid}: no image file for image_id {img} in {idir}")
            cache[img] = read_image_bytes(by_id[img], sid)
        rows.append((sid, str(img), cache[img], q["question"], answers, ann.get("answer_type", "other")))
    return pd.DataFrame(rows, columns=COLUMNS)


def split_by_image(df: pd.DataFrame, val_fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Carve a validation split out of ``df`` by image, so no image lands in both."""
    images = np.array(sorted(df["image_id"].unique()))
    rng = np.random.default_rng(seed)
    n_val = max(1, round(len(images) * val_fraction))
    val_images = set(rng.choice(images, size=n_val, replace=False).tolist())
    is_val = df["image_id"].isin(val_images)
    return df[~is_val].reset_index(drop=True), df[is_val].reset_index(drop=True)


def prepare(params: DataParams, seed: int) -> dict[str, pd.DataFrame]:
    """All three splits for the configured source."""
    if params.source == "easy_vqa":
        train, test = load_easy_vqa(params.max_train_images, params.max_test_images)
    else:
        train = load_vqav2(**params.vqav2_train, max_images=params.max_train_images)
        test = load_vqav2(**params.vqav2_test, max_images=params.max_test_images)
    train, val = split_by_image(train, params.val_fraction, seed)
    return {"train": train, "val": val, "test": test}


def decode_images(blobs: list[bytes], size: int | None = None) -> np.ndarray:
    """PNG/JPEG bytes -> uint8 array [N, H, W, 3] (resized to size x size when given)."""
    out = []
    for blob in blobs:
        with Image.open(io.BytesIO(blob)) as im:
            im = im.convert("RGB")
            if size is not None and im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            out.append(np.asarray(im))
    return np.stack(out)
