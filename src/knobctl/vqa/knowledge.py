"""Knowledge questions: answers the model can only hold in its weights, as a pretrained VLM holds world knowledge.

Why they exist: on easy-VQA alone the tiny model answers every question from its first three blocks
(docs/LOG.md, "A half-width model at the full configuration only"), so its later blocks and half its experts are spare
capacity and no training recipe makes the top_k or blocks knob cost accuracy. A pretrained MoE VLM is the
opposite: much of what it answers (what a sport is called, what a food tastes like) is recall of facts
spread over its experts and blocks, so running fewer of them forgets some. A knowledge question,
"what is the taste of this shape?", asks for a seeded fact about the kind of object in the image (its
colour and shape). Answering it takes the image (which kind is shown: small shapes are harder at a low
tier) and the model's parameters (the fact): recall is what lowering top_k or dropping blocks takes away.

The facts: every (kind, relation) pair is given one of ``values`` answer words, drawn from the pipeline seed,
so the same seed gives the same table and every split asks about the same facts. Each image whose kind its
own easy-VQA questions pin down gets ``per_image`` questions about distinct relations, drawn per image; the
others (about 12% of easy-VQA's images, whose questions never name the colour or the shape) get none.
``question_type`` is ``knowledge``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from knobctl.params import require, require_int
from knobctl.vqa.scenes import SPLIT_KEYS  # the same split streams as the scene generator's

#: Relation words, the question's only variable part; the first ``relations`` are used.
RELATIONS = ("taste", "sound", "smell", "mood", "origin", "season", "metal", "planet", "animal", "number",
             "tool", "fruit", "river", "dance", "flower", "stone", "wind", "song", "spice", "bird", "tree",
             "sport", "fabric", "gem")
#: Answer words, none of them an easy-VQA word; the first ``values`` are used.
VALUES = ("apple", "banjo", "cedar", "delta", "ember", "fjord", "gizmo", "harp", "igloo", "jade", "kite", "lemon",
          "mango", "nectar", "opal", "pecan", "quill", "raven", "sage", "tulip", "umber", "violet", "walnut",
          "yarrow")
EASY_VQA_COLORS = ("red", "green", "blue", "black", "gray", "yellow", "teal", "brown")
EASY_VQA_SHAPES = ("circle", "rectangle", "triangle")
QUESTION = "what is the {relation} of this shape?"
FACT_KEY = 101  # the fact table's stream of the pipeline seed, apart from the scene generator's
Kind = tuple[str, str]  # (colour, shape)
_NEGATION = re.compile(r"\b(not|no)\b")


@dataclass(frozen=True)
class KnowledgeParams:
    """``prepare_data.knowledge`` in params.yaml (read with ``source: easy_vqa``, as ``scenes`` is read only
    with ``source: scenes``: the questions are about easy-VQA's one shape per image)."""

    relations: int = 8  # 0: no knowledge questions
    per_image: int = 4
    values: int = len(VALUES)

    def __post_init__(self) -> None:
        key = "prepare_data.knowledge."
        require_int(self.relations, key + "relations", 0)
        require(self.relations <= len(RELATIONS), key + "relations", self.relations,
                f"use 0 (off) to {len(RELATIONS)}, the relation words src/knobctl/vqa/knowledge.py has")
        require_int(self.per_image, key + "per_image", 1)
        require(self.relations == 0 or self.per_image <= self.relations, key + "per_image", self.per_image,
                f"use 1 to knowledge.relations ({self.relations}): an image is asked each relation at most once")
        require_int(self.values, key + "values", 2)
        require(self.values <= len(VALUES), key + "values", self.values,
                f"use 2 to {len(VALUES)}, the answer words src/knobctl/vqa/knowledge.py has")

    @property
    def enabled(self) -> bool:
        return self.relations > 0


def fact_table(p: KnowledgeParams, seed: int) -> dict[tuple[Kind, str], str]:
    """The answer of every (kind, relation), drawn from ``seed``; kinds in a fixed order so it never depends
    on which images a split has."""
    rng = np.random.default_rng([seed, FACT_KEY])
    kinds = [(c, s) for c in EASY_VQA_COLORS for s in EASY_VQA_SHAPES]
    picks = rng.integers(p.values, size=(len(kinds), p.relations))  # [kinds, relations]
    return {(kind, rel): VALUES[int(picks[i, j])] for i, kind in enumerate(kinds)
            for j, rel in enumerate(RELATIONS[:p.relations])}


def _named(question: str, words: tuple[str, ...]) -> set[str]:
    return {w for w in words if re.search(rf"\b{w}\b", question)}


def easy_vqa_kinds(df: pd.DataFrame) -> dict[str, Kind]:
    """The (colour, shape) of each image that its questions pin down: a colour or shape answer, or a yes/no
    question that names it and says it is there ("is there a blue shape?" yes, "is there not a circle?" no).
    An image where either stays unknown is left out; one where two colours or two shapes come out is an
    error, since it would mean the questions were misread."""
    colours: dict[str, set[str]] = {}
    shapes: dict[str, set[str]] = {}
    for img, question, answers, qtype in zip(df["image_id"], df["question"], df["answers"], df["question_type"]):
        col, shp = colours.setdefault(img, set()), shapes.setdefault(img, set())
        answer = answers[0]
        if qtype == "color":
            col.add(answer)
        elif qtype == "shape":
            shp.add(answer)
        elif qtype == "yes/no" and (answer == "yes") != bool(_NEGATION.search(question)):
            col |= _named(question, EASY_VQA_COLORS)
            shp |= _named(question, EASY_VQA_SHAPES)
    kinds: dict[str, Kind] = {}
    for img in sorted(colours):
        col, shp = colours[img], shapes[img]
        if len(col) > 1 or len(shp) > 1:
            raise ValueError(f"image {img}: its easy-VQA questions name colours {sorted(col)} and shapes "
                             f"{sorted(shp)}; one shape per image was expected")
        if col and shp:
            kinds[img] = (next(iter(col)), next(iter(shp)))
    return kinds


def knowledge_rows(df: pd.DataFrame, split: str, p: KnowledgeParams, seed: int) -> pd.DataFrame:
    """``per_image`` knowledge questions for each image of ``df`` (one split of easy-VQA) whose kind is known,
    with the same columns as ``df``; each image draws its relations from a generator of its own number, so
    an image keeps its questions in any subset of the split."""
    facts = fact_table(p, seed)
    kinds = easy_vqa_kinds(df)
    first = df.drop_duplicates("image_id").set_index("image_id")["image"]
    rows = []
    for img in sorted(first.index):
        if img not in kinds:
            continue
        number = int(img.rsplit("/", 1)[-1])  # easy-VQA ids are "<split>/<image number>"
        rng = np.random.default_rng([seed, FACT_KEY, SPLIT_KEYS[split], number])
        for j in rng.choice(p.relations, size=p.per_image, replace=False):
            rel = RELATIONS[int(j)]
            rows.append((f"easy_vqa/{img}/{rel}", img, first[img], QUESTION.format(relation=rel),
                         [facts[(kinds[img], rel)]], "knowledge"))
    return pd.DataFrame(rows, columns=df.columns)
