"""Data preparation: easy-VQA from its package, VQAv2 from a small fixture, bad input stops."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from knobctl.vqa.sources import COLUMNS, DataError, DataParams, decode_images, easy_vqa_type, load_vqav2, prepare


@pytest.fixture(scope="module")
def easy():
    return prepare(DataParams(max_train_images=60, max_test_images=20, val_fraction=0.25), seed=3)


def test_easy_vqa_splits_have_the_columns_and_types(easy):
    for split, df in easy.items():
        assert list(df.columns) == COLUMNS, split
        assert set(df["question_type"]) <= {"color", "shape", "yes/no"}
        assert all(len(a) == 1 for a in df["answers"])
    assert easy["train"]["image_id"].nunique() == 45 and easy["val"]["image_id"].nunique() == 15
    assert easy["test"]["image_id"].nunique() == 20


def test_no_image_in_two_splits(easy):
    ids = [set(df["image_id"]) for df in easy.values()]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])


def test_sample_ids_are_stable_and_unique(easy):
    again = prepare(DataParams(max_train_images=60, max_test_images=20, val_fraction=0.25), seed=3)
    for split in easy:
        assert easy[split]["sample_id"].is_unique
        assert easy[split]["sample_id"].tolist() == again[split]["sample_id"].tolist()


def test_images_decode_to_64px_rgb(easy):
    arr = decode_images(easy["test"]["image"].head(3).tolist())
    assert arr.shape == (3, 64, 64, 3) and arr.dtype == np.uint8 and arr.max() > 0


@pytest.mark.parametrize("answer, kind", [("yes", "yes/no"), ("circle", "shape"), ("teal", "color")])
def test_easy_vqa_question_type(answer, kind):
    assert easy_vqa_type(answer) == kind


def _png(color=(255, 0, 0)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), color).save(buf, format="PNG")
    return buf.getvalue()


def write_vqav2(root: Path, *, answers_for_q2=None, corrupt_image=False, missing_image=False) -> dict[str, Path]:
    images = root / "images"
    images.mkdir(parents=True)
    (images / "COCO_val2014_000000000001.jpg").write_bytes(b"not an image" if corrupt_image else _png())
    if not missing_image:
        (images / "COCO_val2014_000000000002.jpg").write_bytes(_png((0, 0, 255)))
    questions = {"questions": [
        {"image_id": 1, "question_id": 10, "question": "What color is it?"},
        {"image_id": 2, "question_id": 20, "question": "Is it blue?"},
    ]}
    ten = lambda a: [{"answer": a, "answer_id": i + 1} for i in range(10)]
    annotations = {"annotations": [
        {"question_id": 10, "image_id": 1, "answer_type": "other", "answers": ten("red")},
        {"question_id": 20, "image_id": 2, "answer_type": "yes/no",
         "answers": ten("yes") if answers_for_q2 is None else answers_for_q2},
    ]}
    (root / "q.json").write_text(json.dumps(questions))
    (root / "a.json").write_text(json.dumps(annotations))
    return {"questions": root / "q.json", "annotations": root / "a.json", "images": images}


def test_vqav2_source_reads_ten_answers(tmp_path):
    df = load_vqav2(**write_vqav2(tmp_path))
    assert df["sample_id"].tolist() == ["vqav2/10", "vqav2/20"]
    assert df["answers"].iloc[0] == ["red"] * 10
    assert df["question_type"].tolist() == ["other", "yes/no"]
    assert decode_images(df["image"].tolist())[1, 0, 0].tolist() == [0, 0, 255]


def test_vqav2_through_prepare(tmp_path):
    train = write_vqav2(tmp_path / "train")
    test = write_vqav2(tmp_path / "test")
    params = DataParams.from_params({"source": "vqav2", "val_fraction": 0.5,
                                     "vqav2_train": {k: str(v) for k, v in train.items()},
                                     "vqav2_test": {k: str(v) for k, v in test.items()}})
    tables = prepare(params, seed=0)
    assert len(tables["train"]) == len(tables["val"]) == 1 and len(tables["test"]) == 2


def test_question_without_answers_names_the_sample(tmp_path):
    with pytest.raises(DataError, match=r"sample vqav2/20: question 'Is it blue\?' has no answers in .*a.json"):
        load_vqav2(**write_vqav2(tmp_path, answers_for_q2=[]))


def test_unreadable_image_names_sample_and_file(tmp_path):
    with pytest.raises(DataError, match=r"sample vqav2/10: image file .*000000000001.jpg cannot be read"):
        load_vqav2(**write_vqav2(tmp_path, corrupt_image=True))


def test_missing_image_names_sample(tmp_path):
    with pytest.raises(DataError, match="sample vqav2/20: no image file for image_id 2"):
        load_vqav2(**write_vqav2(tmp_path, missing_image=True))


def test_missing_json_file(tmp_path):
    paths = write_vqav2(tmp_path)
    paths["annotations"].unlink()
    with pytest.raises(DataError, match="a.json is missing"):
        load_vqav2(**paths)


@pytest.mark.parametrize(
    "section, fragment",
    [({"source": "coco"}, "allowed: easy_vqa, vqav2"), ({"val_fraction": 1.5}, "strictly between"),
     ({"source": "vqav2"}, "map questions, annotations and images"), ({"oops": 1}, "unknown keys")],
)
def test_bad_params(section, fragment):
    with pytest.raises(ValueError, match=fragment):
        DataParams.from_params(section)
