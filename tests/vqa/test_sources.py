"""Data preparation: easy-VQA from its package, VQAv2 from a small fixture, bad input stops."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import easy_vqa
import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from knobctl.vqa.sources import (
    COLUMNS,
    DataError,
    DataParams,
    check_unique_sample_ids,
    decode_images,
    easy_vqa_type,
    load_vqav2,
    prepare,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def easy():
    return prepare(DataParams(source="easy_vqa", max_train_images=60, max_test_images=20, val_fraction=0.25), seed=3)


def test_easy_vqa_splits_have_the_columns_and_types(easy):
    for split, df in easy.items():
        assert list(df.columns) == COLUMNS, split
        assert set(df["question_type"]) <= {"color", "shape", "yes/no", "knowledge"}
        assert all(len(a) == 1 for a in df["answers"])
    assert easy["train"]["image_id"].nunique() == 45 and easy["val"]["image_id"].nunique() == 15
    assert easy["test"]["image_id"].nunique() == 20


def test_no_image_in_two_splits(easy):
    ids = [set(df["image_id"]) for df in easy.values()]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])


def test_sample_ids_are_stable_and_unique(easy):
    again = prepare(DataParams(source="easy_vqa", max_train_images=60, max_test_images=20, val_fraction=0.25), seed=3)
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


def _noise(fmt: str) -> bytes:
    """A 64x64 noise image: its compressed data is long enough that half of it is clearly a cut."""
    arr = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def _png_with_short_idat() -> bytes:
    """A PNG whose pixel data stops halfway although every chunk (CRCs, IEND) is intact: only decoding finds it."""
    data = _noise("PNG")
    pos, out = 8, data[:8]
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        if kind == b"IDAT":
            body = body[: len(body) // 2]
        out += struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        pos += 12 + n
    return out


TRUNCATED = {
    "jpeg_cut": _noise("JPEG")[: len(_noise("JPEG")) // 2],
    "png_cut": _noise("PNG")[: len(_noise("PNG")) // 2],
    "png_short_idat": _png_with_short_idat(),
}


def write_vqav2(root: Path, *, answers_for_q2=None, corrupt_image=False, missing_image=False, image1: bytes | None = None,
                edit: Callable[[dict[str, Any], dict[str, Any]], None] | None = None) -> dict[str, Path]:
    """A two-question VQAv2 folder; ``image1`` replaces image 1's bytes, ``edit(questions, annotations)`` the JSON."""
    images = root / "images"
    images.mkdir(parents=True)
    one = b"not an image" if corrupt_image else _png() if image1 is None else image1
    (images / "COCO_val2014_000000000001.jpg").write_bytes(one)
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
    if edit is not None:
        edit(questions, annotations)
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
    with pytest.raises(DataError, match="sample vqav2/20: no image file for image_id 2 in .*images"):
        load_vqav2(**write_vqav2(tmp_path, missing_image=True))


@pytest.mark.parametrize("kind", sorted(TRUNCATED))
def test_truncated_vqav2_image_names_sample_and_file(tmp_path, kind):
    with pytest.raises(DataError, match=r"sample vqav2/10: image file .*000000000001.jpg cannot be read as an image"):
        load_vqav2(**write_vqav2(tmp_path, image1=TRUNCATED[kind]))


def _fake_easy_vqa_test(monkeypatch, tmp_path: Path, image: bytes, answers: tuple[str, str] = ("red", "circle")) -> None:
    """easy-vqa's test split replaced by two questions on one image file (train stays the real package)."""
    (tmp_path / "0.png").write_bytes(image)
    monkeypatch.setattr(easy_vqa, "get_test_image_paths", lambda: {0: str(tmp_path / "0.png")})
    monkeypatch.setattr(easy_vqa, "get_test_questions",
                        lambda: (["What color is the shape?", "What shape is it?"], list(answers), [0, 0]))


@pytest.mark.parametrize("kind", sorted(TRUNCATED))
def test_truncated_easy_vqa_image_names_sample_and_file(monkeypatch, tmp_path, kind):
    _fake_easy_vqa_test(monkeypatch, tmp_path, TRUNCATED[kind])
    with pytest.raises(DataError, match=r"sample easy_vqa/test/image0: image file .*0.png cannot be read as an image"):
        prepare(DataParams(source="easy_vqa", max_train_images=4), seed=0)


@pytest.mark.parametrize("answer", ["", "  ", None])
def test_empty_easy_vqa_answer_names_sample_and_file(monkeypatch, tmp_path, answer):
    _fake_easy_vqa_test(monkeypatch, tmp_path, _noise("PNG"), answers=("red", answer))
    with pytest.raises(DataError, match=rf"sample easy_vqa/test/1: answer {answer!r} is null or empty in "
                                        r".*easy_vqa.data.test.questions.json \(question 'What shape is it\?'\)"):
        prepare(DataParams(source="easy_vqa", max_train_images=4), seed=0)


def test_fake_easy_vqa_split_is_read(monkeypatch, tmp_path):
    """The control for the two tests above: the same fake split with good data goes through."""
    _fake_easy_vqa_test(monkeypatch, tmp_path, _noise("PNG"))
    test = prepare(DataParams(source="easy_vqa", max_train_images=4), seed=0)["test"]
    assert test["sample_id"].tolist()[:2] == ["easy_vqa/test/0", "easy_vqa/test/1"]
    knowledge = test.iloc[2:]  # the red circle's kind is known, so it gets knowledge questions
    assert len(knowledge) == 4 and set(knowledge["question_type"]) == {"knowledge"}
    assert test["answers"].tolist()[:2] == [["red"], ["circle"]]


@pytest.mark.parametrize("bad", [None, "", " "])
def test_null_or_empty_vqav2_answer_names_sample_and_file(tmp_path, bad):
    answers = [{"answer": "yes", "answer_id": 1}, {"answer": bad, "answer_id": 2}]
    with pytest.raises(DataError, match=rf"sample vqav2/20: answer {bad!r} is null or empty in .*a.json"):
        load_vqav2(**write_vqav2(tmp_path, answers_for_q2=answers))


def _q(questions: dict[str, Any], n: int) -> dict[str, Any]:
    return questions["questions"][n]


def _a(annotations: dict[str, Any], n: int) -> dict[str, Any]:
    return annotations["annotations"][n]


# (edit of the fixture's questions / annotations, the error it must raise)
BAD_JSON = {
    "duplicate_question_id": (lambda q, a: _q(q, 1).update(question_id=10),
                              r"sample vqav2/10: question id 10 occurs more than once in .*q.json"),
    "duplicate_annotation": (lambda q, a: a["annotations"].append(dict(_a(a, 1))),
                             r"sample vqav2/20: question id 20 has more than one annotation in .*a.json"),
    "question_without_annotation": (lambda q, a: a["annotations"].pop(1),
                                    r"sample vqav2/20: question id 20 in .*q.json has no annotation in .*a.json"),
    "annotation_without_question": (lambda q, a: a["annotations"].append({**_a(a, 1), "question_id": 30}),
                                    (r"sample vqav2/30: annotation question id\(s\) \[30\] in .*a.json are not "
                                     r"among the questions in .*q.json")),
    "image_id_differs": (lambda q, a: _a(a, 1).update(image_id=1),
                         r"sample vqav2/20: image_id 2 in .*q.json but 1 in .*a.json"),
    "no_questions_key": (lambda q, a: q.update(data=q.pop("questions")),
                         r"VQAv2 file .*q.json is not in the official layout: no 'questions' key"),
    "no_annotations_key": (lambda q, a: a.pop("annotations"),
                           r"VQAv2 file .*a.json is not in the official layout: no 'annotations' key"),
    "questions_not_a_list": (lambda q, a: q.update(questions={"10": "x"}),
                             r"VQAv2 file .*q.json: 'questions' must be a list, got dict"),
    "question_without_image_id": (lambda q, a: _q(q, 1).pop("image_id"),
                                  (r"sample vqav2/20: question #1 in VQAv2 file .*q.json needs an integer "
                                   r"'image_id', got None")),
    "question_id_as_text": (lambda q, a: _q(q, 0).update(question_id="10"),
                            r"question #0 in VQAv2 file .*q.json needs an integer 'question_id', got '10'"),
    "question_not_an_object": (lambda q, a: q["questions"].append(None),
                               r"question #2 in VQAv2 file .*q.json is a NoneType, not an object"),
    "empty_question_text": (lambda q, a: _q(q, 0).update(question=""),
                            r"sample vqav2/10: question #0 in VQAv2 file .*q.json needs a non-empty 'question' text"),
    "null_answers_entry": (lambda q, a: _a(a, 1)["answers"].append(None),
                           (r"sample vqav2/20: annotation #1 in VQAv2 file .*a.json has answers entry #10 None, "
                            r"not an object with an 'answer'")),
    "answers_not_a_list": (lambda q, a: _a(a, 0).update(answers="red"),
                           r"sample vqav2/10: annotation #0 in VQAv2 file .*a.json needs 'answers' as a list"),
}


@pytest.mark.parametrize("case", sorted(BAD_JSON))
def test_bad_vqav2_json_names_file_and_sample(tmp_path, case):
    edit, message = BAD_JSON[case]
    with pytest.raises(DataError, match=message):
        load_vqav2(**write_vqav2(tmp_path, edit=edit))


@pytest.mark.parametrize("name", ["q.json", "a.json"])
def test_vqav2_json_syntax_error_names_the_file(tmp_path, name):
    paths = write_vqav2(tmp_path)
    (tmp_path / name).write_text((tmp_path / name).read_text()[:-5])
    with pytest.raises(DataError, match=rf"VQAv2 file .*{name} is not valid JSON \(.*: line 1 column"):
        load_vqav2(**paths)


def test_two_image_files_for_one_id_names_both(tmp_path):
    paths = write_vqav2(tmp_path)
    (paths["images"] / "1.png").write_bytes(_png((0, 255, 0)))
    with pytest.raises(DataError, match=r"image folder .*images: image_id 1 has two files, "
                                        r"1.png and COCO_val2014_000000000001.jpg"):
        load_vqav2(**paths)


def test_repeated_sample_id_in_a_table_names_id_and_source():
    df = pd.DataFrame({"sample_id": ["easy_vqa/train/0", "easy_vqa/train/1", "easy_vqa/train/0"]})
    with pytest.raises(DataError, match=r"sample id easy_vqa/train/0 occurs more than once \(1 repeats in all\) in "
                                        r"train \(q.json\)"):
        check_unique_sample_ids(df, "train (q.json)")
    check_unique_sample_ids(df.head(2), "train (q.json)")


def _stage_params(tmp_path: Path, test_image1: bytes | None) -> Path:
    """params.yaml for prepare_data on VQAv2: a good train folder, a test folder whose image 1 is ``test_image1``."""
    train = write_vqav2(tmp_path / "src_train")
    test = write_vqav2(tmp_path / "src_test", image1=test_image1)
    params = {"seed": 0, "prepare_data": {
        "source": "vqav2", "val_fraction": 0.5, "max_train_images": None, "max_test_images": None,
        "vqav2_train": {k: str(v) for k, v in train.items()}, "vqav2_test": {k: str(v) for k, v in test.items()}}}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def _run_stage(params: Path, out: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "stages/prepare_data.py", "--params", str(params), "--out", str(out)],
                          check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_stage_writes_all_three_splits(tmp_path):
    """The control for the next test: the same params with a good test folder go through."""
    run = _run_stage(_stage_params(tmp_path, None), tmp_path / "vqa")
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in (tmp_path / "vqa").iterdir()) == ["test.parquet", "train.parquet", "val.parquet"]
    assert pd.read_parquet(tmp_path / "vqa" / "test.parquet")["sample_id"].tolist() == ["vqav2/10", "vqav2/20"]


@pytest.mark.parametrize("previous", [False, True])
def test_stage_with_bad_test_split_leaves_no_partial_output(tmp_path, previous):
    out = tmp_path / "vqa"
    if previous:
        out.mkdir()
        (out / "train.parquet").write_bytes(b"previous run")
    run = _run_stage(_stage_params(tmp_path, TRUNCATED["jpeg_cut"]), out)
    assert run.returncode == 2, run.stderr
    assert run.stderr.startswith("prepare_data: error: sample vqav2/10: image file "), run.stderr
    assert "src_test/images/COCO_val2014_000000000001.jpg cannot be read as an image" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    if previous:
        assert [(p.name, p.read_bytes()) for p in out.iterdir()] == [("train.parquet", b"previous run")]
    else:
        assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml", "src_test", "src_train"] + ["vqa"] * previous


def test_missing_json_file(tmp_path):
    paths = write_vqav2(tmp_path)
    paths["annotations"].unlink()
    with pytest.raises(DataError, match="a.json is missing"):
        load_vqav2(**paths)


@pytest.mark.parametrize(
    "section, fragment",
    [({"source": "coco"}, "allowed: mixed, easy_vqa, vqav2, scenes"), ({"val_fraction": 1.5}, "strictly between"),
     ({"source": "vqav2"}, "map questions, annotations and images"), ({"oops": 1}, "unknown keys")],
)
def test_bad_params(section, fragment):
    with pytest.raises(ValueError, match=fragment):
        DataParams.from_params(section)


def test_an_image_that_does_not_decode_is_named(monkeypatch):
    import io

    from PIL import Image

    from knobctl.vqa import sources
    from knobctl.vqa.sources import DataError, decode_images

    buf = io.BytesIO()
    Image.new("RGB", (20, 20), "red").save(buf, format="PNG")
    png = buf.getvalue()
    assert decode_images([png], size=8).shape == (1, 8, 8, 3)
    with pytest.raises(DataError, match=r"q7: the image does not decode .*dvc repro prepare_data"):
        decode_images([png, png[: len(png) // 2]], ids=["q6", "q7"])  # truncated
    with pytest.raises(DataError, match=r"image 0 of 1: the image does not decode \(UnidentifiedImageError"):
        decode_images([b"not an image"])
    monkeypatch.setattr(sources, "MAX_IMAGE_PIXELS", 100)  # 400 pixels declared: refused before decoding
    with pytest.raises(DataError, match=r"declares 20x20 pixels, more than 100 \(a decompression bomb\?\)"):
        decode_images([png])
