"""MedKLIP configuration (knowledge-enhanced entity existence on chest X-rays).

A MedKLIP-style model (Wu et al., "MedKLIP: Medical Knowledge Enhanced Language-Image Pre-Training", ICCV 2023, as
re-described by the MIMIC-CXR study this repository reproduces): a ResNet-50 reads the image, a frozen ClinicalBERT
encodes a natural-language description of every entity and of every anatomical position, and a transformer decoder
whose queries are the projected entity descriptions attends to the projected image patches. Per entity it predicts an
existence logit and a position representation; its cross-attention maps are the grounding heatmaps.

The knowledge (entity and position names, their descriptions and the descriptions' token ids in the text encoder's
vocabulary) lives in this config, so a saved model runs without its tokenizer.

Shipped as remote code next to the weights: imports only `transformers` and the standard library.
"""

from __future__ import annotations

from typing import Any

from transformers import CONFIG_MAPPING, AutoConfig, PreTrainedConfig

# ImageNet statistics: the study normalises its 512 x 512 inputs with them (ResNet-50 pretrained on ImageNet).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# ResNet-50 as the study's visual encoder: timm's `resnet50` (same parameter names as torchvision's), wrapped in
# transformers' `TimmWrapperModel`; `do_pooling=False` keeps the last feature map (B, 2048, H/32, W/32).
RESNET50_VISION_CONFIG = {"model_type": "timm_wrapper", "architecture": "resnet50", "num_labels": 0, "do_pooling": False}

# ClinicalBERT (emilyalsentzer/Bio_ClinicalBERT) is a BERT-base: 12 layers, width 768, cased 28,996-token vocabulary.
CLINICAL_BERT_TEXT_CONFIG = {
    "model_type": "bert",
    "vocab_size": 28996,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "max_position_embeddings": 512,
}


def _build_sub_config(value: dict[str, Any] | PreTrainedConfig | None, default: dict[str, Any], what: str) -> PreTrainedConfig:
    if isinstance(value, PreTrainedConfig):
        return value
    spec = dict(default if value is None else value)
    model_type = spec.pop("model_type", default["model_type"])
    if model_type not in CONFIG_MAPPING:
        raise ValueError(f"{what}: unknown model_type {model_type!r}")
    return CONFIG_MAPPING[model_type](**spec)


class MedKLIPConfig(PreTrainedConfig):
    r"""Configuration of a [`MedKLIPModel`].

    Args:
        vision_config (`dict` or `PreTrainedConfig`): the visual encoder, a `TimmWrapperConfig` of a ResNet
            (default: timm `resnet50`, the study's). Its last feature map is flattened into patches.
        text_config (`dict` or `PreTrainedConfig`): the text encoder, a `BertConfig` (default: ClinicalBERT's
            BERT-base shape). Frozen by default.
        entities (`list[str]`): entity names, in the order of the model's outputs.
        entity_descriptions (`list[str]`): one natural-language description per entity (what the text encoder reads,
            instead of the bare name).
        positions (`list[str]`): anatomical position names (the targets of the position contrastive loss).
        position_descriptions (`list[str]`): one description per position.
        entity_token_ids / position_token_ids (`list[list[int]]`): the descriptions tokenised with the text
            encoder's tokenizer (special tokens included, no padding); `medklip.checkpoint.tokenize_knowledge` fills
            them.
        image_size (`int`, 512): square input side of the image processor (the study's 512 x 512).
        image_mean / image_std: normalisation of the image processor (ImageNet's, as in the study).
        hidden_size (`int`, 768): width of the fusion decoder; image patches and descriptions are projected to it
            (the study projects both to 768).
        decoder_layers (`int`, 4), decoder_attention_heads (`int`, 4), decoder_ffn_dim (`int`, 1024),
        decoder_activation (`str`, "relu"), dropout (`float`, 0.1): the fusion decoder (pre-norm; the reference
            code's values).
        freeze_text_encoder (`bool`, True): keep the text encoder's weights fixed (the reference code computes the
            description embeddings once under `no_grad`).
        position_loss_weight (`float`, 1.0): alpha_1 of `L_cls + alpha_1 L_pos + alpha_2 L_sem`.
        semantic_loss_weight (`float`, 1.0): alpha_2.
        position_temperature (`float`, 0.07): temperature of the position InfoNCE (cosine similarities / t).
        initializer_range (`float`, 0.02): std of the normal init of new linear layers.
    """

    model_type = "medklip"
    sub_configs = {"vision_config": AutoConfig, "text_config": AutoConfig}

    def __init__(
        self,
        vision_config: dict[str, Any] | PreTrainedConfig | None = None,
        text_config: dict[str, Any] | PreTrainedConfig | None = None,
        entities: list[str] | None = None,
        entity_descriptions: list[str] | None = None,
        positions: list[str] | None = None,
        position_descriptions: list[str] | None = None,
        entity_token_ids: list[list[int]] | None = None,
        position_token_ids: list[list[int]] | None = None,
        image_size: int = 512,
        image_mean: tuple[float, ...] | list[float] = IMAGENET_MEAN,
        image_std: tuple[float, ...] | list[float] = IMAGENET_STD,
        hidden_size: int = 768,
        decoder_layers: int = 4,
        decoder_attention_heads: int = 4,
        decoder_ffn_dim: int = 1024,
        decoder_activation: str = "relu",
        dropout: float = 0.1,
        freeze_text_encoder: bool = True,
        position_loss_weight: float = 1.0,
        semantic_loss_weight: float = 1.0,
        position_temperature: float = 0.07,
        initializer_range: float = 0.02,
        **kwargs,
    ):
        self.vision_config = _build_sub_config(vision_config, RESNET50_VISION_CONFIG, "vision_config")
        self.text_config = _build_sub_config(text_config, CLINICAL_BERT_TEXT_CONFIG, "text_config")
        self.entities = list(entities or [])
        self.entity_descriptions = list(entity_descriptions or [])
        self.positions = list(positions or [])
        self.position_descriptions = list(position_descriptions or [])
        self.entity_token_ids = [list(map(int, ids)) for ids in entity_token_ids or []]
        self.position_token_ids = [list(map(int, ids)) for ids in position_token_ids or []]
        self.image_size = int(image_size)
        self.image_mean = [float(v) for v in image_mean]
        self.image_std = [float(v) for v in image_std]
        self.hidden_size = int(hidden_size)
        self.decoder_layers = int(decoder_layers)
        self.decoder_attention_heads = int(decoder_attention_heads)
        self.decoder_ffn_dim = int(decoder_ffn_dim)
        self.decoder_activation = decoder_activation
        self.dropout = float(dropout)
        self.freeze_text_encoder = bool(freeze_text_encoder)
        self.position_loss_weight = float(position_loss_weight)
        self.semantic_loss_weight = float(semantic_loss_weight)
        self.position_temperature = float(position_temperature)
        self.initializer_range = float(initializer_range)
        super().__init__(**kwargs)
        self.validate_knowledge(require_tokens=False)

    @property
    def num_entities(self) -> int:
        return len(self.entities)

    @property
    def num_positions(self) -> int:
        return len(self.positions)

    def validate_knowledge(self, require_tokens: bool = True) -> None:
        """Raise a `ValueError` naming what is inconsistent in the entity / position knowledge.

        With `require_tokens`, the descriptions must also be tokenised (what the model needs to run).
        """
        groups = (
            ("entity", self.entities, self.entity_descriptions, self.entity_token_ids),
            ("position", self.positions, self.position_descriptions, self.position_token_ids),
        )
        for kind, names, descriptions, token_ids in groups:
            if len(set(names)) != len(names):
                raise ValueError(f"MedKLIPConfig: {kind} names must be distinct, got {names}")
            if descriptions and len(descriptions) != len(names):
                raise ValueError(f"MedKLIPConfig: {len(names)} {kind} names but {len(descriptions)} descriptions")
            if token_ids and len(token_ids) != len(names):
                raise ValueError(f"MedKLIPConfig: {len(names)} {kind} names but {len(token_ids)} tokenised descriptions")
            if not require_tokens:
                continue
            if not names:
                raise ValueError(f"MedKLIPConfig has no {kind} names")
            untokenised = [name for name, ids in zip(names, token_ids or [[]] * len(names)) if not ids]
            if untokenised:
                raise ValueError(
                    f"MedKLIPConfig: no tokenised description for {kind} {untokenised}; build the config with "
                    "medklip.checkpoint.tokenize_knowledge (descriptions + the text encoder's tokenizer)"
                )
        if self.hidden_size % self.decoder_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of decoder_attention_heads "
                             f"{self.decoder_attention_heads}")


__all__ = ["CLINICAL_BERT_TEXT_CONFIG", "IMAGENET_MEAN", "IMAGENET_STD", "RESNET50_VISION_CONFIG", "MedKLIPConfig"]
