"""Model presets: the embedded ``tiny`` default, ``molmoe-1b-shape``, and the knob spec.

Every preset is a stock HF ``LlavaForConditionalGeneration`` composing a CLIP vision
tower with an OLMoE language model; nothing here is a hand-written transformer.
What knobctl adds on top of a HF config is a :class:`ModelSpec`: what each tier
means (pixels, crops, pooling), which blocks run for a given count, and the prompt
layout. It is saved as ``knobctl.json`` beside the weights so a checkpoint carries
its own knob semantics.

Tier semantics
--------------
``tiny`` (the embedded default, 64x64 easy-VQA images, CLIP patch 8, 2x2 average pooling
of the patch grid before the projector):
    low    = the image downsampled to 16x16 px  -> 2x2 patches -> 1 visual token
    medium = the image downsampled to 32x32 px  -> 4x4 patches -> 4 visual tokens
    high   = the image at 64x64 px              -> 8x8 patches -> 16 visual tokens
  The tier changes both the vision tower's input and the tokens entering the LLM;
  shape detail is lost at low resolution, which is what makes the tier cost accuracy.

``molmoe-1b-shape`` (MolmoE-1B dimensions, CLIP ViT-L/14 at 336 px, 24x24 patches
pooled 2x2 to 12x12 = 144 tokens per image, as Molmo does):
    low    = 1 global image + 2 crops (1x2 grid)  -> 3 x 144  = 432 tokens
    medium = 1 global image + 6 crops (2x3 grid)  -> 7 x 144  = 1,008 tokens
    high   = 1 global image + 12 crops (3x4 grid) -> 13 x 144 = 1,872 tokens
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from transformers import CLIPVisionConfig, LlavaConfig, OlmoeConfig, Qwen3VLMoeConfig

from knobctl.knobs import TIER_ORDER
from knobctl.params import ParamsError, build, fail, require, require_choice, require_int

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
            raise ValueError(f"{SPEC_FILE} defines no tiers; allowed names: {', '.join(TIER_ORDER)}")
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
            raise ValueError(f"{SPEC_FILE}: tiers {sorted(self.tiers)}; allowed names: {', '.join(TIER_ORDER)}")
        order = self.block_order
        if order == "first":
            return
        ranked = not isinstance(order, str) and sorted(order) == list(range(num_layers))
        if not ranked:
            raise ValueError(f"block_order must be 'first' or a ranked list of every block 0..{num_layers - 1} "
                             f"exactly once, got {order!r}")
        if order[0] != 0:
            raise ValueError(f"block_order must start with block 0, the decision block, got {list(order)}")

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
            raise ValueError(f"{path} is not a valid knob spec ({type(exc).__name__}: {exc}); rewrite it "
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


# --------------------------------------------------------------------------- tiny


@dataclass(frozen=True)
class TinyDims:
    """Sizes of the embedded default (``model.dims`` in params.yaml; any field may be set there)."""

    hidden_size: int = 64
    num_layers: int = 16
    num_heads: int = 4
    num_experts: int = 8
    top_k: int = 8
    expert_intermediate: int = 32
    vision_hidden: int = 64
    vision_layers: int = 4
    vision_heads: int = 4
    vision_intermediate: int = 128
    image_size: int = 64
    patch_size: int = 4
    vision_pool: int = 4
    max_position: int = 64

    def __post_init__(self) -> None:
        for name, value in self.__dict__.items():
            require_int(value, f"model.dims.{name}")
        require(self.top_k <= self.num_experts, "model.dims.top_k", self.top_k,
                f"at most num_experts ({self.num_experts})")
        for heads, width in (("num_heads", "hidden_size"), ("vision_heads", "vision_hidden")):
            require(getattr(self, width) % getattr(self, heads) == 0, f"model.dims.{width}", getattr(self, width),
                    f"must be a multiple of {heads} ({getattr(self, heads)})")


EXPERTS_IMPLEMENTATIONS = ("eager", "grouped_mm", "batched_mm")


@dataclass(frozen=True)
class ModelParams:
    """The ``model:`` section: preset, tiny dimensions, block policy, experts kernel.

    ``block_order`` may name the block_importance stage's output, which exists only once that
    stage has run; train_base never applies it (the stages that load the trained model do).
    """

    preset: str = "tiny"
    # A checkpoint folder to use instead of training the tiny preset: knobctl's own format or an HF family's
    # folder as downloaded (README.md, "Your own model"); train_base records it in models/base.
    source: str | None = None
    block_order: str | tuple[int, ...] | None = "first"
    experts_implementation: str = "grouped_mm"
    dims: TinyDims = field(default_factory=TinyDims)
    # Visual tokens per image at each tier for a checkpoint of an HF family (None: the family's defaults,
    # knobctl.model.families); knobctl's own format sets its tiers in knobctl.json and ignores this.
    tier_tokens: Mapping[str, int] | None = None

    def __post_init__(self) -> None:
        require_choice(self.preset, "model.preset", PRESETS)
        require(self.source is None or (isinstance(self.source, str) and self.source.strip() != ""), "model.source",
                self.source, "use null (train the tiny preset) or the path of a local checkpoint folder")
        if self.tier_tokens is not None:
            require(isinstance(self.tier_tokens, Mapping) and len(self.tier_tokens) > 0
                    and set(self.tier_tokens) <= set(TIER_ORDER), "model.tier_tokens", self.tier_tokens,
                    f"use null or a mapping of tiers ({', '.join(TIER_ORDER)}) to visual tokens per image")
            for tier, tokens in self.tier_tokens.items():
                require_int(tokens, f"model.tier_tokens.{tier}", 4)
        # build() checks the form; a path is not read here: train_base parses this section
        # before the block_importance stage has written the file, and never applies the order.
        require_choice(self.experts_implementation, "model.experts_implementation", EXPERTS_IMPLEMENTATIONS)

    @classmethod
    def from_params(cls, section: Mapping[str, Any]) -> ModelParams:
        return build(cls, section, "model")

    def tiny_dims(self) -> TinyDims:
        return self.dims


def tiny_tiers(dims: TinyDims = TinyDims()) -> dict[str, TierSpec]:
    """low/medium/high = the image at 1/4, 1/2 and full side, pooled ``vision_pool`` x ``vision_pool``."""
    side = dims.image_size
    return {
        name: TierSpec(image_size=side // div, pool=dims.vision_pool)
        for name, div in (("low", 4), ("medium", 2), ("high", 1))
    }


TINY_TIERS: dict[str, TierSpec] = tiny_tiers()


def tiny_config(vocab_size: int, dims: TinyDims = TinyDims()) -> LlavaConfig:
    """A small MoE VLM from stock HF configs: CLIP tower + OLMoE LM, all blocks MoE."""
    vision = CLIPVisionConfig(
        hidden_size=dims.vision_hidden,
        intermediate_size=dims.vision_intermediate,
        num_hidden_layers=dims.vision_layers,
        num_attention_heads=dims.vision_heads,
        image_size=dims.image_size,
        patch_size=dims.patch_size,
        projection_dim=dims.vision_hidden,
    )
    text = OlmoeConfig(
        vocab_size=vocab_size,
        hidden_size=dims.hidden_size,
        intermediate_size=dims.expert_intermediate,
        num_hidden_layers=dims.num_layers,
        num_attention_heads=dims.num_heads,
        num_key_value_heads=dims.num_heads,
        num_experts=dims.num_experts,
        num_experts_per_tok=dims.top_k,
        max_position_embeddings=dims.max_position,
        pad_token_id=SPECIAL_TOKENS.index(PAD),
        bos_token_id=SPECIAL_TOKENS.index(BOS),
        eos_token_id=SPECIAL_TOKENS.index(EOS),
        tie_word_embeddings=False,
        router_aux_loss_coef=0.01,
    )
    return _llava(vision, text, feature_layer=-1)


# --------------------------------------------------------------- molmoe-1b-shape

MOLMOE_TIERS: dict[str, TierSpec] = {
    "low": TierSpec(image_size=336, crop_grid=(1, 2), pool=2),
    "medium": TierSpec(image_size=336, crop_grid=(2, 3), pool=2),
    "high": TierSpec(image_size=336, crop_grid=(3, 4), pool=2),
}


def molmoe_1b_shape_config() -> LlavaConfig:
    """MolmoE-1B's real dimensions (CLIP ViT-L/14-336 + OLMoE-1B-7B), for latency only."""
    vision = CLIPVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=336,
        patch_size=14,
        projection_dim=768,
    )
    text = OlmoeConfig(
        vocab_size=50304,
        hidden_size=2048,
        intermediate_size=1024,
        num_hidden_layers=16,
        num_attention_heads=16,
        num_key_value_heads=16,
        num_experts=64,
        num_experts_per_tok=8,
        max_position_embeddings=4096,
        pad_token_id=SPECIAL_TOKENS.index(PAD),
        bos_token_id=SPECIAL_TOKENS.index(BOS),
        eos_token_id=SPECIAL_TOKENS.index(EOS),
        tie_word_embeddings=False,
    )
    return _llava(vision, text, feature_layer=-2)


def _llava(vision: CLIPVisionConfig, text: OlmoeConfig, feature_layer: int) -> LlavaConfig:
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=SPECIAL_TOKENS.index(IMAGE),
        vision_feature_layer=feature_layer,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        tie_word_embeddings=False,
    )


def qwen3_vl_30b_a3b_shape_config() -> Qwen3VLMoeConfig:
    """Qwen3-VL-30B-A3B's published dimensions (48 layers, 128 experts, 8 active, DeepStack after vision
    blocks 8/16/24), for random-weight latency: about 30.5 B parameters in the language model, 3.3 B
    active per token. Qwen3VLMoeConfig's own defaults are another model (24 layers, 60 experts).
    The preset ``qwen3-vl-30b-a3b-shape`` (:data:`FAMILY_PRESETS`)."""
    rope = {"rope_type": "default", "rope_theta": 5e6, "mrope_section": [24, 20, 20], "mrope_interleaved": True}
    return Qwen3VLMoeConfig(
        text_config={"vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 6144, "num_hidden_layers": 48,
                     "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128,
                     "moe_intermediate_size": 768, "num_experts": 128, "num_experts_per_tok": 8,
                     "decoder_sparse_step": 1, "mlp_only_layers": [], "max_position_embeddings": 262144,
                     "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "rope_parameters": rope},
        vision_config={"depth": 27, "hidden_size": 1152, "intermediate_size": 4304, "num_heads": 16, "patch_size": 16,
                       "spatial_merge_size": 2, "temporal_patch_size": 2, "out_hidden_size": 2048,
                       "num_position_embeddings": 2304, "deepstack_visual_indexes": [8, 16, 24],
                       "hidden_act": "gelu_pytorch_tanh"},
        image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653,
        tie_word_embeddings=False)


#: True-size shapes of HF families with random weights, for latency: preset name -> (config, end-of-turn token, id).
FAMILY_PRESETS: dict[str, tuple[Callable[[], Any], str, int]] = {
    "qwen3-vl-30b-a3b-shape": (qwen3_vl_30b_a3b_shape_config, "<|im_end|>", 151645),
}
PRESETS: tuple[str, ...] = ("tiny", "molmoe-1b-shape", *FAMILY_PRESETS)


def full_tier_tokens(config: LlavaConfig, spec: ModelSpec) -> int:
    """Visual tokens per image (per view, for a tier of crops) at the full tier: HF's ``image_seq_length``.

    LlavaConfig defaults it to 576 (LLaVA-1.5's 24x24 patches); knobctl never reads it, but it is
    what a reader of config.json (or a stock processor) takes the checkpoint's image length to be.
    """
    return spec.tiers[spec.full_tier].tokens_per_image(config.vision_config.patch_size)


def _with_seq_length(config: LlavaConfig, spec: ModelSpec) -> tuple[LlavaConfig, ModelSpec]:
    config.image_seq_length = full_tier_tokens(config, spec)
    return config, spec


def preset_config(name: str, vocab_size: int | None = None, dims: TinyDims | None = None) -> tuple[LlavaConfig, ModelSpec]:
    """HF config and knob spec of a named preset."""
    if name == "tiny":
        if vocab_size is None:
            raise ValueError("the tiny preset needs vocab_size (its tokenizer is built from the training data)")
        dims = dims or TinyDims()
        return _with_seq_length(tiny_config(vocab_size, dims), ModelSpec(tiers=tiny_tiers(dims)))
    if name == "molmoe-1b-shape":
        return _with_seq_length(molmoe_1b_shape_config(), ModelSpec(tiers=dict(MOLMOE_TIERS), max_new_tokens=16))
    raise ValueError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)} (or a local checkpoint directory)")
