"""knobctl's side of a checkpoint in its own format: the knob spec saved as ``knobctl.json`` beside the
weights (what each tier means, which blocks run for a count) and the special tokens of its word-level
tokenizers. A checkpoint carries its own knob semantics this way; :mod:`knobctl.model.presets` builds the
specs of the presets.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from knobctl.knobs import TIER_ORDER
from knobctl.params import InputError, ParamsError, fail

SPEC_FILE = "knobctl.json"

#: Special tokens of knobctl's word-level tokenizers, in id order.
PAD, UNK, BOS, EOS, SEP, IMAGE = "[PAD]", "[UNK]", "[BOS]", "[EOS]", "[SEP]", "<image>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, UNK, BOS, EOS, SEP, IMAGE)


@dataclass(frozen=True)
class TierSpec:
    """What one vision tier feeds the LLM.

    ``image_size``: side in pixels of every image the vision tower sees at this tier.
    ``crop_grid``: (rows, cols) of crops cut from the image resized to
    (rows * image_size, cols * image_size), seen besides one global image; (0, 0) = global only.
    ``pool``: average pooling factor over the patch grid before the projector.
    """

    image_size: int
    crop_grid: tuple[int, int] = (0, 0)
    pool: int = 1

    @property
    def num_images(self) -> int:
        return 1 + self.crop_grid[0] * self.crop_grid[1]

    def tokens_per_image(self, patch_size: int) -> int:
        side = self.image_size // patch_size
        if side < 1 or side % self.pool:
            raise ValueError(
                f"tier image_size={self.image_size} with patch {patch_size} gives a {side}x{side} grid "
                f"that pool={self.pool} does not divide"
            )
        return (side // self.pool) ** 2

    def num_tokens(self, patch_size: int) -> int:
        return self.num_images * self.tokens_per_image(patch_size)


@dataclass(frozen=True)
class ModelSpec:
    """knobctl's side of a checkpoint: tier meanings, block policy, prompt and image layout.

    ``block_order`` is ``"first"`` (run blocks 0..N-1) or a ranked list of block indices,
    most important first; N blocks run the first N of that list, in model order. (Params may
    name a JSON file holding the list instead; :func:`parse_block_order` reads it.) Block 0
    must lead the list: it is the decision block (Stage 2 of the controller decides after it), so it always runs.
    """

    tiers: Mapping[str, TierSpec]
    block_order: str | tuple[int, ...] = "first"
    image_mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    image_std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    max_new_tokens: int = 4
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def full_tier(self) -> str:
        """The most expensive tier defined, the one of the full configuration."""
        defined = [t for t in TIER_ORDER if t in self.tiers]
        if not defined:
            raise InputError(f"{SPEC_FILE} defines no tiers; allowed names: {', '.join(TIER_ORDER)}")
        return defined[-1]

    def blocks_for(self, num_blocks: int, num_layers: int) -> list[int]:
        """Indices of the blocks that run for a count, in execution order."""
        if not 1 <= num_blocks <= num_layers:
            raise ValueError(f"num_blocks={num_blocks} is outside 1..{num_layers} (the model's number of blocks)")
        if self.block_order == "first":
            return list(range(num_blocks))
        return sorted(self.block_order[:num_blocks])

    def validate(self, num_layers: int) -> None:
        if set(self.tiers) - set(TIER_ORDER):
            raise InputError(f"{SPEC_FILE}: tiers {sorted(self.tiers)}; allowed names: {', '.join(TIER_ORDER)}")
        order = self.block_order
        if order == "first":
            return
        ranked = not isinstance(order, str) and sorted(order) == list(range(num_layers))
        if not ranked:
            raise InputError(f"block_order must be 'first' or a ranked list of every block 0..{num_layers - 1} "
                             f"exactly once, got {order!r}")
        if order[0] != 0:
            raise InputError(f"block_order must start with block 0, the decision block, got {list(order)}")

    @property
    def block_order_json(self) -> str | list[int]:
        """``block_order`` as JSON holds it: "first" or the resolved list (never a file's path)."""
        return self.block_order if isinstance(self.block_order, str) else list(self.block_order)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["tiers"] = {k: asdict(v) for k, v in self.tiers.items()}
        d["block_order"] = self.block_order_json
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ModelSpec:
        tiers = {
            k: TierSpec(int(v["image_size"]), tuple(v.get("crop_grid", (0, 0))), int(v.get("pool", 1)))
            for k, v in d["tiers"].items()
        }
        order = d.get("block_order", "first")
        return cls(
            tiers=tiers,
            block_order=order if isinstance(order, str) else tuple(int(i) for i in order),
            image_mean=tuple(d.get("image_mean", cls.image_mean)),
            image_std=tuple(d.get("image_std", cls.image_std)),
            max_new_tokens=int(d.get("max_new_tokens", 4)),
            extra=dict(d.get("extra", {})),
        )

    def save(self, directory: str | Path) -> None:
        from knobctl.io import write_json_atomic

        write_json_atomic(Path(directory) / SPEC_FILE, self.to_json())

    @classmethod
    def load(cls, directory: str | Path) -> ModelSpec | None:
        path = Path(directory) / SPEC_FILE
        if not path.exists():
            return None
        try:
            return cls.from_json(json.loads(path.read_text()))
        except (KeyError, TypeError, ValueError) as exc:
            # json and from_json errors alone do not say which file of a checkpoint is at fault.
            raise InputError(f"{path} is not a valid knob spec ({type(exc).__name__}: {exc}); rewrite it "
                             f"(models/base: `dvc repro train_base`) or copy one from a preset") from exc


#: How to (re)write the file a ``block_order`` path names.
BLOCK_ORDER_FIX = "run `dvc repro block_importance` (it writes data/block_importance/importance.json)"
_ORDER_ALLOWED = ("use 'first', a ranked list of block indices (most important first, starting with 0) or the path "
                  "of a JSON file with an `order` key")


def parse_block_order(value: Any) -> str | tuple[int, ...]:
    """Params value -> block policy: 'first', a list of ints, or the path of a JSON file whose
    ``order`` key holds that list (the block_importance stage's output), read now."""
    if value == "first":
        return "first"
    if isinstance(value, (str, Path)):
        return read_block_order(value)
    if isinstance(value, Sequence) and all(isinstance(i, int) and not isinstance(i, bool) for i in value):
        return tuple(value)
    raise fail("model.block_order", value, _ORDER_ALLOWED)


def read_block_order(path: str | Path) -> tuple[int, ...]:
    """The ``order`` list of a JSON file such as data/block_importance/importance.json.

    Whether it fits the model (every block once, block 0 first) is checked where the model
    is known (:meth:`ModelSpec.validate`, :func:`knobctl.model.runtime.load_runtime`)."""
    file = Path(path)
    if not file.is_file():
        raise fail("model.block_order", str(path), f"{_ORDER_ALLOWED}; there is no file {file}: {BLOCK_ORDER_FIX}")
    try:
        data = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ParamsError(f"model.block_order: {file} is not valid JSON ({type(exc).__name__}: {exc}); "
                          f"{BLOCK_ORDER_FIX}") from exc
    order = data.get("order") if isinstance(data, dict) else None
    if not (isinstance(order, list) and order and all(isinstance(i, int) and not isinstance(i, bool) for i in order)):
        raise ParamsError(f"model.block_order: {file} has no `order` key holding a list of block indices "
                          f"(found {order!r}); {BLOCK_ORDER_FIX}")
    return tuple(order)
