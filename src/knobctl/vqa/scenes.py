"""The generated ``scenes`` source: VQA whose difficulty depends on the image, not only on the question.

easy-VQA draws one large shape per image, so every vision tier sees what a question asks about and its
difficulty is fixed by the question text. A scene holds ``min_objects..max_objects`` non-overlapping shapes
of several colours and two sizes on a pale background whose tint, gradient and speckle clutter vary per
image. A small object (``small_size`` px, 4 at 64 px: one pixel of the low tier's 1/4 side) mostly fades
into the background at the low tier while the medium tier's 1/2 side still shows it, so the same question
("how many circles are there?") is easy on one image and needs a larger tier on another.

Question families, the ``question_type`` column (one lowercase answer each, scored like easy-VQA):

* ``color``: "what color is the triangle?" (that shape once in the image)
* ``shape``: "what shape is the red object?" (that colour once)
* ``count``: "how many circles are there?", "how many blue objects are there?" (a digit: "2")
* ``small``: "what color is the small circle?", "is there a small green rectangle?",
  "how many small objects are there?"
* ``position``: "is the red circle left of the blue rectangle?", "what color is the object left of the
  red circle?" (by centre x; asked only when the centres it compares are ``MARGIN`` px apart or more)

yes/no questions are asked only where both answers are possible and a coin picks which, so they are
balanced. Everything is drawn from the pipeline seed: image ``i`` of a split has its own generator
(``default_rng([seed, split, i])``), so N images are a prefix of N + k, and the same seed gives the same
PNG bytes (no antialiasing, integer arithmetic only, fixed PNG settings).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from itertools import permutations
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from knobctl.params import require, require_int

#: Colour words -> RGB: far apart from each other and from the pale background (every channel >= 176).
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 160, 50), "blue": (40, 70, 220),
    "yellow": (235, 195, 20), "black": (25, 25, 25), "gray": (120, 120, 120),
}
SHAPES = ("circle", "rectangle", "triangle")  # easy-VQA's shape words
QUESTION_TYPES = ("color", "shape", "count", "small", "position")
SPLIT_KEYS = {"train": 0, "test": 1}
GAP = 2  # px between bounding boxes, so two objects of one colour never merge into one blob
MARGIN = 3  # px between centres before "left of" is asked: a box centre and its pixels' centroid differ by < 1
PLACE_TRIES = 100
Row = tuple[str, str, bytes, str, list[str], str]
QA = tuple[str, str]



def check_generated_images(p: Any, key: str) -> None:
    """The image counts and size every generated source shares (``key``: its params prefix, with the dot)."""
    require_int(p.train_images, key + "train_images", 2)
    require_int(p.test_images, key + "test_images", 1)
    require_int(p.image_size, key + "image_size", 32)
    require(p.image_size % 4 == 0, key + "image_size", p.image_size,
            "use a multiple of 4 (the low tier sees 1/4 of the side, the medium tier 1/2)")

@dataclass(frozen=True)
class SceneParams:
    """``prepare_data.scenes`` in params.yaml (read with ``source: scenes``)."""

    train_images: int = 4000
    test_images: int = 1000
    image_size: int = 64
    min_objects: int = 1
    max_objects: int = 6
    small_size: int = 4  # side of a small object in px
    object_size: tuple[int, int] = (10, 21)  # side range of the other objects (21 ~ 1/3 of 64)
    small_share: float = 0.35  # chance that an object is small
    questions_per_image: tuple[int, int] = (3, 5)
    colors: tuple[str, ...] = tuple(PALETTE)
    shapes: tuple[str, ...] = SHAPES
    max_clutter: int = 40  # speckle pixels, 0..max_clutter per image

    def __post_init__(self) -> None:
        key = "prepare_data.scenes."
        check_generated_images(self, key)
        require_int(self.small_size, key + "small_size", 3)
        require(self.small_size <= self.image_size // 16, key + "small_size", self.small_size,
                f"use 3 to image_size // 16 ({self.image_size // 16}): a small object must be at most one "
                "pixel of the low tier wide, or it does not fade there")
        lo, hi = self.object_size
        require(2 * self.small_size <= lo <= hi <= self.image_size // 2, key + "object_size", list(self.object_size),
                f"use [lo, hi] with 2 * small_size ({2 * self.small_size}) <= lo <= hi <= image_size // 2 "
                f"({self.image_size // 2}), so small and other objects differ clearly")
        require_int(self.min_objects, key + "min_objects", 1)
        require(not isinstance(self.max_objects, bool) and isinstance(self.max_objects, int)
                and self.min_objects <= self.max_objects <= 12, key + "max_objects", self.max_objects,
                f"use an integer from min_objects ({self.min_objects}) to 12 (more rarely fit without overlap)")
        require(0.0 <= self.small_share <= 1.0, key + "small_share", self.small_share, "use a number in [0, 1]")
        qlo, qhi = self.questions_per_image
        require(1 <= qlo <= qhi, key + "questions_per_image", list(self.questions_per_image),
                "use [lo, hi] with 1 <= lo <= hi")
        for name, allowed in (("colors", tuple(PALETTE)), ("shapes", SHAPES)):
            values = getattr(self, name)
            require(len(values) >= 2 and len(set(values)) == len(values) and set(values) <= set(allowed),
                    key + name, list(values), f"use at least 2 distinct of: {', '.join(allowed)}")
        require_int(self.max_clutter, key + "max_clutter", 0)


@dataclass(frozen=True)
class SceneObject:
    """One drawn shape; ``small`` is its size class, which the ``small`` questions name."""

    shape: str
    color: str
    small: bool
    box: tuple[int, int, int, int]  # x0, y0, x1, y1, inclusive as PIL draws them

    @property
    def cx(self) -> float:
        return (self.box[0] + self.box[2]) / 2

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"


def _apart(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[2] + GAP < b[0] or b[2] + GAP < a[0] or a[3] + GAP < b[1] or b[3] + GAP < a[1]


def place_objects(rng: np.random.Generator, p: SceneParams) -> list[SceneObject]:
    """Objects by rejection sampling; one that finds no free spot in PLACE_TRIES is dropped (still deterministic)."""
    objects: list[SceneObject] = []
    for _ in range(int(rng.integers(p.min_objects, p.max_objects + 1))):
        small = bool(rng.random() < p.small_share)
        shape = p.shapes[int(rng.integers(len(p.shapes)))]
        color = p.colors[int(rng.integers(len(p.colors)))]
        for _ in range(PLACE_TRIES):
            w = h = p.small_size if small else int(rng.integers(p.object_size[0], p.object_size[1] + 1))
            if shape == "rectangle" and not small:  # a small one stays square: its corners are what tell it apart
                h = max(2 * p.small_size, int(rng.integers(w * 6 // 10, w + 1)))
                if rng.random() < 0.5:
                    w, h = h, w
            # 1 px border: an object cut by the image edge would change its shape
            x0, y0 = int(rng.integers(1, p.image_size - w)), int(rng.integers(1, p.image_size - h))
            box = (x0, y0, x0 + w - 1, y0 + h - 1)
            if all(_apart(box, o.box) for o in objects):
                objects.append(SceneObject(shape, color, small, box))
                break
    return objects


def background(rng: np.random.Generator, size: int, max_clutter: int) -> np.ndarray:
    """A pale tint with a gradient and darker speckles, in integers so the bytes do not depend on the platform."""
    base = rng.integers(222, 239, size=3)
    dx, dy = (int(v) for v in rng.integers(-8, 9, size=2))
    yy, xx = np.mgrid[0:size, 0:size]
    img = base[None, None, :] + ((dx * xx + dy * yy) // size)[..., None]
    n = int(rng.integers(0, max_clutter + 1))
    ys, xs = rng.integers(0, size, size=(2, n))
    img[ys, xs] -= rng.integers(10, 31, size=n)[:, None]
    return img.astype(np.uint8)


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int],
               fill: tuple[int, int, int]) -> None:
    """One of SHAPES filled in ``box`` (x0, y0, x1, y1 inclusive); no antialiasing, so every pixel is ``fill``."""
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "rectangle":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([(x0, y1), (x1, y1), ((x0 + x1) // 2, y0)], fill=fill)


def render(objects: list[SceneObject], bg: np.ndarray) -> bytes:
    """PNG bytes; PIL's ImageDraw fills without antialiasing, so every object pixel is exactly its palette colour."""
    im = Image.fromarray(bg, "RGB")
    draw = ImageDraw.Draw(im)
    for o in objects:
        draw_shape(draw, o.shape, o.box, PALETTE[o.color])
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=6, optimize=False)
    return buf.getvalue()


def _once(objects: list[SceneObject], key: str) -> dict[str, SceneObject]:
    """Objects whose ``key`` value occurs once: the only ones "the <value>" refers to."""
    values = [getattr(o, key) for o in objects]
    return {getattr(o, key): o for o in objects if values.count(getattr(o, key)) == 1}


def _position(objects: list[SceneObject]) -> list[list[list[QA]]]:
    named = _once(objects, "name")
    pairs = [(a, b) for a, b in permutations(named.values(), 2) if abs(a.cx - b.cx) >= MARGIN]
    yes = [(f"is the {a.name} {'left' if a.cx < b.cx else 'right'} of the {b.name}?", "yes") for a, b in pairs]
    no = [(f"is the {a.name} {'right' if a.cx < b.cx else 'left'} of the {b.name}?", "no") for a, b in pairs]
    side_color: list[QA] = []
    for ref in named.values():
        others = [o for o in objects if o is not ref]
        if any(abs(o.cx - ref.cx) < MARGIN for o in others):
            continue
        for side in ("left", "right"):
            hits = [o for o in others if (o.cx < ref.cx) == (side == "left")]
            if len(hits) == 1:
                side_color.append((f"what color is the object {side} of the {ref.name}?", hits[0].color))
    return [[yes, no], [side_color]]


def _small(objects: list[SceneObject], p: SceneParams) -> list[list[list[QA]]]:
    small = [o for o in objects if o.small]
    of_shape = _once(small, "shape")
    color_of = [(f"what color is the small {s}?", o.color) for s, o in of_shape.items()]
    present = {(o.color, o.shape) for o in small}
    # "no" only for near misses (a small object of that colour or shape, a larger one of both); the template is
    # asked only where "yes" is possible too (a small object exists), else "no" would dominate.
    near = {(o.color, s) for o in small for s in p.shapes} | {(c, o.shape) for o in small for c in p.colors}
    near |= {(o.color, o.shape) for o in objects}
    yes = [(f"is there a small {c} {s}?", "yes") for c, s in sorted(present)]
    no = [(f"is there a small {c} {s}?", "no") for c, s in sorted(near - present)]
    count = [("how many small objects are there?", str(len(small)))]
    return [[color_of], [yes, no], [count]]


def candidates(objects: list[SceneObject], p: SceneParams) -> dict[str, list[list[list[QA]]]]:
    """Family -> templates -> answer groups -> (question, answer). A template can be asked when every group has a
    question; its group is drawn first, which is what balances yes against no."""
    shapes, colors = [o.shape for o in objects], [o.color for o in objects]
    counts = [(f"how many {s}s are there?", str(shapes.count(s))) for s in p.shapes]
    counts += [(f"how many {c} objects are there?", str(colors.count(c))) for c in sorted(set(colors))]
    return {
        "color": [[[(f"what color is the {s}?", o.color) for s, o in _once(objects, "shape").items()]]],
        "shape": [[[(f"what shape is the {c} object?", o.shape) for c, o in _once(objects, "color").items()]]],
        "count": [[counts]],
        "small": _small(objects, p),
        "position": _position(objects),
    }


def pick_questions(rng: np.random.Generator, objects: list[SceneObject], p: SceneParams) -> list[tuple[str, str, str]]:
    """(question, answer, type) for one image: families in a random order, round-robin, no question twice."""
    pools = candidates(objects, p)
    order = [f for f in QUESTION_TYPES if any(all(t) for t in pools[f])]
    order = [order[i] for i in rng.permutation(len(order))]
    want = int(rng.integers(p.questions_per_image[0], p.questions_per_image[1] + 1))
    out: list[tuple[str, str, str]] = []
    while len(out) < want and order:
        for family in list(order):
            ready = [t for t in pools[family] if all(t)]
            if not ready:
                order.remove(family)
                continue
            if len(out) == want:
                break
            template = ready[int(rng.integers(len(ready)))]
            group = template[int(rng.integers(len(template)))]
            question, answer = group.pop(int(rng.integers(len(group))))
            out.append((question, answer, family))
    return out


def scene(seed: int, split: str, index: int, p: SceneParams) -> tuple[bytes, list[tuple[str, str, str]]]:
    """Image ``index`` of ``split``: its PNG bytes and its questions, from its own generator."""
    rng = np.random.default_rng([seed, SPLIT_KEYS[split], index])
    bg = background(rng, p.image_size, p.max_clutter)
    objects = place_objects(rng, p)
    return render(objects, bg), pick_questions(rng, objects, p)


def scene_rows(split: str, n_images: int, seed: int, p: SceneParams) -> list[Row]:
    """Rows in the data-table column order: sample_id ``scenes/<split>/<n>``, image_id ``<split>/<i>``."""
    rows: list[Row] = []
    for i in range(n_images):
        png, questions = scene(seed, split, i, p)
        for question, answer, family in questions:
            rows.append((f"scenes/{split}/{len(rows)}", f"{split}/{i}", png, question, [answer], family))
    return rows
