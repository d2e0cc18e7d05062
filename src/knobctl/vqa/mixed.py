"""The generated ``mixed`` source: traffic whose requests need different resources.

Real VQA traffic mixes requests that need different parts of a VLM: reading text or a small detail needs
resolution (TextVQA: MolmoE-1B keeps 49% of its accuracy at its cheapest configuration), recalling
knowledge needs depth and experts (OK-VQA: 57%), and easy questions need neither (COCO-VQA: 79%). A
per-request controller beats the best single configuration per budget only where requests differ like
that, so that a budget which cannot buy everything buys each request the one resource it needs. This
source builds that mix by construction. Each image is one large shape (``shape_size`` px, one of ``colors``,
filled in one of four 1-pixel patterns of its colour and a lighter shade) on a pale background of one of
``tints``, with a small dark mark (a 7x7 px circle, square, triangle or cross) and, where text questions are
asked, a dark 5x7 px digit, both on a ``text_grid`` px grid apart from the shape. The question families
(``questions``: how many of each per image):

* ``pattern`` (needs resolution, not depth): "what pattern fills the large shape?" (horizontal, vertical,
  checkered, diagonal). Only the high tier resolves 1-pixel lines; at the medium and low tiers every pattern
  blurs to the same mix of colour and shade. Like the shape's colour, the pattern covers the whole shape, so
  every visual token over it carries it: read as directly as the colour is.
* ``shape`` (needs resolution): "what shape is the small mark?". The high tier sees the mark pixel for pixel,
  the medium tier's half side blurs it to 3.5 px (some marks stay apart), the low tier's quarter side to a
  smudge. One token carries it.
* ``recall`` (needs depth, not resolution): "what is the <relation> of this picture?", whose answer is a
  seeded fact about the picture's kind: the large shape's colour *and* the background's tint (``colors`` x
  ``tints`` kinds, x ``relations`` facts, each one of ``values`` answer words). Both survive every tier; the
  fact lives only in the weights. A key that binds two attributes is what sent recall to the late blocks
  (docs/LOG.md, "Designs tried": colour-keyed facts stayed in the early blocks).
* ``color`` (needs neither): "what color is the large shape?".
* ``text`` (needs resolution, and depth on the models trained so far): "what number is written?", the digit.

Everything is drawn from the pipeline seed: image ``i`` of a split has its own generator, so N images are a
prefix of N + k, and the same seed gives the same PNG bytes (no antialiasing, integer arithmetic only, fixed
PNG settings). The fact table is drawn over the whole palette, tint list and relation list in a fixed order,
so a subset of them keeps its facts.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from knobctl.params import require, require_int
from knobctl.vqa.knowledge import VALUES
from knobctl.vqa.scenes import SHAPES, SPLIT_KEYS, check_generated_images, draw_shape

#: Colour words of the large shape -> RGB, far apart from each other and from the pale tints; none is an answer.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "blue": (40, 60, 220), "green": (30, 140, 50), "yellow": (235, 200, 20),
    "black": (25, 25, 25), "purple": (120, 40, 170), "orange": (240, 130, 20), "pink": (240, 110, 190),
    "teal": (20, 140, 140), "brown": (120, 70, 30), "lime": (150, 220, 40), "cyan": (60, 210, 230),
}
#: Background tints (never named in a question: half of a recall question's key) -> RGB.
TINTS: dict[str, tuple[int, int, int]] = {
    "rose": (246, 212, 212), "sky": (210, 224, 246), "mint": (210, 240, 218), "cream": (244, 238, 198),
    "silver": (206, 206, 206), "lilac": (228, 212, 244),
}
#: Relation words of the recall questions; the first ``relations`` are used.
RELATIONS = (
    "taste", "sound", "smell", "mood", "origin", "season", "metal", "planet", "animal", "tool", "fruit", "river",
    "dance", "flower", "stone", "wind", "song", "spice", "bird", "tree", "sport", "fabric", "gem", "city",
    "game", "drink", "myth", "ghost", "coin", "ship", "king", "poem", "storm", "mask", "lamp", "bread",
    "cloud", "harbor", "knot", "lake", "moon", "oath", "path", "quest", "rune", "saint", "tower", "valley",
    "crown", "drum", "feast", "garden", "hill", "island", "jewel", "legend", "market", "nest", "ocean", "palace",
    "queen", "road", "sail", "temple", "throne", "voice", "wave", "forest", "bridge", "candle", "desert", "engine",
)
#: 7x7 bitmaps of the small marks, rows top to bottom ("#" = ink), 31-37 ink pixels each, so that the low tier's
#: smudge does not tell them apart by darkness.
MARKS: dict[str, tuple[str, ...]] = {
    "circle": ("..###..", ".#####.", "#######", "#######", "#######", ".#####.", "..###.."),
    "square": (".......", ".######", ".######", ".######", ".######", ".######", ".######"),
    "triangle": ("...#...", "..###..", "..###..", ".#####.", ".#####.", "#######", "#######"),
    "cross": ("..###..", "..###..", "#######", "#######", "#######", "..###..", "..###.."),
}
#: 5x7 bitmaps of the digits.
FONT: dict[str, tuple[str, ...]] = {
    "0": (".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###."),
    "1": ("..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."),
    "2": (".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"),
    "3": ("#####", "...#.", "..#..", "...#.", "....#", "#...#", ".###."),
    "4": ("...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."),
    "5": ("#####", "#....", "####.", "....#", "....#", "#...#", ".###."),
    "6": ("..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###."),
    "7": ("#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."),
    "8": (".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."),
    "9": (".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##.."),
}
#: Fill patterns of the large shape: which of its pixels take the lighter shade (1-pixel lines: only the high
#: tier sees them; every pattern is half shade, so at the medium and low tiers they all blur to one colour).
PATTERNS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "horizontal": lambda yy, xx: yy % 2 == 0, "vertical": lambda yy, xx: xx % 2 == 0,
    "checkered": lambda yy, xx: (yy + xx) % 2 == 0, "diagonal": lambda yy, xx: (yy + xx) % 4 < 2,
}
INK, MARK_INK = (20, 20, 20), (45, 45, 45)  # the digit's and the mark's: apart, so a test can read each back
GAP = 3  # px between items' boxes: a mark touching the shape would change its outline
QUESTIONS = {"pattern": "what pattern fills the large shape?", "shape": "what shape is the small mark?",
             "recall": "what is the {relation} of this picture?", "color": "what color is the large shape?",
             "text": "what number is written?"}
QUESTION_TYPES = tuple(QUESTIONS)
MIXED_KEY, FACT_KEY = 29, 102  # streams of the pipeline seed, apart from the scene generator's and easy-VQA facts'
Row = tuple[str, str, bytes, str, list[str], str]
Box = tuple[int, int, int, int]  # x0, y0, x1, y1 inclusive


@dataclass(frozen=True)
class MixedParams:
    """``prepare_data.mixed`` in params.yaml (read with ``source: mixed``)."""

    train_images: int = 8000
    test_images: int = 1000
    image_size: int = 64
    colors: tuple[str, ...] = tuple(PALETTE)
    tints: tuple[str, ...] = tuple(TINTS)
    relations: int = 12
    values: int = len(VALUES)
    questions: Mapping[str, int] = field(
        default_factory=lambda: {"pattern": 1, "shape": 1, "recall": 3, "color": 1, "text": 0})
    shape_size: tuple[int, int] = (24, 36)  # px, side range of the large shape
    text_scale: int = 1  # px per font pixel of the digit and the mark
    text_grid: int = 4  # the mark's and the digit's top-left corners on multiples of this (px)

    def __post_init__(self) -> None:
        key = "prepare_data.mixed."
        check_generated_images(self, key)
        for name, allowed in (("colors", PALETTE), ("tints", TINTS)):
            values = getattr(self, name)
            require(len(values) >= 1 and len(set(values)) == len(values) and set(values) <= set(allowed),
                    key + name, list(values), f"use distinct names of: {', '.join(allowed)}")
        require(len(self.colors) >= 2, key + "colors", list(self.colors), "use at least 2 colours")
        require_int(self.relations, key + "relations", 1)
        require(self.relations <= len(RELATIONS), key + "relations", self.relations,
                f"use 1 to {len(RELATIONS)}, the relation words src/knobctl/vqa/mixed.py has")
        require_int(self.values, key + "values", 2)
        require(self.values <= len(VALUES), key + "values", self.values,
                f"use 2 to {len(VALUES)}, the answer words src/knobctl/vqa/knowledge.py has")
        require(isinstance(self.questions, Mapping) and set(self.questions) <= set(QUESTION_TYPES)
                and all(not isinstance(n, bool) and isinstance(n, int) and n >= 0 for n in self.questions.values())
                and sum(self.questions.values()) > 0, key + "questions", self.questions,
                f"map question types ({', '.join(QUESTION_TYPES)}) to how many per image (>= 0, not all 0)")
        for qtype in ("pattern", "shape", "color", "text"):
            require(self.count(qtype) <= 1, key + f"questions.{qtype}", self.count(qtype),
                    "use 0 or 1: an image has one answer to it")
        require(self.count("recall") <= self.relations, key + "questions.recall", self.count("recall"),
                f"use 0 to relations ({self.relations}): an image is asked each relation at most once")
        require_int(self.text_scale, key + "text_scale", 1)
        require_int(self.text_grid, key + "text_grid", 1)
        require(self.text_grid <= self.image_size // 8, key + "text_grid", self.text_grid,
                f"use 1 (anywhere) to image_size // 8 ({self.image_size // 8})")
        lo, hi = self.shape_size
        # the shape leaves a strip at least (image_size - side - 2) / 2 wide on one side: a mark must fit there
        room = self.image_size - 2 - 2 * (7 * self.text_scale + GAP + self.text_grid - 1)
        require(8 <= lo <= hi <= room, key + "shape_size", list(self.shape_size),
                f"use [lo, hi] with 8 <= lo <= hi <= {room}: the mark and the digit must fit beside the shape")

    def count(self, qtype: str) -> int:
        return int(self.questions.get(qtype, 0))


def fact_table(p: MixedParams, seed: int) -> dict[tuple[str, str, str], str]:
    """The answer of every (colour, tint, relation) in use, drawn from ``seed`` over the whole palette, tint and
    relation lists in a fixed order (a subset keeps its facts)."""
    rng = np.random.default_rng([seed, FACT_KEY])
    picks = rng.integers(p.values, size=(len(PALETTE), len(TINTS), len(RELATIONS)))  # [colours, tints, relations]
    ci, ti = list(PALETTE), list(TINTS)
    return {(c, t, r): VALUES[int(picks[ci.index(c), ti.index(t), j])]
            for c in p.colors for t in p.tints for j, r in enumerate(RELATIONS[:p.relations])}


def bitmap(rows: Sequence[str], scale: int = 1) -> np.ndarray:
    """A bitmap's ink mask, [rows * scale, cols * scale] bool."""
    mask = np.array([[ch == "#" for ch in row] for row in rows])
    return mask.repeat(scale, 0).repeat(scale, 1)


def glyph(digit: str, scale: int = 1) -> np.ndarray:
    """The digit's ink mask, [7 * scale, 5 * scale] bool."""
    return bitmap(FONT[digit], scale)


def _apart(a: Box, b: Box) -> bool:
    return a[2] + GAP < b[0] or b[2] + GAP < a[0] or a[3] + GAP < b[1] or b[3] + GAP < a[1]


@dataclass(frozen=True)
class MixedImage:
    """What one image shows: the tint, the large shape (kind, colour, box), the mark and the digit (None if
    absent) with their boxes."""

    tint: str
    shape: str
    color: str
    pattern: str
    shape_box: Box
    mark: str | None
    mark_box: Box | None
    digit: str | None
    digit_box: Box | None


def _free_spot(rng: np.random.Generator, p: MixedParams, w: int, h: int, taken: list[Box]) -> Box:
    s, g = p.image_size, p.text_grid
    spots = [(x, y) for y in range(g, s - h, g) for x in range(g, s - w, g)
             if all(_apart((x, y, x + w - 1, y + h - 1), b) for b in taken)]
    x, y = spots[int(rng.integers(len(spots)))]
    return (x, y, x + w - 1, y + h - 1)


def layout(rng: np.random.Generator, p: MixedParams) -> MixedImage:
    """The tint and the shape, then the mark and the digit at free spots (the params check leaves room)."""
    s = p.image_size
    tint = p.tints[int(rng.integers(len(p.tints)))]
    side = int(rng.integers(p.shape_size[0], p.shape_size[1] + 1))
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    color = p.colors[int(rng.integers(len(p.colors)))]
    pattern = list(PATTERNS)[int(rng.integers(len(PATTERNS)))]
    x0, y0 = int(rng.integers(1, s - side)), int(rng.integers(1, s - side))
    taken = [(x0, y0, x0 + side - 1, y0 + side - 1)]
    mark = mark_box = digit = digit_box = None
    if p.count("shape"):
        mark = list(MARKS)[int(rng.integers(len(MARKS)))]
        mark_box = _free_spot(rng, p, 7 * p.text_scale, 7 * p.text_scale, taken)
        taken.append(mark_box)
    if p.count("text"):
        digit = str(int(rng.integers(10)))
        digit_box = _free_spot(rng, p, 5 * p.text_scale, 7 * p.text_scale, taken)
    return MixedImage(tint, shape, color, pattern, taken[0], mark, mark_box, digit, digit_box)


def background(rng: np.random.Generator, tint: str, size: int) -> np.ndarray:
    """The tint with a small gradient, in integers so the bytes do not depend on the platform."""
    dx, dy = (int(v) for v in rng.integers(-6, 7, size=2))
    yy, xx = np.mgrid[0:size, 0:size]
    img = np.array(TINTS[tint])[None, None, :] + ((dx * xx + dy * yy) // size)[..., None]
    return np.clip(img, 0, 255).astype(np.uint8)


def _stamp(pixels: np.ndarray, mask: np.ndarray, box: Box, ink: tuple[int, int, int]) -> None:
    ys, xs = np.nonzero(mask)
    pixels[box[1] + ys, box[0] + xs] = ink


def shade(color: str) -> tuple[int, int, int]:
    """The lighter shade a pattern draws in: the colour halfway to white (visible on black and on yellow)."""
    return tuple((v + 255) // 2 for v in PALETTE[color])


def render(im: MixedImage, bg: np.ndarray, scale: int) -> bytes:
    """PNG bytes; PIL's ImageDraw fills without antialiasing, so every ink and shape pixel is exactly its colour
    or its shade."""
    pil = Image.fromarray(bg, "RGB")
    fill = PALETTE[im.color]
    draw_shape(ImageDraw.Draw(pil), im.shape, im.shape_box, fill)
    pixels = np.array(pil)
    yy, xx = np.mgrid[0:pixels.shape[0], 0:pixels.shape[1]]
    on_shape = np.all(pixels == np.array(fill, dtype=np.uint8), axis=-1)
    pixels[on_shape & PATTERNS[im.pattern](yy, xx)] = shade(im.color)
    if im.mark is not None:
        _stamp(pixels, bitmap(MARKS[im.mark], scale), im.mark_box, MARK_INK)
    if im.digit is not None:
        _stamp(pixels, glyph(im.digit, scale), im.digit_box, INK)
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, format="PNG", compress_level=6, optimize=False)
    return buf.getvalue()


def questions(rng: np.random.Generator, im: MixedImage, p: MixedParams,
              facts: dict[tuple[str, str, str], str]) -> list[tuple[str, str, str]]:
    """(question, answer, type) of one image, in QUESTION_TYPES order; recall about distinct relations."""
    out = []
    if p.count("pattern"):
        out.append((QUESTIONS["pattern"], im.pattern, "pattern"))
    if p.count("shape"):
        out.append((QUESTIONS["shape"], im.mark, "shape"))
    for j in sorted(rng.choice(p.relations, size=p.count("recall"), replace=False).tolist()):
        rel = RELATIONS[j]
        out.append((QUESTIONS["recall"].format(relation=rel), facts[(im.color, im.tint, rel)], "recall"))
    if p.count("color"):
        out.append((QUESTIONS["color"], im.color, "color"))
    if p.count("text"):
        out.append((QUESTIONS["text"], im.digit, "text"))
    return out


def mixed_image(seed: int, split: str, index: int, p: MixedParams,
                facts: dict[tuple[str, str, str], str]) -> tuple[MixedImage, bytes, list[tuple[str, str, str]]]:
    """Image ``index`` of ``split``: what it shows, its PNG bytes and its questions, from its own generator."""
    rng = np.random.default_rng([seed, MIXED_KEY, SPLIT_KEYS[split], index])
    im = layout(rng, p)
    return im, render(im, background(rng, im.tint, p.image_size), p.text_scale), questions(rng, im, p, facts)


def mixed_rows(split: str, n_images: int, seed: int, p: MixedParams) -> list[Row]:
    """Rows in the data-table column order: sample_id ``mixed/<split>/<n>``, image_id ``<split>/<i>``."""
    facts = fact_table(p, seed)
    rows: list[Row] = []
    for i in range(n_images):
        _, png, qs = mixed_image(seed, split, i, p, facts)
        for question, answer, family in qs:
            rows.append((f"mixed/{split}/{len(rows)}", f"{split}/{i}", png, question, [answer], family))
    return rows


def read_bitmap(pixels: np.ndarray, ink: tuple[int, int, int], shapes: Mapping[str, Sequence[str]],
                scale: int = 1) -> str | None:
    """Which of ``shapes`` (bitmaps) the pixels of exactly ``ink`` form, matched cell for cell; None if none or no
    ink. Used by the tests to check answers from the pixels."""
    hit = np.all(pixels == np.array(ink, dtype=pixels.dtype), axis=-1)
    ys, xs = np.nonzero(hit)
    if not len(ys):
        return None
    for name, rows in shapes.items():
        mask = bitmap(rows, scale)
        top, left = ys.min() - int(np.argmax(mask.any(1))), xs.min() - int(np.argmax(mask.any(0)))
        if top < 0 or left < 0 or top + mask.shape[0] > hit.shape[0] or left + mask.shape[1] > hit.shape[1]:
            continue
        if np.array_equal(hit[top:top + mask.shape[0], left:left + mask.shape[1]], mask) and \
                int(hit.sum()) == int(mask.sum()):
            return name
    return None


def read_digit(pixels: np.ndarray, scale: int = 1) -> str | None:
    """The digit an image shows (:func:`read_bitmap` on the digit's ink)."""
    return read_bitmap(pixels, INK, FONT, scale)


def read_mark(pixels: np.ndarray, scale: int = 1) -> str | None:
    """The small mark an image shows (:func:`read_bitmap` on the mark's ink)."""
    return read_bitmap(pixels, MARK_INK, MARKS, scale)


def read_tint(pixels: np.ndarray) -> str:
    """The background tint: the one nearest the image's corner pixel (the gradient moves it by at most 12)."""
    corner = pixels[0, 0].astype(int)
    return min(TINTS, key=lambda t: int(np.abs(np.array(TINTS[t]) - corner).sum()))


def read_pattern(pixels: np.ndarray, color: str) -> str | None:
    """The fill pattern of the shape of ``color``: the rule its shade pixels follow on the shape; None if none."""
    flat = np.all(pixels == np.array(PALETTE[color], dtype=pixels.dtype), axis=-1)
    light = np.all(pixels == np.array(shade(color), dtype=pixels.dtype), axis=-1)
    yy, xx = np.mgrid[0:pixels.shape[0], 0:pixels.shape[1]]
    shape = flat | light
    found = [name for name, rule in PATTERNS.items() if np.array_equal(light, shape & rule(yy, xx))]
    return found[0] if len(found) == 1 else None


def colors_in(pixels: np.ndarray, palette: Sequence[str] = tuple(PALETTE)) -> list[str]:
    """Palette colours with at least 20 pixels of exactly their RGB (the shape; ink alone never reaches that)."""
    flat = pixels.reshape(-1, 3)
    return [c for c in palette if int(np.all(flat == np.array(PALETTE[c], dtype=flat.dtype), axis=1).sum()) >= 20]
