"""Build, load and save MedKLIP checkpoints.

A saved MedKLIP folder holds `model.safetensors`, `config.json` (with `auto_map` and the tokenised knowledge),
`configuration_medklip.py` / `modeling_medklip.py` (remote code), the text encoder's tokenizer (to tokenise reports)
and the image processor (`preprocessor_config.json`, transformers' built-in `CLIPImageProcessor`: resize to
`image_size` squared, no crop, ImageNet normalisation), so that

```python
from transformers import AutoImageProcessor, AutoModel
model = AutoModel.from_pretrained(path, trust_remote_code=True)
pixel_values = AutoImageProcessor.from_pretrained(path)(images=image, return_tensors="pt").pixel_values
probabilities = model(pixel_values).logits.sigmoid()      # (1, entities), order = model.config.entities
```

Real weights (no download at run time; files on disk):
* visual encoder: a torchvision ResNet-50 `state_dict` file (`.pth`/`.pt`/`.bin`/`.safetensors`, e.g. torchvision's
  ImageNet `resnet50-0676ba61.pth`) or a timm checkpoint folder (`config.json` + `model.safetensors` /
  `pytorch_model.bin`, e.g. `timm/resnet50.a1_in1k`); torchvision and timm name ResNet parameters alike, the
  classifier `fc.*` is dropped;
* text encoder: a BERT checkpoint folder in ClinicalBERT's Hugging Face format (`emilyalsentzer/Bio_ClinicalBERT`:
  `config.json`, `pytorch_model.bin` with `bert.*` keys, `vocab.txt`), loaded with `BertModel` and its tokenizer
  with `AutoTokenizer` (BERT's defaults: lower-casing, as every user of that checkpoint gets).

Presets (`preset_config`): `study` (ResNet-50 at 512 px, ClinicalBERT, width 768: the study's model), `cpu` (a narrow
ResNet-18 at 192 px and a small random BERT with a WordPiece vocabulary trained on the knowledge descriptions: the
offline CPU configuration) and `tiny` (tests).
"""

from __future__ import annotations

import logging
import re
import string
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, BertModel, BertTokenizer, CLIPImageProcessor, PreTrainedTokenizerBase

from .configuration_medklip import CLINICAL_BERT_TEXT_CONFIG, MedKLIPConfig
from .knowledge import Knowledge, load_knowledge
from .modeling_medklip import MedKLIPModel

logger = logging.getLogger(__name__)

AUTO_MAP = {"AutoConfig": "configuration_medklip.MedKLIPConfig", "AutoModel": "modeling_medklip.MedKLIPModel"}
KNOWLEDGE_MAX_LENGTH = 128  # tokens per description (the reference code's padding length)
PRESETS = ("study", "cpu", "tiny")
# small preset -> (ResNet-18 channels, stem width, BERT width, image size, decoder width, decoder heads)
SMALL_PRESETS = {"cpu": ((16, 32, 64, 128), 16, 64, 192, 128, 4), "tiny": ((8, 8, 16, 16), 8, 32, 64, 32, 2)}


def _small_resnet(channels: tuple[int, int, int, int], stem_width: int) -> dict[str, Any]:
    return {"model_type": "timm_wrapper", "architecture": "resnet18", "num_labels": 0, "do_pooling": False,
            "model_args": {"channels": list(channels), "stem_width": stem_width}}


def _small_bert(hidden: int, layers: int, heads: int, vocab_size: int) -> dict[str, Any]:
    """A small random BERT. At BERT's usual initialiser range (0.02) a random encoder gives every description the same
    `[CLS]` embedding (pairwise cosine 1.0000 on the six entity descriptions): the entity queries would be identical.
    With weights of std 1.0 they are distinct (mean pairwise cosine 0.64), which is all a random encoder can offer."""
    return {"model_type": "bert", "vocab_size": vocab_size, "hidden_size": hidden, "num_hidden_layers": layers,
            "num_attention_heads": heads, "intermediate_size": 2 * hidden, "max_position_embeddings": 256,
            "initializer_range": 1.0}


def preset_config(name: str, knowledge: Knowledge, vocab_size: int | None = None, **overrides) -> MedKLIPConfig:
    """A `MedKLIPConfig` of preset `name` with `knowledge`'s names and descriptions (not yet tokenised).

    `vocab_size` is the text tokenizer's (small presets only; `study` takes ClinicalBERT's).
    """
    names = {
        "entities": list(knowledge.entities),
        "entity_descriptions": list(knowledge.entity_descriptions),
        "positions": list(knowledge.positions),
        "position_descriptions": list(knowledge.position_descriptions),
    }
    if name == "study":
        kwargs: dict[str, Any] = {"text_config": dict(CLINICAL_BERT_TEXT_CONFIG)}
    elif name in SMALL_PRESETS:
        channels, stem_width, text_width, image_size, width, heads = SMALL_PRESETS[name]
        kwargs = {
            "vision_config": _small_resnet(channels, stem_width),
            "text_config": _small_bert(text_width, 2, 2, vocab_size or 1000),
            "image_size": image_size,
            "hidden_size": width,
            "decoder_layers": 2,
            "decoder_attention_heads": heads,
            "decoder_ffn_dim": 2 * width,
        }
    else:
        raise ValueError(f"unknown MedKLIP preset {name!r}; available: {PRESETS}")
    kwargs.update(overrides)
    return MedKLIPConfig(**names, **kwargs)


# ============================================================================================== tokenizers


SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_ALPHABET = string.ascii_lowercase + string.digits + string.punctuation


def wordpiece_vocabulary(texts: Iterable[str], vocab_size: int = 1000) -> list[str]:
    """A deterministic BERT vocabulary for the small presets: the special tokens, every printable ASCII character as a
    word start and as a `##` continuation (so any word splits into pieces, never `[UNK]`), then the most frequent
    lower-cased words of `texts` (ties alphabetically) up to `vocab_size`."""
    counts: dict[str, int] = {}
    for text in texts:
        for word in re.findall(r"[a-z0-9]+", text.lower()):
            counts[word] = counts.get(word, 0) + 1
    vocabulary = list(SPECIAL_TOKENS) + list(_ALPHABET) + [f"##{c}" for c in _ALPHABET]
    words = sorted((w for w in counts if w not in vocabulary), key=lambda w: (-counts[w], w))
    return vocabulary + words[: max(0, vocab_size - len(vocabulary))]


def train_wordpiece_tokenizer(texts: Iterable[str], vocab_size: int = 1000, out_dir: str | Path | None = None) -> BertTokenizer:
    """A lower-casing BERT WordPiece tokenizer over `wordpiece_vocabulary(texts)`: the small presets' stand-in for
    ClinicalBERT's vocabulary (the same texts always give the same ids). With `out_dir`, its `vocab.txt` is written
    there (BERT's on-disk format)."""
    vocabulary = wordpiece_vocabulary(texts, vocab_size)
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "vocab.txt").write_text("\n".join(vocabulary) + "\n", encoding="utf-8")
    return BertTokenizer(vocab={token: index for index, token in enumerate(vocabulary)}, do_lower_case=True)


def tokenize_knowledge(config: MedKLIPConfig, tokenizer: PreTrainedTokenizerBase, max_length: int = KNOWLEDGE_MAX_LENGTH) -> None:
    """Fill `config.entity_token_ids` / `position_token_ids` from its descriptions (`[CLS] ... [SEP]`, truncated to
    `max_length`). Raises when a description is missing."""
    for kind, names, texts in (("entity", config.entities, config.entity_descriptions),
                               ("position", config.positions, config.position_descriptions)):
        if len(texts) != len(names) or any(not t for t in texts):
            raise ValueError(f"every {kind} needs a description before tokenising ({len(names)} names, {len(texts)} texts)")
    encode = lambda texts: tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    config.entity_token_ids = [list(ids) for ids in encode(config.entity_descriptions)]
    config.position_token_ids = [list(ids) for ids in encode(config.position_descriptions)] if config.positions else []
    config.text_config.pad_token_id = tokenizer.pad_token_id


def image_processor_for(config: MedKLIPConfig) -> CLIPImageProcessor:
    """Resize to `image_size` squared (aspect not kept, no crop), RGB, rescale to [0, 1], normalise."""
    size = config.image_size
    return CLIPImageProcessor(size={"height": size, "width": size}, do_center_crop=False, do_convert_rgb=True,
                              resample=2, image_mean=list(config.image_mean), image_std=list(config.image_std))


# ============================================================================================== real weights


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state_dict")
    return state


def _vision_state_dict_file(path: Path) -> Path:
    if path.is_file():
        return path
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (path / name).is_file():
            return path / name
    raise FileNotFoundError(f"no ResNet weights at {path} (a state_dict file, or a timm folder with model.safetensors "
                            "or pytorch_model.bin)")


def load_vision_weights(model: MedKLIPModel, path: str | Path) -> dict[str, Any]:
    """Copy ResNet weights from a torchvision `state_dict` file or a timm checkpoint folder into the visual encoder.

    Keys may carry a `module.` (DataParallel) or `timm_model.` prefix; the classifier `fc.*` is dropped. Every
    parameter and buffer of the encoder must be provided with the right shape: anything missing, unexpected or
    misshapen raises, naming the keys. Returns what was loaded.
    """
    file = _vision_state_dict_file(Path(path))
    state = _read_state_dict(file)
    cleaned = {}
    for key, value in state.items():
        for prefix in ("module.", "timm_model."):
            key = key.removeprefix(prefix)
        if not key.startswith("fc."):
            cleaned[key] = value
    target = model.vision_model.timm_model
    expected = target.state_dict()
    missing = sorted(set(expected) - set(cleaned))
    unexpected = sorted(set(cleaned) - set(expected))
    misshapen = sorted(k for k in set(expected) & set(cleaned) if tuple(expected[k].shape) != tuple(cleaned[k].shape))
    if missing or unexpected or misshapen:
        raise ValueError(
            f"{file} does not fit the visual encoder ({model.config.vision_config.architecture}): missing "
            f"{missing[:8]}{'...' if len(missing) > 8 else ''} ({len(missing)}), unexpected {unexpected[:8]} "
            f"({len(unexpected)}), wrong shape {misshapen[:8]} ({len(misshapen)})"
        )
    target.load_state_dict(cleaned, strict=True)
    return {"file": str(file), "tensors": len(cleaned), "dropped_classifier": sorted(k for k in state if "fc." in k)}


def load_text_encoder(path: str | Path) -> tuple[BertModel, PreTrainedTokenizerBase]:
    """A BERT checkpoint folder (ClinicalBERT's format) -> (`BertModel` without pooler, its tokenizer)."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a BERT checkpoint folder (no config.json)")
    encoder = BertModel.from_pretrained(str(path), add_pooling_layer=False)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    return encoder, tokenizer


# ============================================================================================== assemble / save


def build_medklip(
    preset: str = "study",
    knowledge_file: str | Path | None = None,
    entities: Iterable[str] | None = None,
    positions: Iterable[str] | None = None,
    vision_weights: str | Path | None = None,
    text_encoder: str | Path | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    seed: int = 0,
    **overrides,
) -> tuple[MedKLIPModel, PreTrainedTokenizerBase, CLIPImageProcessor]:
    """Assemble a MedKLIP model: knowledge from the description file (checked against `entities` / `positions`
    before anything is built), the text encoder and tokenizer from `text_encoder` (a ClinicalBERT-format folder)
    or, for the small presets, a WordPiece tokenizer trained on the descriptions and a random BERT; ResNet weights
    from `vision_weights` when given (else random). Returns (model, tokenizer, image processor)."""
    knowledge = load_knowledge(knowledge_file, entities=list(entities) if entities else None,
                               positions=list(positions) if positions is not None else None)
    encoder = None
    if text_encoder is not None:
        encoder, tokenizer = load_text_encoder(text_encoder)
        overrides["text_config"] = encoder.config.to_dict()
    elif tokenizer is None:
        if preset == "study":
            raise ValueError("the study preset needs text_encoder= (a ClinicalBERT checkpoint folder)")
        tokenizer = train_wordpiece_tokenizer(knowledge.entity_descriptions + knowledge.position_descriptions)
    config = preset_config(preset, knowledge, vocab_size=len(tokenizer), **overrides)
    tokenize_knowledge(config, tokenizer)
    torch.manual_seed(seed)
    model = MedKLIPModel(config)
    if encoder is not None:
        model.text_model.load_state_dict(encoder.state_dict(), strict=True)
    if vision_weights is not None:
        load_vision_weights(model, vision_weights)
    if config.freeze_text_encoder:
        model.freeze_text_encoder()
    return model.eval(), tokenizer, image_processor_for(config)


def save_medklip(model: MedKLIPModel, tokenizer: PreTrainedTokenizerBase, image_processor: CLIPImageProcessor | None,
                 out_dir: str | Path) -> Path:
    """Save weights (safetensors), config with `auto_map`, remote code, tokenizer and image processor."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.config.auto_map = dict(AUTO_MAP)
    # Registering makes save_pretrained copy modeling_medklip.py and the configuration file it imports relatively.
    model.register_for_auto_class("AutoModel")
    model.config.register_for_auto_class()
    model.save_pretrained(out_dir)
    model.config.auto_map = dict(AUTO_MAP)
    model.config.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (image_processor or image_processor_for(model.config)).save_pretrained(out_dir)
    return out_dir


__all__ = [
    "AUTO_MAP",
    "PRESETS",
    "build_medklip",
    "image_processor_for",
    "load_text_encoder",
    "load_vision_weights",
    "preset_config",
    "save_medklip",
    "tokenize_knowledge",
    "train_wordpiece_tokenizer",
    "wordpiece_vocabulary",
]
