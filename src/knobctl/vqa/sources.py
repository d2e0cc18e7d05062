"""VQA sources -> ``data/vqa/{train,val,test}.parquet``.

Columns of every split: ``sample_id`` (stable string), ``image_id``, ``image`` (PNG/JPEG
bytes, so a table survives a fresh clone on its own), ``question``, ``answers`` (list of
human answers), ``question_type``.

Sources:

* ``easy_vqa``: the PyPI package ``easy-vqa`` (64x64 images, one answer per question).
  Its question type is derived from the answer: ``color``, ``shape`` or ``yes/no``; with
  ``knowledge.relations`` above 0, ``knowledge`` questions about seeded facts of each image's
  kind of shape are added (:mod:`knobctl.vqa.knowledge`).
* ``vqav2``: the official VQAv2 layout, a questions JSON, an annotations JSON (10
  human answers per question) and an image folder. ``question_type`` is the
  annotation's ``answer_type`` (``yes/no``, ``number``, ``other``).
* ``mixed`` (the default): generated from the pipeline seed (:mod:`knobctl.vqa.mixed`): one patterned shape and
  one small mark per image, asked in ways that need different resources: ``pattern`` and ``shape`` (the fill
  pattern and the mark: resolution), ``recall`` (a seeded fact keyed on the shape's colour and the background's
  tint: depth), ``color`` (neither); ``text`` (a small digit) is off by default.
* ``scenes``: generated from the pipeline seed (:mod:`knobctl.vqa.scenes`): several objects per image, some
  small enough to fade at the low tier, so difficulty depends on the image. ``question_type`` is the
  family: ``color``, ``shape``, ``count``, ``small``, ``position``.

Bad input stops the stage with an error naming the sample and file: a question with no
answers, a null or empty answer, an image that does not decode to the end, a missing file,
JSON in another layout, questions and annotations that do not pair up, a repeated sample id
or two image files for one image id is never silently scored as 0 or half-trained on.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from knobctl.params import InputError, ParamsError, build, require, require_choice, require_int
from knobctl.vqa.knowledge import EASY_VQA_SHAPES, KnowledgeParams, knowledge_rows
from knobctl.vqa.mixed import MixedParams, mixed_rows
from knobctl.vqa.scenes import SceneParams, scene_rows

SOURCES = ("mixed", "easy_vqa", "vqav2", "scenes")
COLUMNS = ["sample_id", "image_id", "image", "question", "answers", "question_type"]
SPLITS = ("train", "val", "test")


REBUILD_SPLITS = "rebuild the splits with `dvc repro prepare_data`"


class DataError(InputError):
    """Bad input data; the message names the sample and the file (a stage prints it without a traceback)."""


@dataclass(frozen=True)
class DataParams:
    """The ``prepare_data:`` section of params.yaml."""

    source: str = "mixed"
    val_fraction: float = 0.08
    max_train_images: int | None = None
    max_test_images: int | None = None
    vqav2_train: Mapping[str, str] | None = None
    vqav2_test: Mapping[str, str] | None = None
    scenes: SceneParams = field(default_factory=SceneParams)
    knowledge: KnowledgeParams = field(default_factory=KnowledgeParams)
    mixed: MixedParams = field(default_factory=MixedParams)

    def __post_init__(self) -> None:
        require_choice(self.source, "prepare_data.source", SOURCES)
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
    """The file's bytes, after checking that the whole image decodes."""
    if not path.is_file():
        raise DataError(f"sample {sample_id}: image file {path} is missing")
    data = path.read_bytes()
    try:
        # verify() checks the container (PNG chunk CRCs, a missing IEND) without decoding; load() decodes the
        # pixels, which is what catches a JPEG or PNG cut short. Both are needed, and verify() closes the image.
        with Image.open(io.BytesIO(data)) as im:
            im.verify()
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            im.convert("RGB")  # decode_images needs RGB later; an unconvertible mode must fail here
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"sample {sample_id}: image file {path} cannot be read as an image ({exc})") from exc
    return data


def check_answer(answer: Any, sample_id: str, where: str | Path) -> str:
    """``answer`` when it is a non-blank string; otherwise the error naming the sample and ``where``."""
    if not isinstance(answer, str) or not answer.strip():
        raise DataError(f"sample {sample_id}: answer {answer!r} is null or empty in {where}")
    return answer


def check_unique_sample_ids(df: pd.DataFrame, where: str) -> None:
    """Every ``sample_id`` of a table once: later stages key scores and choices by it."""
    dup = df["sample_id"][df["sample_id"].duplicated()]
    if len(dup):
        raise DataError(f"sample id {dup.iloc[0]} occurs more than once ({len(dup)} repeats in all) in {where}")


def easy_vqa_type(answer: str) -> str:
    if answer in ("yes", "no"):
        return "yes/no"
    return "shape" if answer in EASY_VQA_SHAPES else "color"


def _easy_vqa_questions_file(split: str) -> Path:
    import easy_vqa

    return Path(easy_vqa.__file__).parent / "data" / split / "questions.json"


def _easy_vqa_split(split: str, max_images: int | None) -> pd.DataFrame:
    import easy_vqa

    if split == "train":
        texts, answers, image_ids = easy_vqa.get_train_questions()
        paths = easy_vqa.get_train_image_paths()
    else:
        texts, answers, image_ids = easy_vqa.get_test_questions()
        paths = easy_vqa.get_test_image_paths()
    qfile = _easy_vqa_questions_file(split)
    keep = sorted(paths)[:max_images] if max_images else sorted(paths)
    images = {i: read_image_bytes(Path(paths[i]), f"easy_vqa/{split}/image{i}") for i in keep}
    rows = []
    for n, (q, a, img) in enumerate(zip(texts, answers, image_ids)):
        if img not in images:
            continue
        sid = f"easy_vqa/{split}/{n}"
        a = check_answer(a, sid, f"{qfile} (question {q!r})")
        rows.append((sid, f"{split}/{img}", images[img], q, [a], easy_vqa_type(a)))
    return pd.DataFrame(rows, columns=COLUMNS)


def load_easy_vqa(max_train_images: int | None = None, max_test_images: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, test) tables from the easy-vqa package."""
    return _easy_vqa_split("train", max_train_images), _easy_vqa_split("test", max_test_images)


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _read_json_list(path: Path, key: str) -> list[Any]:
    """``data[key]`` of an official VQAv2 JSON file; any other layout names the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"VQAv2 file {path} is not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or key not in data:
        found = sorted(data)[:5] if isinstance(data, dict) else type(data).__name__
        raise DataError(f"VQAv2 file {path} is not in the official layout: no {key!r} key at the top (found {found})")
    if not isinstance(data[key], list):
        raise DataError(f"VQAv2 file {path}: {key!r} must be a list, got {type(data[key]).__name__}")
    return data[key]


def _entry_error(path: Path, kind: str, n: int, entry: Any, problem: str) -> DataError:
    qid = entry.get("question_id") if isinstance(entry, dict) else None
    sample = f"sample vqav2/{qid}: " if _is_id(qid) else ""
    return DataError(f"{sample}{kind} #{n} in VQAv2 file {path} {problem}")


def _read_questions(path: Path) -> list[dict[str, Any]]:
    qs = _read_json_list(path, "questions")
    seen: set[int] = set()
    for n, q in enumerate(qs):
        if not isinstance(q, dict):
            raise _entry_error(path, "question", n, q, f"is a {type(q).__name__}, not an object")
        for key in ("question_id", "image_id"):
            if not _is_id(q.get(key)):
                raise _entry_error(path, "question", n, q, f"needs an integer {key!r}, got {q.get(key)!r}")
        if not isinstance(q.get("question"), str) or not q["question"].strip():
            raise _entry_error(path, "question", n, q, f"needs a non-empty 'question' text, got {q.get('question')!r}")
        if q["question_id"] in seen:
            raise DataError(f"sample vqav2/{q['question_id']}: question id {q['question_id']} occurs more than once "
                            f"in {path}")
        seen.add(q["question_id"])
    return qs


def _read_annotations(path: Path) -> dict[int, dict[str, Any]]:
    anns: dict[int, dict[str, Any]] = {}
    for n, a in enumerate(_read_json_list(path, "annotations")):
        if not isinstance(a, dict):
            raise _entry_error(path, "annotation", n, a, f"is a {type(a).__name__}, not an object")
        for key in ("question_id", "image_id"):
            if not _is_id(a.get(key)):
                raise _entry_error(path, "annotation", n, a, f"needs an integer {key!r}, got {a.get(key)!r}")
        answers = a.get("answers", [])
        if not isinstance(answers, list):
            raise _entry_error(path, "annotation", n, a, f"needs 'answers' as a list, got {answers!r}")
        for k, x in enumerate(answers):
            if not (isinstance(x, dict) and "answer" in x):
                raise _entry_error(path, "annotation", n, a, f"has answers entry #{k} {x!r}, not an object with an "
                                   "'answer'")
        if not isinstance(a.get("answer_type", "other"), str):
            raise _entry_error(path, "annotation", n, a, f"has a non-text 'answer_type' {a['answer_type']!r}")
        if a["question_id"] in anns:
            raise DataError(f"sample vqav2/{a['question_id']}: question id {a['question_id']} has more than one "
                            f"annotation in {path}")
        anns[a["question_id"]] = a
    return anns


def _image_files(idir: Path) -> dict[int, Path]:
    """Image files by the numeric id their name ends with; two files for one id is an error, not a silent pick."""
    by_id: dict[int, Path] = {}
    for f in sorted(idir.iterdir()):
        stem = f.stem.rsplit("_", 1)[-1]
        if not (stem.isdigit() and f.is_file()):
            continue
        img = int(stem)
        if img in by_id:
            raise DataError(f"VQAv2 image folder {idir}: image_id {img} has two files, {by_id[img].name} and "
                            f"{f.name}; keep one")
        by_id[img] = f
    return by_id


def load_vqav2(questions: str | Path, annotations: str | Path, images: str | Path, max_images: int | None = None) -> pd.DataFrame:
    """A table from official VQAv2 files; image files are found by id in any name that ends with it."""
    qpath, apath, idir = Path(questions), Path(annotations), Path(images)
    for p in (qpath, apath):
        if not p.is_file():
            raise DataError(f"VQAv2 file {p} is missing")
    if not idir.is_dir():
        raise DataError(f"VQAv2 image folder {idir} is missing")
    qs = _read_questions(qpath)
    anns = _read_annotations(apath)
    # The two files must describe the same questions: a mismatch means they come from different releases or
    # splits, and any answer looked up across them could belong to another question.
    for q in qs:
        ann = anns.get(q["question_id"])
        if ann is None:
            raise DataError(f"sample vqav2/{q['question_id']}: question id {q['question_id']} in {qpath} has no "
                            f"annotation in {apath}")
        if ann["image_id"] != q["image_id"]:
            raise DataError(f"sample vqav2/{q['question_id']}: image_id {q['image_id']} in {qpath} but "
                            f"{ann['image_id']} in {apath}")
    orphans = sorted(set(anns) - {q["question_id"] for q in qs})
    if orphans:
        raise DataError(f"sample vqav2/{orphans[0]}: annotation question id(s) {orphans[:5]} in {apath} are not "
                        f"among the questions in {qpath}")
    by_id = _image_files(idir)
    image_ids = sorted({q["image_id"] for q in qs})
    if max_images:
        image_ids = image_ids[:max_images]
    wanted = set(image_ids)
    cache: dict[int, bytes] = {}
    rows = []
    for q in qs:
        img = q["image_id"]
        if img not in wanted:
            continue
        sid = f"vqav2/{q['question_id']}"
        ann = anns[q["question_id"]]
        answers = [check_answer(a["answer"], sid, apath) for a in ann.get("answers", [])]
        if not answers:
            raise DataError(f"sample {sid}: question {q['question']!r} has no answers in {apath}")
        if img not in cache:
            if img not in by_id:
                raise DataError(f"sample {sid}: no image file for image_id {img} in {idir}")
            cache[img] = read_image_bytes(by_id[img], sid)
        rows.append((sid, str(img), cache[img], q["question"], answers, ann.get("answer_type", "other")))
    return pd.DataFrame(rows, columns=COLUMNS)


#: Generated sources: params section -> (params class, rows of one split).
GENERATORS: dict[str, tuple[type, Callable[..., list[tuple[Any, ...]]]]] = {
    "scenes": (SceneParams, scene_rows), "mixed": (MixedParams, mixed_rows)}


def load_generated(source: str, params: SceneParams | MixedParams, seed: int, max_train_images: int | None = None,
                   max_test_images: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, test) tables of a generated source from ``seed``; max_*_images keep the first images (the same
    ones)."""
    rows = GENERATORS[source][1]
    n_train = min(params.train_images, max_train_images or params.train_images)
    n_test = min(params.test_images, max_test_images or params.test_images)
    return (pd.DataFrame(rows("train", n_train, seed, params), columns=COLUMNS),
            pd.DataFrame(rows("test", n_test, seed, params), columns=COLUMNS))


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
        if params.knowledge.enabled:
            train = pd.concat([train, knowledge_rows(train, "train", params.knowledge, seed)], ignore_index=True)
            test = pd.concat([test, knowledge_rows(test, "test", params.knowledge, seed)], ignore_index=True)
        sources = {"train": _easy_vqa_questions_file("train"), "test": _easy_vqa_questions_file("test")}
    elif params.source in GENERATORS:
        train, test = load_generated(params.source, getattr(params, params.source), seed, params.max_train_images,
                                     params.max_test_images)
        sources = {split: f"{params.source} generated from seed {seed}" for split in ("train", "test")}
    else:
        train = load_vqav2(**params.vqav2_train, max_images=params.max_train_images)
        test = load_vqav2(**params.vqav2_test, max_images=params.max_test_images)
        sources = {"train": params.vqav2_train["questions"], "test": params.vqav2_test["questions"]}
    check_unique_sample_ids(train, f"train ({sources['train']})")
    check_unique_sample_ids(test, f"test ({sources['test']})")
    train, val = split_by_image(train, params.val_fraction, seed)
    return {"train": train, "val": val, "test": test}


#: The most pixels an image may declare: a decompression bomb (a small PNG that declares a huge canvas) is refused
#: before it is decoded. VQAv2's largest images are about 0.3 million pixels.
MAX_IMAGE_PIXELS = 40_000_000


def decode_images(blobs: list[bytes], size: int | None = None, ids: Sequence[str] | None = None) -> np.ndarray:
    """PNG/JPEG bytes -> uint8 array [N, H, W, 3] (resized to size x size when given). An image that does not
    decode (truncated, not an image, a decompression bomb) is a :class:`DataError` naming it (``ids[i]`` or its
    position)."""
    return np.stack([decode_image(blob, size, ids[i] if ids is not None else f"image {i} of {len(blobs)}")
                     for i, blob in enumerate(blobs)])


def decode_image(blob: bytes, size: int | None = None, name: str = "the image", max_pixels: int | None = None,
                 fix: str = REBUILD_SPLITS, cap: str = "a decompression bomb?") -> np.ndarray:
    """One image's bytes -> uint8 [H, W, 3], or a :class:`DataError` naming ``name`` and saying ``fix`` (none if
    empty); an image that declares more than ``max_pixels`` (default :data:`MAX_IMAGE_PIXELS`) is refused before
    it is decoded, ``cap`` saying why there is a limit."""
    limit = MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    tail = f"; {fix}" if fix else ""
    try:
        with Image.open(io.BytesIO(blob)) as im:
            if im.size[0] * im.size[1] > limit:
                raise DataError(f"{name}: the image declares {im.size[0]}x{im.size[1]} pixels, more than "
                                f"{limit:,} ({cap}){tail}")
            im = im.convert("RGB")
            if size is not None and im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            return np.asarray(im)
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError, ValueError, TypeError) as exc:
        if isinstance(exc, DataError):
            raise
        # PIL names the buffer by its memory address, which would make the message differ from run to run
        why = re.sub(r" ?<[^<>]* at 0x[0-9a-fA-F]+>", "", str(exc))[:200]
        raise DataError(f"{name}: the image does not decode ({type(exc).__name__}: {why}){tail}") from exc


def select_samples(df: pd.DataFrame, num_samples: int | None, seed: int, split: str = "val",
                   key: str = "accuracy_table.num_samples") -> pd.DataFrame:
    """A seeded subset of a split (all of it for None), in the split's own order; ``key`` names the
    params value in the error when the split is too small."""
    if num_samples is None:
        return df.reset_index(drop=True)
    if num_samples > len(df):
        raise ParamsError(f"{key}={num_samples} but the {split} split has {len(df)} questions; lower it or use null "
                          "for all")
    rows = np.sort(np.random.default_rng(seed).choice(len(df), size=num_samples, replace=False))
    return df.iloc[rows].reset_index(drop=True)
