"""The generated mixed source: answers that hold on the rendered pixels and the fact table, deterministic bytes,
and a digit that the low tier's quarter side really blurs away while the large shape's colour survives it."""

from __future__ import annotations

import io
import re
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from knobctl.model.images import tier_pixels
from knobctl.model.presets import TierSpec
from knobctl.params import ParamsError
from knobctl.vqa.mixed import (
    FONT,
    MARKS,
    PALETTE,
    RELATIONS,
    TINTS,
    MixedParams,
    bitmap,
    colors_in,
    fact_table,
    glyph,
    mixed_image,
    mixed_rows,
    read_digit,
    read_mark,
    read_pattern,
    read_tint,
    shade,
)
from knobctl.vqa.sources import COLUMNS, DataParams, prepare

SMALL = MixedParams(train_images=40, test_images=10,
                    questions={"pattern": 1, "shape": 1, "recall": 2, "color": 1, "text": 1})
RECALL = re.compile(r"^what is the (\w+) of this picture\?$")


def pixels(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as im:
        return np.asarray(im.convert("RGB"))


def test_every_answer_holds_on_the_pixels_and_the_fact_table():
    facts = fact_table(SMALL, 0)
    rows = mixed_rows("train", SMALL.train_images, 0, SMALL)
    assert Counter(r[5] for r in rows) == {"pattern": 40, "shape": 40, "recall": 80, "color": 40, "text": 40}
    for _, _, png, question, [answer], qtype in rows:
        px = pixels(png)
        [colour] = colors_in(px)  # exactly one palette colour covers a shape's worth of pixels
        if qtype == "color":
            assert answer == colour
        elif qtype == "text":
            assert read_digit(px) == answer
        elif qtype == "shape":
            assert read_mark(px) == answer
        elif qtype == "pattern":
            assert read_pattern(px, colour) == answer
        else:
            relation = RECALL.match(question).group(1)
            assert answer == facts[(colour, read_tint(px), relation)]


def test_recall_questions_ask_distinct_relations_per_image():
    rows = mixed_rows("train", 30, 0, SMALL)
    per_image: dict[str, list[str]] = {}
    for _, image, _, question, _, qtype in rows:
        if qtype == "recall":
            per_image.setdefault(image, []).append(question)
    assert all(len(qs) == 2 and len(set(qs)) == 2 for qs in per_image.values())


def test_same_seed_same_bytes_and_prefix():
    a = mixed_rows("test", 8, 3, SMALL)
    b = mixed_rows("test", 12, 3, SMALL)
    assert a == b[: len(a)]
    assert mixed_rows("test", 8, 4, SMALL) != a


def test_fact_table_is_kept_by_a_subset_of_colours_tints_and_relations():
    whole = fact_table(MixedParams(relations=len(RELATIONS)), 7)
    part = fact_table(MixedParams(colors=("red", "cyan"), tints=("mint",), relations=5), 7)
    assert part == {k: whole[k] for k in part}
    assert len(part) == 10 and len(whole) == 12 * 6 * len(RELATIONS) and len(set(whole.values())) == 24


def test_default_questions_and_no_digit_without_text_questions():
    p = MixedParams()
    facts = fact_table(p, 0)
    im, png, qs = mixed_image(0, "test", 3, p, facts)
    assert [q[2] for q in qs] == ["pattern", "shape", "recall", "recall", "recall", "color"]
    assert im.digit is None and read_digit(pixels(png)) is None and read_mark(pixels(png)) == im.mark
    assert im.mark_box[0] % 4 == 0 and im.mark_box[1] % 4 == 0  # on the text grid


def test_mark_and_digit_are_apart_from_the_shape_and_read_back_at_every_scale():
    p = MixedParams(text_scale=2, text_grid=1, shape_size=(16, 20), questions={"shape": 1, "text": 1})
    facts = fact_table(p, 0)
    for i in range(20):
        im, png, _ = mixed_image(0, "train", i, p, facts)
        boxes = [im.shape_box, im.mark_box, im.digit_box]
        for j, a in enumerate(boxes):
            for b in boxes[j + 1:]:
                assert a[2] < b[0] or b[2] < a[0] or a[3] < b[1] or b[3] < a[1]
        assert read_digit(pixels(png), scale=2) == im.digit and read_mark(pixels(png), scale=2) == im.mark
    assert read_digit(np.full((64, 64, 3), 200, np.uint8)) is None


def test_bitmaps_differ():
    assert len({glyph(d).tobytes() for d in FONT}) == 10
    assert len({bitmap(m).tobytes() for m in MARKS.values()}) == len(MARKS) == 4
    assert set(TINTS).isdisjoint(PALETTE)


def _tier_view(png: bytes, side: int) -> np.ndarray:
    x = torch.from_numpy(pixels(png).copy()).permute(2, 0, 1)[None].float() / 255
    return tier_pixels(x, TierSpec(image_size=side))[0].permute(1, 2, 0).numpy()  # [S, S, 3]


def test_patterns_blur_to_one_colour_below_the_high_tier():
    """Every pattern is half shade: at the medium tier's 32 px the shape's inside is one flat mix, at 64 px not."""
    p = MixedParams(shape_size=(32, 34))
    facts = fact_table(p, 0)
    for i in range(12):
        im, png, _ = mixed_image(0, "train", i, p, facts)
        x0, y0, x1, y1 = im.shape_box
        cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
        hi = _tier_view(png, 64)[cy - 4:cy + 4, cx - 4:cx + 4]
        mid = _tier_view(png, 32)[cy // 2 - 2:cy // 2 + 2, cx // 2 - 2:cx // 2 + 2]
        assert hi.std(axis=(0, 1)).max() > 0.1 and mid.std(axis=(0, 1)).max() < 0.03, (i, im.pattern)


def test_low_tier_blurs_the_mark_but_keeps_colour_and_tint():
    """What the tiers are for: at the low tier's 16 px, the four marks' views are far closer to each other than at
    the high tier, while the shape keeps a pixel of its colour's blend with its shade and the corner its tint."""
    p = MixedParams()
    facts = fact_table(p, 0)
    spread = {}
    for side in (64, 16):
        views = []
        for i in range(40):
            im, png, _ = mixed_image(0, "train", i, p, facts)
            v = _tier_view(png, side)
            scale = 64 // side
            x0, y0 = im.mark_box[0] // scale, im.mark_box[1] // scale
            views.append(v[y0:y0 + max(7 // scale, 2), x0:x0 + max(7 // scale, 2)].mean(-1).ravel())
            if side == 16:
                blend = (np.array(PALETTE[im.color]) + np.array(shade(im.color))) / 2 / 255  # half shade, any pattern
                assert np.abs(v - blend).sum(-1).min() < 0.1
                assert np.abs(v[0, 0] - np.array(TINTS[im.tint]) / 255).sum() < 0.1
        spread[side] = float(np.std(np.stack(views), axis=0).mean())
    assert spread[16] < 0.5 * spread[64]


def test_prepare_mixed_splits_by_image():
    splits = prepare(DataParams(source="mixed", mixed=SMALL, val_fraction=0.25), seed=0)
    assert list(splits["train"].columns) == COLUMNS
    assert len(splits["test"]) == 10 * 6
    assert set(splits["train"]["image_id"]).isdisjoint(splits["val"]["image_id"])
    assert len(splits["train"]) + len(splits["val"]) == 40 * 6


@pytest.mark.parametrize("field,value,hint", [
    ("colors", ("red", "mauve"), "distinct names of"),
    ("colors", ("red",), "at least 2"),
    ("tints", ("rose", "rose"), "distinct names of"),
    ("relations", len(RELATIONS) + 1, "relation words"),
    ("questions", {"recall": 13}, "at most once"),
    ("questions", {"shape": 2}, "one answer"),
    ("questions", {"colour": 1}, "map question types"),
    ("questions", {"shape": 0}, "not all 0"),
    ("questions", {"pattern": 2}, "one answer"),
    ("shape_size", (20, 60), "fit beside"),
    ("image_size", 66, "multiple of 4"),
])
def test_bad_params_are_named(field, value, hint):
    with pytest.raises(ParamsError, match=rf"prepare_data\.mixed\.{field}.*{hint}"):
        MixedParams(**{field: value})
