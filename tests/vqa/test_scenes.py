"""The generated scenes source: deterministic bytes, answers that hold on the rendered pixels, balanced yes/no,
and small objects that really fade at the low tier's 1/4 side."""

from __future__ import annotations

import io
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from knobctl.params import ParamsError
from knobctl.vqa.metric import vqa_score
from knobctl.vqa.scenes import PALETTE, QUESTION_TYPES, SceneParams, scene_rows
from knobctl.vqa.sources import COLUMNS, DataParams, decode_images, prepare

REPO = Path(__file__).resolve().parents[2]
SMALL_MAX, OTHER_MIN = 4, 10  # px sides of the defaults: a component is one or the other, nothing between


@dataclass(frozen=True)
class Blob:
    """An object as the pixels show it: one 8-connected component of one palette colour."""

    color: str
    shape: str
    cx: float
    side: int
    mask: np.ndarray

    @property
    def small(self) -> bool:
        return self.side <= SMALL_MAX


def components(mask: np.ndarray) -> list[np.ndarray]:
    seen = np.zeros_like(mask)
    out = []
    for y, x in zip(*np.nonzero(mask)):
        if seen[y, x]:
            continue
        seen[y, x] = True
        todo, pts = [(y, x)], []
        while todo:
            cy, cx = todo.pop()
            pts.append((cy, cx))
            for ny in range(max(cy - 1, 0), min(cy + 2, mask.shape[0])):
                for nx in range(max(cx - 1, 0), min(cx + 2, mask.shape[1])):
                    if mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        todo.append((ny, nx))
        out.append(np.array(pts))
    return out


def shape_of(pts: np.ndarray) -> str:
    """Rectangle: fills its box; triangle: its bottom row is much wider than its top row; circle: otherwise."""
    ys, xs = pts[:, 0], pts[:, 1]
    h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    rows = np.bincount(ys - ys.min())
    if len(pts) == h * w:
        return "rectangle"
    return "triangle" if rows[-1] - rows[0] >= 2 else "circle"


def blobs(png: bytes) -> list[Blob]:
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    out, covered = [], np.zeros(rgb.shape[:2], bool)
    for name, color in PALETTE.items():
        mask = (rgb == color).all(-1)
        covered |= mask
        for pts in components(mask):
            side = int(max(np.ptp(pts[:, 0]), np.ptp(pts[:, 1])) + 1)
            m = np.zeros(mask.shape, bool)
            m[pts[:, 0], pts[:, 1]] = True
            out.append(Blob(name, shape_of(pts), float(pts[:, 1].mean()), side, m))
    # every other pixel is pale background: no antialiased edge, no clutter that could pass for an object
    assert rgb[~covered].min() >= 170
    return out


def the(objs: list[Blob], what: str, **match: object) -> Blob:
    hits = [o for o in objs if all(getattr(o, k) == v for k, v in match.items())]
    assert len(hits) == 1, f"{what}: {len(hits)} objects match {match}"
    return hits[0]


def expected(question: str, objs: list[Blob]) -> str:
    """The answer recomputed from the pixels alone; a question with no single referent fails here."""
    if m := re.fullmatch(r"what color is the small (\w+)\?", question):
        return the(objs, question, shape=m[1], small=True).color
    if m := re.fullmatch(r"what color is the (\w+)\?", question):
        return the(objs, question, shape=m[1]).color
    if m := re.fullmatch(r"what shape is the (\w+) object\?", question):
        return the(objs, question, color=m[1]).shape
    if question == "how many small objects are there?":
        return str(sum(o.small for o in objs))
    if m := re.fullmatch(r"how many (\w+) objects are there\?", question):
        return str(sum(o.color == m[1] for o in objs))
    if m := re.fullmatch(r"how many (\w+)s are there\?", question):
        return str(sum(o.shape == m[1] for o in objs))
    if m := re.fullmatch(r"is there a small (\w+) (\w+)\?", question):
        return "yes" if any(o.small and o.color == m[1] and o.shape == m[2] for o in objs) else "no"
    if m := re.fullmatch(r"is the (\w+) (\w+) (left|right) of the (\w+) (\w+)\?", question):
        a, b = the(objs, question, color=m[1], shape=m[2]), the(objs, question, color=m[4], shape=m[5])
        assert abs(a.cx - b.cx) >= 2, question
        return "yes" if (a.cx < b.cx) == (m[3] == "left") else "no"
    if m := re.fullmatch(r"what color is the object (left|right) of the (\w+) (\w+)\?", question):
        ref = the(objs, question, color=m[2], shape=m[3])
        others = [o for o in objs if o is not ref]
        assert all(abs(o.cx - ref.cx) >= 2 for o in others), question
        side = [o for o in others if (o.cx < ref.cx) == (m[1] == "left")]
        assert len(side) == 1, question
        return side[0].color
    raise AssertionError(f"no template matches {question!r}")


@pytest.fixture(scope="module")
def rows():
    return scene_rows("train", 600, 0, SceneParams())


@pytest.fixture(scope="module")
def images(rows):
    return list(dict.fromkeys(r[2] for r in rows))


def test_same_seed_same_bytes_and_n_images_are_a_prefix_of_more():
    p = SceneParams()
    a, b = scene_rows("train", 40, 7, p), scene_rows("train", 40, 7, p)
    assert a == b
    fewer = scene_rows("train", 25, 7, p)
    assert fewer == a[:len(fewer)] and fewer[-1][1] == "train/24" and a[len(fewer)][1] == "train/25"
    other = scene_rows("train", 40, 8, p)
    assert {r[2] for r in other}.isdisjoint({r[2] for r in a})
    assert [r[3] for r in other] != [r[3] for r in a]
    assert {r[2] for r in scene_rows("test", 40, 7, p)}.isdisjoint({r[2] for r in a})


def test_rows_have_the_table_layout(rows):
    assert [r[0] for r in rows] == [f"scenes/train/{n}" for n in range(len(rows))]
    per_image = Counter(r[1] for r in rows)
    assert len(per_image) == 600 and min(per_image.values()) >= 3 and max(per_image.values()) <= 5
    for _, _, png, question, answers, kind in rows:
        assert png.startswith(b"\x89PNG") and kind in QUESTION_TYPES and question.endswith("?")
        assert len(answers) == 1 and re.fullmatch(r"[a-z0-9]+", answers[0])
    assert len({r[3] for r in rows if r[1] == "train/0"}) == per_image["train/0"]


def test_every_answer_holds_on_the_rendered_pixels(rows, images):
    objs = {png: blobs(png) for png in images}
    sides = Counter(o.side for found in objs.values() for o in found)
    assert all(s <= SMALL_MAX or s >= OTHER_MIN for s in sides) and sum(v for s, v in sides.items() if s <= 4) > 300
    assert {o.shape for found in objs.values() for o in found} == {"circle", "rectangle", "triangle"}
    assert Counter(len(found) for found in objs.values()).keys() == set(range(1, 7))
    for _, image_id, png, question, answers, _ in rows:
        assert expected(question, objs[png]) == answers[0], (image_id, question)


def test_every_type_and_template_appears_and_yes_no_is_balanced(rows):
    kinds = Counter(r[5] for r in rows)
    assert set(kinds) == set(QUESTION_TYPES) and min(kinds.values()) > 0.1 * len(rows), kinds
    templates = {re.sub(r"\b(red|green|blue|yellow|black|gray|circle|rectangle|triangle|left|right)s?\b", "X", r[3])
                 for r in rows}
    assert len(templates) == 9, sorted(templates)
    for kind in ("small", "position", None):
        yes_no = [r[4][0] for r in rows if r[4][0] in ("yes", "no") and kind in (None, r[5])]
        assert len(yes_no) > 100 and 0.4 <= yes_no.count("yes") / len(yes_no) <= 0.6, (kind, Counter(yes_no))
    counts = Counter(r[4][0] for r in rows if r[5] == "count")
    assert {"0", "1", "2", "3"} <= set(counts) and max(counts.values()) < 0.6 * sum(counts.values()), counts


def test_count_answers_score_as_number_words_do():
    assert vqa_score("two", ["2"]) == vqa_score("2", ["2"]) == vqa_score("none", ["0"]) == 1.0
    assert vqa_score("three", ["2"]) == 0.0


def coverage(mask: np.ndarray, side: int) -> float:
    """Most of one pixel the object fills after the models' own resize (decode_images) to side x side."""
    buf = io.BytesIO()
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).convert("RGB").save(buf, format="PNG")
    return float(decode_images([buf.getvalue()], size=side)[0, :, :, 0].max()) / 255


def test_small_objects_fade_at_the_low_tier_but_not_at_medium(images):
    found = [o for png in images[:250] for o in blobs(png)]
    small, other = [o for o in found if o.small], [o for o in found if not o.small]
    assert len(small) > 100 and len(other) > 300
    low = [coverage(o.mask, 16) for o in small]
    assert max(low) < 0.6 and np.mean(low) < 0.45  # never a mostly-object pixel at 1/4 side
    assert min(coverage(o.mask, 32) for o in small) > 0.6  # still one at 1/2 side
    assert sum(o.mask.sum() for o in small) / len(small) / 16 < 1.0  # under one low-tier pixel of area
    assert min(coverage(o.mask, 16) for o in other) > 0.6  # the others stay visible at the low tier


def test_prepare_gives_three_splits_by_image():
    params = DataParams(source="scenes", val_fraction=0.25, scenes=SceneParams(train_images=60, test_images=20))
    tables = prepare(params, seed=3)
    for split, df in tables.items():
        assert list(df.columns) == COLUMNS and df["sample_id"].is_unique, split
        assert set(df["question_type"]) == set(QUESTION_TYPES), split
    ids = {split: set(df["image_id"]) for split, df in tables.items()}
    assert len(ids["train"]) == 45 and len(ids["val"]) == 15 and len(ids["test"]) == 20
    assert not (ids["train"] & ids["val"]) and not (ids["train"] | ids["val"]) & ids["test"]
    assert ids["train"] | ids["val"] == {f"train/{i}" for i in range(60)}
    capped = prepare(DataParams(source="scenes", max_train_images=30, max_test_images=5, scenes=params.scenes), 3)
    assert set(capped["train"]["image_id"]) | set(capped["val"]["image_id"]) == {f"train/{i}" for i in range(30)}
    assert capped["test"]["sample_id"].tolist() == tables["test"]["sample_id"].tolist()[:len(capped["test"])]


def test_the_commented_params_block_is_the_defaults():
    text = (REPO / "params.yaml").read_text()
    block = re.search(r"^  # scenes:\n((?:  #   .*\n)+)", text, re.MULTILINE)
    assert block, "params.yaml lost its commented prepare_data.scenes block"
    values = yaml.safe_load("\n".join(line.replace("  #   ", "", 1) for line in block[1].splitlines()))
    assert DataParams.from_params({"source": "scenes", "scenes": values}).scenes == SceneParams()
    assert set(values) == set(SceneParams.__dataclass_fields__)


@pytest.mark.parametrize(("values", "message"), [
    ({"image_size": 66}, "prepare_data.scenes.image_size=66: use a multiple of 4"),
    ({"small_size": 5}, "prepare_data.scenes.small_size=5: use 3 to image_size // 16 (4)"),
    ({"object_size": [6, 21]}, "prepare_data.scenes.object_size=[6, 21]: use [lo, hi] with 2 * small_size (8)"),
    ({"max_objects": 0}, "prepare_data.scenes.max_objects=0: use an integer from min_objects (1) to 12"),
    ({"colors": ["red", "pink"]}, "prepare_data.scenes.colors=['red', 'pink']: use at least 2 distinct of: red"),
    ({"train_images": 1}, "prepare_data.scenes.train_images=1: use an integer >= 2"),
    ({"smallsize": 4}, "prepare_data.scenes: unknown keys ['smallsize']"),
])
def test_bad_scene_params_name_key_value_and_what_is_allowed(values, message):
    with pytest.raises(ParamsError) as err:
        DataParams.from_params({"source": "scenes", "scenes": values})
    assert message in str(err.value)
