"""Knowledge questions: seeded facts about each easy-VQA image's kind of shape."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from knobctl.params import ParamsError
from knobctl.vqa.knowledge import (
    EASY_VQA_COLORS,
    EASY_VQA_SHAPES,
    RELATIONS,
    VALUES,
    KnowledgeParams,
    easy_vqa_kinds,
    fact_table,
    knowledge_rows,
)
from knobctl.vqa.sources import COLUMNS, DataParams, load_easy_vqa, prepare

P = KnowledgeParams(relations=6, per_image=3, values=5)


def _table(rows: list[tuple[str, str, str, str]]) -> pd.DataFrame:
    """(image_id, question, answer, type) -> a source table."""
    return pd.DataFrame([(f"s{n}", img, b"png", q, [a], t) for n, (img, q, a, t) in enumerate(rows)], columns=COLUMNS)


def test_fact_table_is_seeded_and_covers_every_kind_and_relation():
    facts = fact_table(P, seed=0)
    assert len(facts) == len(EASY_VQA_COLORS) * len(EASY_VQA_SHAPES) * 6
    assert {rel for _, rel in facts} == set(RELATIONS[:6])
    assert set(facts.values()) <= set(VALUES[:5]) and len(set(facts.values())) == 5
    assert fact_table(P, seed=0) == facts
    other = fact_table(P, seed=1)
    assert sum(facts[k] != other[k] for k in facts) > len(facts) // 2  # 4/5 differ by chance


def test_kinds_from_answers_and_yes_no_questions():
    df = _table([
        ("train/1", "what color is the shape?", "teal", "color"),
        ("train/1", "is there not a circle?", "no", "yes/no"),        # negated, "no": a circle is there
        ("train/2", "is there a red shape?", "yes", "yes/no"),
        ("train/2", "what shape is in the image?", "triangle", "shape"),
        ("train/3", "is there a blue shape?", "no", "yes/no"),         # says only what is not there
        ("train/3", "what shape is present?", "rectangle", "shape"),
        ("train/4", "is no green shape present?", "no", "yes/no"),     # negated with "no"
        ("train/4", "does the image contain a rectangle?", "yes", "yes/no"),
    ])
    assert easy_vqa_kinds(df) == {"train/1": ("teal", "circle"), "train/2": ("red", "triangle"),
                                  "train/4": ("green", "rectangle")}


def test_two_colours_for_one_image_is_an_error():
    df = _table([("train/1", "what color is the shape?", "red", "color"),
                 ("train/1", "is there a blue shape?", "yes", "yes/no")])
    with pytest.raises(ValueError, match="train/1"):
        easy_vqa_kinds(df)


def test_kinds_agree_with_every_easy_vqa_question():
    """Every colour, shape and yes/no question of the real images answers as the inferred kind says."""
    train, _ = load_easy_vqa(max_train_images=300, max_test_images=1)
    kinds = easy_vqa_kinds(train)
    assert len(kinds) / train["image_id"].nunique() > 0.8
    checked = 0
    for img, q, answers, t in zip(train["image_id"], train["question"], train["answers"], train["question_type"]):
        if img not in kinds:
            continue
        colour, shape = kinds[img]
        if t == "color":
            assert answers[0] == colour
        elif t == "shape":
            assert answers[0] == shape
        else:
            named = [w for w in (*EASY_VQA_COLORS, *EASY_VQA_SHAPES) if re.search(rf"\b{w}\b", q)]
            present = all(w in (colour, shape) for w in named)
            negated = bool(re.search(r"\b(not|no)\b", q))
            assert (answers[0] == "yes") == (present != negated), (img, q, answers)
        checked += 1
    assert checked > 2000


def test_rows_answer_the_fact_of_their_kind_and_keep_per_image_draws():
    train, _ = load_easy_vqa(max_train_images=40, max_test_images=1)
    rows = knowledge_rows(train, "train", P, seed=5)
    kinds, facts = easy_vqa_kinds(train), fact_table(P, seed=5)
    assert list(rows.columns) == COLUMNS and rows["sample_id"].is_unique
    assert set(rows["question_type"]) == {"knowledge"}
    assert len(rows) == 3 * len(kinds)
    for img, q, answers in zip(rows["image_id"], rows["question"], rows["answers"]):
        rel = re.fullmatch(r"what is the (\w+) of this shape\?", q).group(1)
        assert answers == [facts[(kinds[img], rel)]]
    assert rows.groupby("image_id")["question"].nunique().eq(3).all()  # distinct relations per image
    images = train.drop_duplicates("image_id").set_index("image_id")["image"]
    assert all(images[i] == blob for i, blob in zip(rows["image_id"], rows["image"]))
    # An image keeps its questions when the split holds fewer images.
    fewer = knowledge_rows(train[train["image_id"].isin(sorted(kinds)[:10])], "train", P, seed=5)
    assert set(fewer["sample_id"]) <= set(rows["sample_id"])
    kept = rows.set_index("sample_id").loc[fewer["sample_id"], "answers"].tolist()
    assert kept == fewer["answers"].tolist()


def test_prepare_adds_knowledge_questions_to_every_split_by_image():
    p = DataParams(source="easy_vqa", max_train_images=60, max_test_images=20, val_fraction=0.25, knowledge=P)
    tables = prepare(p, seed=3)
    plain = prepare(DataParams(source="easy_vqa", max_train_images=60, max_test_images=20, val_fraction=0.25,
                               knowledge=KnowledgeParams(relations=0)), seed=3)
    for split, df in tables.items():
        k = df[df["question_type"] == "knowledge"]
        assert len(k) > 0, split
        assert set(k["image_id"]) <= set(plain[split]["image_id"])  # follows its image into val
        assert df[df["question_type"] != "knowledge"].reset_index(drop=True).equals(plain[split])


def test_knowledge_is_read_with_easy_vqa_only():
    assert DataParams.from_params({"source": "scenes", "knowledge": {"relations": 5}}).source == "scenes"


@pytest.mark.parametrize(("section", "fragment"), [
    ({"knowledge": {"relations": 25}}, "prepare_data.knowledge.relations"),
    ({"knowledge": {"relations": 3, "per_image": 4}}, "prepare_data.knowledge.per_image"),
    ({"knowledge": {"relations": 5, "values": 1}}, "prepare_data.knowledge.values"),
    ({"knowledge": {"relation": 5}}, "prepare_data.knowledge"),
])
def test_bad_knowledge_params(section, fragment):
    with pytest.raises(ParamsError, match=re.escape(fragment)):
        DataParams.from_params(section)
