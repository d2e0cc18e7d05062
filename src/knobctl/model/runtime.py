"""The knob-aware runtime: a model, its knob spec and the layout of its backend.

A runtime holds knobctl's own Llava + OLMoE format (the tiny default, molmoe-1b-shape) or a checkpoint of
an HF MoE VLM family as it comes from the hub (Qwen3-VL-MoE, GLM-4.5V). What differs per format (tiers,
the vision path, the prompt, positions, token ids) is its :class:`knobctl.model.layout.ModelLayout`
(:mod:`knobctl.model.llava_layout`, :mod:`knobctl.model.family_layout`); the knobs, the embedding of a
prompt, the decoding loop and every stage are shared. :func:`load_runtime` finds the layout through the
registry of :mod:`knobctl.model.backends`, from the folder's config.json or the preset's name, and refuses
an unsupported family before building anything.

Knobs change the computation itself:

* ``top_k``: the router of every MoE block after the first sets ``top_k``, so each token
  is sent to (and computed by) exactly ``top_k`` experts there. The first block is the
  decision point: Stage 2 chooses ``top_k`` from its output, so it always runs at the
  model's own top-k (8 for the presets), in prefill and decode alike;
* ``num_blocks``: the language model's ``layers`` list is swapped for the chosen blocks,
  so the others are never called; the final norm and LM head follow the last block run;
* ``tier``: images are resized/cropped to the tier's layout before the vision tower,
  so both the vision tower's input and the visual tokens entering the LLM shrink (an HF family:
  the family's image processor at the tier's visual-token budget).

Knobs are applied inside :meth:`Runtime.knobs_applied` and restored on exit.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from knobctl.knobs import KnobConfig, KnobGrid
from knobctl.model.backends import load_source
from knobctl.model.checkpoint import model_card
from knobctl.model.decoding import generate
from knobctl.model.families import Family, knobs_applied, layer_routers, max_top_k
from knobctl.model.images import ImageLike, Images, Visual, as_batch
from knobctl.model.layout import LoadOptions, ModelLayout
from knobctl.model.presets import TinyDims, full_tier_tokens
from knobctl.model.spec import EOS, IMAGE, PAD, ModelSpec, parse_block_order
from knobctl.model.static_decode import DEFAULT_DECODE, StaticDecoder, decoder_for
from knobctl.params import InputError
from knobctl.weights import check_finite

#: dtype names accepted in params.yaml.
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class BlockOutputs:
    """What :meth:`Runtime.block_outputs` recorded, keyed by block index."""

    last: dict[int, torch.Tensor]  # block -> [B, H] at the last position
    sequence: dict[int, torch.Tensor]  # block -> [B, L, H]


@dataclass
class Runtime:
    """A loaded model ready to answer with any knob configuration of its grid."""

    model: nn.Module  # LlavaForConditionalGeneration, or the family's class (Family.model_class)
    spec: ModelSpec
    source: str
    layout: ModelLayout  # the backend: tiers, vision path, prompt, positions and token ids
    # model.decode: the path continuing a prompt's cache (knobctl.model.static_decode); None: eager
    decoder: StaticDecoder | None = None

    def __post_init__(self) -> None:
        self.spec.validate(self.num_layers)
        self._all_layers: nn.ModuleList = self.lm.layers
        self._block_routers = layer_routers(self._all_layers)
        self._routers = [r for routers in self._block_routers for r in routers]
        if not self._routers:
            raise ValueError(f"{self.source}: the language model has no top-k MoE routers; knobctl needs an MoE LM")
        # Once: validate() reads it on every request, and a config's to_dict() is not free.
        self._top_k_limit = min(max_top_k(self.config.to_dict(), self.family),
                                min(r.num_experts for r in self._routers))
        # PAD, EOS and IMAGE are the keys the decoding loop and features use.
        self.ids = self.layout.token_ids(self.model)

    # ------------------------------------------------------------------ shape
    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def tokenizer(self) -> Any:
        return self.layout.tokenizer

    @property
    def family(self) -> Family:
        return self.layout.family

    @property
    def lm(self) -> nn.Module:
        return self.model.model.language_model

    @property
    def num_layers(self) -> int:
        return self.config.text_config.num_hidden_layers

    @property
    def num_experts(self) -> int:
        """The largest top_k every router honours (a group-limited router keeps fewer than all experts)."""
        return self._top_k_limit

    @property
    def tier_names(self) -> list[str]:
        return list(self.layout.tiers)

    @property
    def image_size(self) -> int:
        """Side at which the stages decode dataset images before the tier's own resize."""
        return self.layout.image_size

    @property
    def all_layers(self) -> nn.ModuleList:
        """Every decoder layer in model order, whichever of them the current scope runs."""
        return self._all_layers

    @property
    def routers(self) -> list[nn.Module]:
        """Every router of the language model, block by block (each holds its ``top_k``)."""
        return list(self._routers)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def visual_tokens(self, tier: str) -> int:
        """Visual tokens that enter the LLM at a tier (an HF family: for a square image of :attr:`image_size`)."""
        return self.layout.visual_tokens(tier)

    def tier_table(self) -> dict[str, dict[str, int]]:
        """What each tier costs in inputs: visual tokens, images (global + crops), pixels per side,
        and the prompt's length without the question (visual tokens plus the special tokens)."""
        return {name: {"visual_tokens": self.visual_tokens(name), **self.layout.tier_inputs(name),
                       "prompt_tokens": len(self.prompt_from_ids([[]], self.visual_tokens(name))[0])}
                for name in self.layout.tiers}

    def validate(self, knobs: KnobConfig) -> None:
        knobs.validate_for(num_experts=self.num_experts, num_layers=self.num_layers, tiers=self.tier_names)

    def validate_grid(self, grid: KnobGrid) -> None:
        """Raise a ParamsError naming the first value of the ``knobs:`` grid this model cannot run."""
        self.layout.check_grid(self.model, grid.top_k, self.source)
        grid.validate_for(num_experts=self.num_experts, num_layers=self.num_layers, tiers=self.tier_names,
                          source=self.source)

    # ------------------------------------------------------------------ knobs
    @contextlib.contextmanager
    def knobs_applied(self, knobs: KnobConfig) -> Iterator[None]:
        """Within the scope, routers after the decision block pick ``top_k`` experts and only the
        chosen blocks run."""
        self.validate(knobs)
        with self.blocks_applied(self.spec.blocks_for(knobs.num_blocks, self.num_layers), knobs.top_k):
            yield

    @contextlib.contextmanager
    def blocks_applied(self, blocks: Sequence[int], top_k: int) -> Iterator[None]:
        """Within the scope, routers after the decision block pick ``top_k`` experts and only
        ``blocks`` run, in model order: :meth:`knobs_applied` for any set of blocks, not only
        the block policy's (block importance drops one block at a time, block 0 included)."""
        with knobs_applied(self.model, self.family, blocks, top_k, all_layers=self._all_layers,
                           routers=self._block_routers):
            yield

    @contextlib.contextmanager
    def blocks_run(self, indices: Sequence[int]) -> Iterator[None]:
        """Within the scope the language model runs only these blocks, in this order."""
        saved = self.lm.layers
        try:
            self.lm.layers = nn.ModuleList([self._all_layers[i] for i in indices])
            yield
        finally:
            self.lm.layers = saved

    @contextlib.contextmanager
    def block_outputs(self, keep_sequence: Sequence[int] = ()) -> Iterator[BlockOutputs]:
        """Record each block's output (before the final norm) while the scope runs forwards.

        Every block keeps its last position ([B, H]: with left padding, every row's last
        prompt token); blocks in ``keep_sequence`` keep the whole sequence ([B, L, H]).
        The latest forward overwrites earlier ones.
        """
        outs = BlockOutputs(last={}, sequence={})

        def record(index: int) -> Callable[..., None]:
            def hook(module: nn.Module, args: Any, output: Any) -> None:
                hidden = output[0] if isinstance(output, tuple) else output  # [B, L, H]
                outs.last[index] = hidden[:, -1]
                if index in keep_sequence:
                    outs.sequence[index] = hidden
            return hook

        handles = [layer.register_forward_hook(record(i)) for i, layer in enumerate(self._all_layers)]
        try:
            yield outs
        finally:
            for h in handles:
                h.remove()

    def head_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm + LM head on block outputs [..., H] -> logits [..., V] (an early exit)."""
        return self.model.lm_head(self.lm.norm(hidden))

    # ------------------------------------------------------------------ vision and text
    def encode_images(self, images: ImageLike | Images, tier: str) -> Visual:
        """The vision path at a tier (one image or a batch: :func:`knobctl.model.images.as_batch`): embeds
        [B, T_visual, H_llm]."""
        return self.layout.encode(self.model, images, tier)

    def prompt_ids(self, questions: Sequence[str], num_visual: int) -> list[list[int]]:
        """The prompt of each question with ``num_visual`` image slots (:meth:`prompt_from_ids`)."""
        words = self.tokenizer(list(questions), add_special_tokens=False)["input_ids"]
        return self.prompt_from_ids(words, num_visual)

    def prompt_from_ids(self, questions: Sequence[Sequence[int]], num_visual: int) -> list[list[int]]:
        """The prompt around already-tokenized questions: ``[BOS] <image> x num_visual question [SEP]`` in
        knobctl's own format, the chat template in an HF family's."""
        return self.layout.prompt_from_ids(questions, num_visual)

    def embed(self, visual: Visual, sequences: Sequence[Sequence[int]]) -> dict[str, Any]:
        """Left-padded embeddings with the visual tokens scattered into the image slots, the mask, and the
        positions (and what else the forward needs of the images) of the layout."""
        width = max(len(s) for s in sequences)
        pad = self.ids[PAD]
        ids = torch.tensor([[pad] * (width - len(s)) + list(s) for s in sequences], device=self.device)  # [B, L]
        lengths = torch.tensor([len(s) for s in sequences], device=self.device)  # [B]
        mask = (torch.arange(width, device=self.device) >= width - lengths[:, None]).long()  # [B, L]
        image = ids == self.ids[IMAGE]  # [B, L]
        table = self.lm.embed_tokens
        embeds = table(ids).masked_scatter(image[..., None], visual.embeds.to(table.weight.dtype))  # [B, L, H]
        return {"input_ids": ids, "inputs_embeds": embeds, "attention_mask": mask,
                **self.layout.position_inputs(self.model, ids, mask, image, visual)}

    def decode(self, tokens: torch.Tensor) -> list[str]:
        texts = []
        for row in tokens.tolist():
            if self.ids[EOS] in row:
                row = row[: row.index(self.ids[EOS])]
            texts.append(self.tokenizer.decode(row, skip_special_tokens=True).strip())
        return texts

    @torch.inference_mode()
    def answer(
        self,
        images: ImageLike | Images,
        questions: str | Sequence[str],
        knobs: KnobConfig,
        max_new_tokens: int | None = None,
        batch_size: int = 64,
    ) -> list[str]:
        """Greedy answers, batched; one per (image, question) pair (one image and one question
        string answer a single request)."""
        images = as_batch(images)
        questions = [questions] if isinstance(questions, str) else list(questions)
        if len(images) != len(questions):
            raise ValueError(f"{len(images)} images but {len(questions)} questions; pass one image per question")
        steps = max_new_tokens or self.spec.max_new_tokens
        self.model.eval()
        answers: list[str] = []
        with self.knobs_applied(knobs):
            for start in range(0, len(questions), batch_size):
                imgs = images[start : start + batch_size]
                qs = questions[start : start + batch_size]
                visual = self.encode_images(imgs, knobs.tier)
                inputs = self.embed(visual, self.prompt_ids(qs, visual.num_tokens))
                answers.extend(self.decode(generate(self, inputs, steps)))
        return answers


def device_name(device: torch.device, threads: bool = True) -> str:
    """Human-readable accelerator or CPU model, for the table's metadata; a CPU's ends with its torch threads
    unless ``threads`` is False (a table whose content does not depend on them)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = None
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        pass
    if name is None:
        import platform

        name = platform.processor() or platform.machine()
    return f"{name} ({torch.get_num_threads()} threads)" if threads else name


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_runtime(
    source: str | Path,
    *,
    device: str = "auto",
    dtype: torch.dtype | None = None,
    block_order: str | Path | Sequence[int] | None = None,
    vocab: Sequence[str] = (),
    dims: TinyDims | None = None,
    experts_implementation: str | None = None,
    tier_tokens: Mapping[str, int] | None = None,
    decode: str = DEFAULT_DECODE,
) -> Runtime:
    """Load a preset (random weights) or a local checkpoint directory; never a hub download.

    A checkpoint never runs code of its own: one whose config asks for remote code
    (``auto_map``) is refused, and there is no ``trust_remote_code`` switch to allow it.
    A missing, truncated or unreadable file raises :class:`knobctl.model.checkpoint.CheckpointError`
    naming it, before any weights load. ``block_order`` overrides
    the checkpoint's block policy ('first', a ranked list of block indices, or the path of a
    JSON file with an ``order`` key such as block_importance's output).
    ``experts_implementation`` picks HF's MoE experts kernel (eager, grouped_mm,
    batched_mm); None keeps the checkpoint's. A preset is built directly on the device
    in ``dtype``, so a true-size preset never initialises 7 B parameters on the CPU.

    A folder of a supported HF family (config.json's ``model_type``: qwen3_vl_moe, glm4v_moe) loads as it
    comes from the hub, with its own tokenizer, chat template and image processor (``local_files_only``,
    no remote code, safetensors only): its high tier is its own processor's cap and ``tier_tokens``
    replaces the caps on visual tokens per tier (:func:`knobctl.model.family_layout.tier_caps`). knobctl's own
    format sets its tiers in knobctl.json.
    A folder holding only train_base's ``knobctl_source.json`` (``model.source``) loads the folder it names.
    ``decode`` (``model.decode``) picks how decoding continues a prompt's cache: eager, static, compiled or
    graph (CUDA only) (:mod:`knobctl.model.static_decode`).
    """
    dev = resolve_device(device)
    decoder = decoder_for(decode, dev)  # a path the device cannot run is refused before any weights load
    options = LoadOptions(source=str(source), device=dev, dtype=dtype, vocab=vocab, dims=dims,
                          tier_tokens=tier_tokens)
    loaded = load_source(source, options)
    model, spec = loaded.model, loaded.spec
    if block_order is not None:
        spec = ModelSpec(**{**spec.__dict__, "block_order": parse_block_order(block_order)})
        if isinstance(block_order, (str, Path)) and block_order != "first":
            try:  # Runtime checks it too, but could not name the file the order came from
                spec.validate(model.config.text_config.num_hidden_layers)
            except ValueError as exc:
                raise InputError(f"{block_order}: {exc}; it was measured on another model or damaged: rerun "
                                 f"`dvc repro block_importance` on this one") from exc
    model.to(dev)
    if dtype is not None:
        model.to(dtype)
    if experts_implementation is not None:
        model.model.language_model.set_experts_implementation(experts_implementation)
    model.eval()
    return Runtime(model=model, spec=spec, source=str(source), layout=loaded.layout,
                   decoder=decoder)


def save_runtime(rt: Runtime, directory: str | Path, extra_files: dict[str, Any] | None = None) -> None:
    """save_pretrained (safetensors + config), tokenizer.json, knobctl.json and a model card
    (README.md: what stock transformers can do with the checkpoint), atomically: knobctl's own format.

    config.json's ``image_seq_length`` is set to the visual tokens of the full tier first, so
    the file states the true image length rather than LlavaConfig's default of 576."""
    from knobctl.io import atomic_dir

    rt.config.image_seq_length = full_tier_tokens(rt.config, rt.spec)
    check_finite(rt.model.state_dict(), directory, "Lower train_base.lr or train_base.grad_clip, or check the "
                 "training data (`python stages/prepare_data.py`).")
    with atomic_dir(directory) as tmp:
        (tmp / "README.md").write_text(model_card(rt.config, rt.spec))
        rt.model.save_pretrained(tmp, safe_serialization=True)
        rt.tokenizer.save_pretrained(tmp)
        rt.spec.save(tmp)
        for name, obj in (extra_files or {}).items():
            (tmp / name).write_text(json.dumps(obj, indent=2) + "\n")
