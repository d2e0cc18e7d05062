"""What a saved checkpoint must hold, checked before any weights load, and the model card written beside it.

knobctl loads only local folders that save_runtime (or save_pretrained plus a knob spec) wrote, and never runs
code shipped with a checkpoint: a config that asks for remote code (``auto_map``) is refused, and weights load
from safetensors only (a pickle can run code when loaded). A missing, truncated or unreadable file is a
:class:`CheckpointError` naming it. The model card (README.md) says what stock transformers can and cannot do
with the checkpoint.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

from knobctl.model.families import Family, family_of
from knobctl.model.spec import SPEC_FILE, ModelSpec
from knobctl.params import InputError

TOKENIZER_FILE = "tokenizer.json"
#: What to do about a missing or broken file that save_runtime writes.
REBUILD = "rebuild the checkpoint (models/base: `dvc repro train_base`)"
#: Files through which a checkpoint could ask transformers to import code shipped with it (``auto_map``).
REMOTE_CODE_FILES = ("config.json", "tokenizer_config.json", "processor_config.json", "preprocessor_config.json")


class CheckpointError(InputError):
    """A checkpoint folder knobctl refuses to load; the message names the file at fault."""


def load_weights(model_class: Any, path: Path, dtype: Any) -> Any:
    """``model_class.from_pretrained`` on a local folder, refusing a config that does not match its weights.

    transformers initialises at random every weight the config declares and the files lack (a config.json with
    more layers than were saved), drops every saved tensor the config does not declare, and only warns: the model
    would run with random parts. Here any missing, unexpected or reshaped tensor is a :class:`CheckpointError`
    naming the folder, how many tensors and the first of them. Safetensors only: a pickle can run code."""
    try:
        model, info = model_class.from_pretrained(path, local_files_only=True, trust_remote_code=False,
                                                  use_safetensors=True, dtype=dtype, output_loading_info=True)
    except (RuntimeError, ValueError, OSError, SafetensorError) as exc:  # shapes, truncated or unreadable files
        raise CheckpointError(f"{path}: its weights do not load into the model config.json describes "
                              f"({type(exc).__name__}: {str(exc)[:300]}); {REBUILD}") from exc
    problems = [(kind, sorted(info.get(key) or [])) for kind, key in (
        ("missing from the weights (the config declares them)", "missing_keys"),
        ("in the weights but not in the config", "unexpected_keys"),
        ("of another shape than the config says", "mismatched_keys"))]
    problems = [(kind, keys) for kind, keys in problems if keys]
    if problems:
        kind, keys = problems[0]
        raise CheckpointError(f"{path}: config.json does not match its weights: {len(keys)} tensors {kind} (first: "
                              f"{keys[0]}); the model would run with random or dropped parts. {REBUILD}")
    for name, weight in model.named_parameters():  # NaN weights answer without a word: every score 0
        if weight.is_floating_point() and weight.device.type != "meta" and not bool(weight.isfinite().all()):
            raise CheckpointError(f"{path}: weight {name} holds {int((~weight.isfinite()).sum())} NaN or infinite "
                                  f"values of {weight.numel()}; {REBUILD}")
    return model


#: What train_base writes to models/base for ``model.source``: the folder it adopted, instead of a copy of its weights.
SOURCE_FILE = "knobctl_source.json"


def source_fingerprint(path: Path) -> str:
    """sha256 (16 hex) of a folder's config.json and the names and sizes of its files: cheap on a 60 GB
    checkpoint, and it changes when a download is replaced or completed."""
    h = hashlib.sha256((path / "config.json").read_bytes() if (path / "config.json").is_file() else b"")
    for f in sorted(path.iterdir()):
        if f.is_file():
            h.update(f"{f.name}:{f.stat().st_size};".encode())
    return h.hexdigest()[:16]


def write_source(directory: Path, source: Path) -> dict[str, str]:
    """Record ``source`` (a checkpoint folder, checked as :func:`check_checkpoint` does) in ``directory``, atomically."""
    from knobctl.io import atomic_dir

    family = check_checkpoint(source)
    record = {"source": str(source), "model_type": family.model_type, "fingerprint": source_fingerprint(source)}
    with atomic_dir(directory) as tmp:
        (tmp / SOURCE_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return record


def resolve_source(path: Path) -> Path:
    """The checkpoint folder ``path`` stands for: itself, or the folder its :data:`SOURCE_FILE` names, whose
    files must still be those train_base adopted."""
    pointer = path / SOURCE_FILE
    if not pointer.is_file():
        return path
    record = _read_json(pointer)
    source = Path(str(record.get("source", "")))
    if not source.is_dir():
        raise CheckpointError(f"{pointer} names {source}, which is not a folder here; download the model there "
                              "or set model.source in params.yaml and rerun `dvc repro train_base`")
    if source_fingerprint(source) != record.get("fingerprint"):
        raise CheckpointError(f"{source} changed since train_base adopted it ({pointer}); rerun "
                              "`dvc repro -f train_base` so every stage sees the new files")
    return source


def check_checkpoint(path: Path) -> Family:
    """The folder's family, from config.json; a :class:`CheckpointError` naming the first file of ``path`` that
    is missing, broken or asks for remote code. Reads JSON and safetensors headers only, so it is cheap, and
    runs before any weights are built (a true-size config would build for minutes)."""
    family = checkpoint_family(path)
    if not family.model_class and not (path / TOKENIZER_FILE).is_file():
        raise CheckpointError(f"{path} has no {TOKENIZER_FILE} (the word-level tokenizer); {REBUILD}")
    _check_weights(path)
    return family


def checkpoint_family(path: Path) -> Family:
    """The family of the checkpoint folder ``path``, from its config.json alone, before any weights are
    built; a missing config.json, remote code or an unsupported family is an error naming the file."""
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path} has no config.json; give the folder save_runtime wrote or a model was "
                              "downloaded to")
    check_remote_code(path)
    return family_of(_read_json(path / "config.json"), str(path / "config.json"))


def check_remote_code(path: Path) -> None:
    """Raise a :class:`CheckpointError` naming the first file of ``path`` that asks for remote code."""
    for name in REMOTE_CODE_FILES:
        if (path / name).is_file() and (maps := _auto_maps(_read_json(path / name))):
            raise CheckpointError(
                f"{path / name} asks for remote code (auto_map: {maps}); knobctl never runs code "
                "from a checkpoint, so it refuses to load it. A stock checkpoint of a supported family needs no "
                "auto_map: remove it, or rebuild the checkpoint with save_runtime"
            )


def _read_json(file: Path) -> dict[str, Any]:
    try:
        obj = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{file} is not readable JSON ({exc}); {REBUILD}") from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"{file} holds a JSON {type(obj).__name__}, not an object; {REBUILD}")
    return obj


def _auto_maps(config: dict[str, Any]) -> list[Any]:
    # Sub-configs (text_config, vision_config) are dicts of their own and could carry one too.
    return [d["auto_map"] for d in (config, *config.values()) if isinstance(d, dict) and "auto_map" in d]


def _check_weights(path: Path) -> None:
    """Every safetensors file the checkpoint names exists and covers its header's tensors.

    A truncated file would otherwise surface as safetensors' "incomplete metadata" from
    deep inside transformers, naming no file."""
    index = path / SAFE_WEIGHTS_INDEX_NAME
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index} has no weight_map; {REBUILD}")
        names = sorted(set(weight_map.values()))
    else:
        names = [SAFE_WEIGHTS_NAME]
    for name in names:
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{file} is missing; {REBUILD}")
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except SafetensorError as exc:
            raise CheckpointError(f"{file} is truncated or corrupt ({exc}); {REBUILD}") from exc


def stock_differences(config: Any, spec: ModelSpec) -> list[str]:
    """Why stock transformers (LlavaModel.get_image_features, the Llava processor) cannot feed the
    language model of a checkpoint in knobctl's own format (``config``, a LlavaConfig, and its knob
    ``spec``) what knobctl does at the full tier; empty when it can."""
    tier = spec.tiers[spec.full_tier]
    vision = config.vision_config
    patch = vision.patch_size
    side = tier.image_size // patch
    why = []
    if tier.pool > 1:
        why.append(f"knobctl average-pools each image's {side}x{side} CLIP patch grid {tier.pool}x{tier.pool} before "
                   f"the projector ({tier.tokens_per_image(patch)} tokens per image); stock Llava has no "
                   f"pooling step and projects all {side * side} patches")
    if tier.num_images > 1:
        rows, cols = tier.crop_grid
        why.append(f"knobctl encodes {tier.num_images} views per image (a global one and a {rows}x{cols} grid of "
                   "crops); stock Llava encodes one")
    if tier.image_size != vision.image_size:
        why.append(f"knobctl feeds the vision tower {tier.image_size} px images with interpolated position "
                   f"embeddings; stock Llava expects the config's {vision.image_size} px")
    return why


def model_card(config: Any, spec: ModelSpec) -> str:
    """README.md of a checkpoint in knobctl's own format (``config``, a LlavaConfig, and its knob ``spec``): what
    it holds and what stock transformers can do with it."""
    name = spec.full_tier
    patch = config.vision_config.patch_size
    tokens = spec.tiers[name].num_tokens(patch)
    text = config.text_config
    holds = (
        "Load it with `knobctl.load_runtime(<this folder>)`. It holds a stock `LlavaForConditionalGeneration` "
        f"(CLIP vision tower, OLMoE language model with {text.num_hidden_layers} blocks, top-"
        f"{text.num_experts_per_tok} of {text.num_experts} experts) in `model.safetensors` and `config.json`, a "
        f"word-level tokenizer in `{TOKENIZER_FILE}` and knobctl's knob spec (tiers, block order, image "
        f"normalisation) in `{SPEC_FILE}`."
    )
    loads = (
        "`LlavaForConditionalGeneration.from_pretrained(<this folder>)` loads every weight, and "
        "`PreTrainedTokenizerFast.from_pretrained(<this folder>)` the tokenizer. The prompt is "
        f"`[BOS] <image> x {tokens} question-words [SEP]`, left-padded; knobctl's full configuration (tier {name}, "
        "all blocks, the model's own top-k) answers greedily until `[EOS]`. `image_seq_length` in config.json is "
        f"the visual tokens per image (per view) at that tier, {spec.tiers[name].tokens_per_image(patch)}."
    )
    why = stock_differences(config, spec)
    if why:
        verdict = "\n".join(["Stock transformers cannot reproduce knobctl's answers with this checkpoint:", "",
                             *[f"- {w}." for w in why]])
        consequence = (
            f"A stock `generate` with {tokens} `<image>` tokens stops with \"Image features and image tokens do not "
            "match\"; with as many tokens as stock Llava makes, it runs on visual features the model was never "
            "trained on. No processor config is written, so `AutoProcessor.from_pretrained` fails instead of "
            "building such prompts. Run the model with knobctl (`Runtime.answer`)."
        )
    else:
        verdict = (
            "Stock `generate` gives knobctl's full-configuration answers when it gets knobctl's inputs: "
            "`rt.layout.pixel_values(rt.model, images, tier)` and `rt.prompt_ids(questions, visual_tokens)` for a "
            "runtime `rt` of this folder."
        )
        consequence = (
            "No processor config is written: knobctl resizes images its own way (`tier_pixels`: bilinear with "
            "antialiasing to a square, no centre crop), which the stock image processor does not replicate."
        )
    return f"# knobctl checkpoint\n\n{holds}\n\n## Stock transformers\n\n{loads}\n\n{verdict}\n\n{consequence}\n"
