"""Model presets: the embedded ``tiny`` default, ``molmoe-1b-shape``, ``qwen3-vl-30b-a3b-shape``, and the
``model:`` section of params.yaml.

:data:`PRESETS` is the registry :func:`knobctl.model.runtime.load_runtime` builds a preset from. The
knobctl-format presets are a stock HF ``LlavaForConditionalGeneration`` composing a CLIP vision tower with an
OLMoE language model (nothing here is a hand-written transformer) plus their :class:`ModelSpec`
(:mod:`knobctl.model.spec`: what each tier means, saved as ``knobctl.json``); a hub-family preset is the
family's own config at its published shape.

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

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from knobctl.knobs import TIER_ORDER
from knobctl.model.spec import BOS, EOS, IMAGE, PAD, SPECIAL_TOKENS, ModelSpec, TierSpec
from knobctl.params import build, require, require_choice, require_int

if TYPE_CHECKING:  # the registry serves the stages' --help (knobctl.model.sources), which must not load transformers
    from transformers import CLIPVisionConfig, InternVLConfig, LlavaConfig, OlmoeConfig, Qwen3VLMoeConfig

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
#: How decoding continues a prompt's cache (``model.decode``, :mod:`knobctl.model.static_decode`): HF's dynamic cache,
#: a static cache, its step under torch.compile, its step replayed as a CUDA graph (CUDA only).
DECODE_PATHS = ("eager", "static", "compiled", "graph")


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
    # eager: measured faster or as fast as every path that needs no compile on the default's CPU, and compiling
    # one step per configuration costs more than it saves there (docs/LOG.md, "Decode paths (issue 33)")
    decode: str = "eager"
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
        require_choice(self.decode, "model.decode", DECODE_PATHS)

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
    from transformers import CLIPVisionConfig, OlmoeConfig

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
    from transformers import CLIPVisionConfig, OlmoeConfig

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
    from transformers import LlavaConfig

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
    The preset ``qwen3-vl-30b-a3b-shape`` (:data:`PRESETS`)."""
    from transformers import Qwen3VLMoeConfig

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


def internvl3_5_30b_a3b_shape_config() -> InternVLConfig:
    """InternVL3.5-30B-A3B's published dimensions: InternViT-300M (24 layers, 448-px tiles of 14-px patches, 256
    visual tokens per tile after the pixel shuffle) and Qwen3-30B-A3B (48 layers, 128 experts, 8 active; about
    30.5 B parameters, 3.3 B active per token), for random-weight latency. The image and end-of-turn ids are the
    Qwen tokenizer's; which ids a prompt holds does not change latency. The preset ``internvl3.5-30b-a3b-shape``."""
    from transformers import InternVLConfig

    config = InternVLConfig(
        vision_config={"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
                       "intermediate_size": 4096, "image_size": [448, 448], "patch_size": [14, 14],
                       "layer_scale_init_value": 0.1, "use_qk_norm": False},
        text_config={"model_type": "qwen3_moe", "vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 6144,
                     "num_hidden_layers": 48, "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128,
                     "moe_intermediate_size": 768, "num_experts": 128, "num_experts_per_tok": 8,
                     "decoder_sparse_step": 1, "mlp_only_layers": [], "norm_topk_prob": True,
                     "max_position_embeddings": 40960, "rms_norm_eps": 1e-6, "tie_word_embeddings": False},
        image_token_id=151671, downsample_ratio=0.5, projector_hidden_act="gelu", vision_feature_layer=-1,
        vision_feature_select_strategy="default", tie_word_embeddings=False)
    config.image_start_token_id, config.image_end_token_id = 151669, 151670  # <img>, </img>: the word tokenizer's
    return config


def full_tier_tokens(config: LlavaConfig, spec: ModelSpec) -> int:
    """Visual tokens per image (per view, for a tier of crops) at the full tier: HF's ``image_seq_length``.

    LlavaConfig defaults it to 576 (LLaVA-1.5's 24x24 patches); knobctl never reads it, but it is
    what a reader of config.json (or a stock processor) takes the checkpoint's image length to be.
    """
    return spec.tiers[spec.full_tier].tokens_per_image(config.vision_config.patch_size)


def _with_seq_length(config: LlavaConfig, spec: ModelSpec) -> tuple[LlavaConfig, ModelSpec]:
    config.image_seq_length = full_tier_tokens(config, spec)
    return config, spec


def _tiny(vocab_size: int | None, dims: TinyDims | None) -> tuple[LlavaConfig, ModelSpec]:
    if vocab_size is None:
        raise ValueError("the tiny preset needs vocab_size (its tokenizer is built from the training data)")
    dims = dims or TinyDims()
    return _with_seq_length(tiny_config(vocab_size, dims), ModelSpec(tiers=tiny_tiers(dims)))


def _molmoe_1b_shape(vocab_size: int | None, dims: TinyDims | None) -> tuple[LlavaConfig, ModelSpec]:
    return _with_seq_length(molmoe_1b_shape_config(), ModelSpec(tiers=dict(MOLMOE_TIERS), max_new_tokens=16))


@dataclass(frozen=True)
class Preset:
    """A named model with random weights, built by the backend of its format
    (:data:`knobctl.model.backends.BACKENDS`, keyed like :attr:`knobctl.model.families.Family.backend`)."""

    backend: str  # "knobctl" (knobctl's own format), or "hub" / "internvl" (an HF family as the hub lays it out)
    # knobctl: (vocab_size, dims) -> (LlavaConfig, ModelSpec); hub: () -> the family's config at its published shape
    make: Callable[..., Any]
    eos: tuple[str, int] = ("", 0)  # hub: the end-of-turn token of its word tokenizer and the id the config gives it


#: Every preset ``load_runtime`` builds: the embedded default, and true-size shapes with random weights for latency.
PRESETS: dict[str, Preset] = {
    "tiny": Preset("knobctl", _tiny),
    "molmoe-1b-shape": Preset("knobctl", _molmoe_1b_shape),
    "qwen3-vl-30b-a3b-shape": Preset("hub", qwen3_vl_30b_a3b_shape_config, ("<|im_end|>", 151645)),
    "internvl3.5-30b-a3b-shape": Preset("internvl", internvl3_5_30b_a3b_shape_config, ("<|im_end|>", 151645)),
}


def preset_config(name: str, vocab_size: int | None = None, dims: TinyDims | None = None) -> tuple[LlavaConfig, ModelSpec]:
    """HF config and knob spec of a preset in knobctl's own format."""
    preset = PRESETS.get(name)
    if preset is None or preset.backend != "knobctl":
        raise ValueError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)} (or a local checkpoint directory)")
    return preset.make(vocab_size, dims)
