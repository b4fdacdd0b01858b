"""LiteGPT configuration.

LiteGPT ("LiteGPT: Large Vision-Language Model for Joint Chest X-ray Localization and
Classification") feeds the patch tokens of several frozen ViT encoders (BiomedCLIP ViT-B/16 and
PubMedCLIP ViT-B/32 in the paper), concatenated along the sequence and grouped
``tokens_per_group`` consecutive positions at a time, through a two-layer GELU projector into a
causal language model (Llama-2-7b-chat initialised from MiniGPT-v2 in the paper).

This file is shipped as remote code next to the weights: it must import nothing beyond
``transformers`` and the standard library.
"""

from __future__ import annotations

import copy
from typing import Any

from transformers import CONFIG_MAPPING, AutoConfig, PreTrainedConfig

# Encoder kinds understood by the model. `timm` is an open_clip/timm ViT trunk wrapped in
# transformers' `TimmWrapperModel` (BiomedCLIP); `clip` is transformers' `CLIPVisionModel`
# (PubMedCLIP). The value is the `model_type` of the encoder's own config.
VISION_ENCODER_KINDS = {"timm": "timm_wrapper", "clip": "clip_vision_model"}

DEFAULT_IMAGE_TOKEN = "<ImageHere>"

# Task tokens of the instruction stages: the paper's `[identify]` for stage 1
# (the released code used `[grounding]`), `[vqa]` for diagnosis.
DEFAULT_TASK_TOKENS = {
    "grounding": "[identify]",
    "diagnosis": "[vqa]",
    "report": "[caption]",
    "existence": "[vqa]",
}

# OpenAI-CLIP normalisation used by both encoders in the reference code.
CLIP_IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)


def vision_config_key(name: str) -> str:
    """Config attribute holding the transformers config of vision encoder `name` (e.g. `pubmed_vision_config`)."""
    return f"{name}_vision_config"


class _SubConfigs:
    """`LiteGPTConfig.sub_configs`: the text config and one config per vision encoder.

    transformers passes `dtype` and `attn_implementation` from a composite config to the keys listed here, so every
    sub-model (language model and each tower) is built with them. The encoders are configurable, so on an instance
    the keys follow its `vision_encoders`; on the class they are the paper's two.
    """

    def __get__(self, config: "LiteGPTConfig | None", owner: type) -> dict[str, type]:
        encoders = config.__dict__.get("vision_encoders") if config is not None else None
        names = [spec["name"] for spec in (encoders if encoders is not None else paper_vision_encoders())]
        return {"text_config": AutoConfig, **{vision_config_key(name): AutoConfig for name in names}}


def vision_encoder_spec(
    name: str,
    kind: str,
    image_size: int,
    patch_size: int,
    hidden_size: int,
    config: dict[str, Any],
    num_prefix_tokens: int = 1,
    feature_layer: int = -1,
) -> dict[str, Any]:
    """One entry of `LiteGPTConfig.vision_encoders`.

    Args:
        name: module name prefix: the tower lives at `model.{name}_vision_tower`.
        kind: `"timm"` (open_clip/timm ViT trunk, e.g. BiomedCLIP) or `"clip"` (HF `CLIPVisionModel`,
            e.g. PubMedCLIP).
        image_size: square input side in pixels; all encoders share one `pixel_values` tensor.
        patch_size: ViT patch side; the encoder yields `(image_size // patch_size) ** 2` patch tokens.
        hidden_size: width of the encoder's tokens.
        config: the encoder's own transformers config as a dict (`TimmWrapperConfig` or
            `CLIPVisionConfig` fields, including `model_type`). `LiteGPTConfig` moves it to its sub-config
            `{name}_vision_config`.
        num_prefix_tokens: leading non-patch tokens (CLS) dropped from the output.
        feature_layer: `-1` takes `last_hidden_state` (after timm's final norm; before CLIP's
            `post_layernorm`), any other index takes that entry of `hidden_states`.
    """
    if kind not in VISION_ENCODER_KINDS:
        raise ValueError(f"vision encoder {name!r}: kind must be one of {sorted(VISION_ENCODER_KINDS)}, got {kind!r}")
    config = dict(config)
    config.setdefault("model_type", VISION_ENCODER_KINDS[kind])
    return {
        "name": name,
        "kind": kind,
        "image_size": image_size,
        "patch_size": patch_size,
        "hidden_size": hidden_size,
        "num_prefix_tokens": num_prefix_tokens,
        "feature_layer": feature_layer,
        "config": config,
    }


def _timm_vit_config(image_size: int, patch_size: int, hidden_size: int, depth: int, heads: int) -> dict[str, Any]:
    """`TimmWrapperConfig` fields of a ViT trunk built like BiomedCLIP's (`vit_base_patch16_224`)."""
    return {
        "model_type": "timm_wrapper",
        "architecture": "vit_base_patch16_224",
        "num_labels": 0,
        "do_pooling": False,
        "model_args": {
            "img_size": image_size,
            "patch_size": patch_size,
            "embed_dim": hidden_size,
            "depth": depth,
            "num_heads": heads,
            "global_pool": "",
        },
    }


def _clip_vision_config(image_size: int, patch_size: int, hidden_size: int, depth: int, heads: int) -> dict[str, Any]:
    """`CLIPVisionConfig` fields of a CLIP ViT built like PubMedCLIP's ViT-B/32."""
    return {
        "model_type": "clip_vision_model",
        "image_size": image_size,
        "patch_size": patch_size,
        "hidden_size": hidden_size,
        "intermediate_size": 4 * hidden_size,
        "num_hidden_layers": depth,
        "num_attention_heads": heads,
        "projection_dim": 512,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
    }


def paper_vision_encoders() -> list[dict[str, Any]]:
    """BiomedCLIP ViT-B/16 + PubMedCLIP ViT-B/32 at 224 px: 196 + 49 = 245 patch tokens of width 768."""
    return [
        vision_encoder_spec("biomed", "timm", 224, 16, 768, _timm_vit_config(224, 16, 768, 12, 12)),
        vision_encoder_spec("pubmed", "clip", 224, 32, 768, _clip_vision_config(224, 32, 768, 12, 12)),
    ]


def tiny_vision_encoders(image_size: int = 32, hidden_size: int = 32) -> list[dict[str, Any]]:
    """Same two architectures at toy size: 16 + 4 = 20 patch tokens -> 4 visual tokens (tests)."""
    return [
        vision_encoder_spec("biomed", "timm", image_size, 8, hidden_size, _timm_vit_config(image_size, 8, hidden_size, 2, 2)),
        vision_encoder_spec("pubmed", "clip", image_size, 16, hidden_size, _clip_vision_config(image_size, 16, hidden_size, 2, 2)),
    ]


def small_vision_encoders(image_size: int = 128, hidden_size: int = 192, depth: int = 2) -> list[dict[str, Any]]:
    """The paper's two architectures (timm ViT/16 + CLIP ViT/32, concatenated, grouped by 5), narrow, shallow and at
    128 px: 64 + 16 = 80 patch tokens -> 16 visual tokens of 960. The CPU preset's encoders: a third of the paper's
    49 visual tokens keeps CPU training affordable (random weights unless converted; frozen like the paper's)."""
    heads = max(1, hidden_size // 64)
    return [
        vision_encoder_spec("biomed", "timm", image_size, 16, hidden_size, _timm_vit_config(image_size, 16, hidden_size, depth, heads)),
        vision_encoder_spec("pubmed", "clip", image_size, 32, hidden_size, _clip_vision_config(image_size, 32, hidden_size, depth, heads)),
    ]


LLAMA2_7B_CHAT_TEXT_CONFIG = {
    "model_type": "llama",
    "vocab_size": 32001,  # 32000 + the added `<ImageHere>` (id 32000)
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "hidden_act": "silu",
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,  # `<unk>`: LiteGPT pads with id 0
    "tie_word_embeddings": False,
}

SMOLLM2_135M_INSTRUCT_TEXT_CONFIG = {
    "model_type": "llama",
    "vocab_size": 49153,  # 49152 + `<ImageHere>`
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_theta": 100000.0,
    "hidden_act": "silu",
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,  # `<|endoftext|>`
    "tie_word_embeddings": True,
}

TINY_TEXT_CONFIG = {
    "model_type": "llama",
    "vocab_size": 99,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
    "tie_word_embeddings": False,
}


class LiteGPTConfig(PreTrainedConfig):
    r"""Configuration of a [`LiteGPTForConditionalGeneration`].

    Sub-configs (`sub_configs`): `text_config` and, per vision encoder `name`, `{name}_vision_config` (the paper's
    `biomed_vision_config`, a `TimmWrapperConfig`, and `pubmed_vision_config`, a `CLIPVisionConfig`), so that
    `from_pretrained(..., dtype=..., attn_implementation=...)` reaches the language model and every tower.

    Args:
        vision_encoders (`list[dict]`):
            The frozen image encoders, in concatenation order (see [`vision_encoder_spec`] for the fields of
            each entry). All must share `image_size` and `hidden_size`: one `pixel_values` tensor feeds all
            of them and their patch tokens are concatenated along the sequence. An entry's `config` (the
            encoder's own config) becomes the sub-config `{name}_vision_config`; when that key is given
            (a saved config), it takes precedence.
        tokens_per_group (`int`, defaults to 5):
            How many consecutive positions of the concatenated token sequence form one LM token
            (the paper's "five adjacent tokens"). The total patch count must be divisible by it.
        vision_feature_norm (`bool`, defaults to `True`):
            Apply a parameter-free LayerNorm (the reference code's untrained `ln_vision`) to every patch
            token before grouping.
        vision_feature_norm_eps (`float`, defaults to 1e-5):
            Epsilon of that LayerNorm.
        projector_hidden_size (`int`, defaults to 5632):
            Width of the projector's hidden layer (1408 * 4, so that MiniGPT-v2's `llama_proj` fits
            `linear_2`).
        projector_hidden_act (`str`, defaults to `"gelu"`):
            Activation between the projector's two linear layers (exact GELU).
        projector_bias (`bool`, defaults to `True`):
            Whether the projector's linear layers have biases.
        projector_input_standardization (`bool`, defaults to `False`):
            Standardise every projector input feature (per visual-token position and channel) with a
            training-set mean and standard deviation held as buffers of the projector (`input_mean`,
            `input_std`; `train_sft.py` fits them on the first stage's training images). Not in the paper,
            whose projector starts from MiniGPT-v2's alignment. For freshly initialised projectors on encoders
            whose tokens share a large image-independent component, it removes that component before the
            first layer so that gradient steps change the image tokens per image rather than in common.
        text_config (`dict` or `PreTrainedConfig`):
            Config of any causal LM loadable with `AutoModel.from_config` (Llama-2-7b-chat in the paper).
        image_token (`str`, defaults to `"<ImageHere>"`):
            The placeholder token that the processor repeats once per visual token.
        image_token_id (`int`):
            Its id in the tokenizer; the embeddings at these positions are replaced by image features.
        task_tokens (`dict[str, str]`):
            Task token per instruction task (`grounding`, `diagnosis`, `report`, `existence`).
    """

    model_type = "litegpt"
    attribute_map = {"image_token_index": "image_token_id"}
    sub_configs = _SubConfigs()

    def __init__(
        self,
        vision_encoders: list[dict[str, Any]] | None = None,
        tokens_per_group: int = 5,
        vision_feature_norm: bool = True,
        vision_feature_norm_eps: float = 1e-5,
        projector_hidden_size: int = 5632,
        projector_hidden_act: str = "gelu",
        projector_bias: bool = True,
        projector_input_standardization: bool = False,
        text_config: dict[str, Any] | PreTrainedConfig | None = None,
        image_token: str = DEFAULT_IMAGE_TOKEN,
        image_token_id: int = 32000,
        task_tokens: dict[str, str] | None = None,
        tie_word_embeddings: bool | None = None,
        **kwargs,
    ):
        self.vision_encoders = copy.deepcopy(vision_encoders) if vision_encoders is not None else paper_vision_encoders()
        for spec in self.vision_encoders:
            key = vision_config_key(spec["name"])
            setattr(self, key, self._build_vision_config(spec, kwargs.pop(key, None)))
        self.tokens_per_group = tokens_per_group
        self.vision_feature_norm = vision_feature_norm
        self.vision_feature_norm_eps = vision_feature_norm_eps
        self.projector_hidden_size = projector_hidden_size
        self.projector_hidden_act = projector_hidden_act
        self.projector_bias = projector_bias
        self.projector_input_standardization = projector_input_standardization
        self.text_config = self._build_text_config(text_config)
        self.image_token = image_token
        self.image_token_id = image_token_id
        self.task_tokens = dict(task_tokens) if task_tokens is not None else dict(DEFAULT_TASK_TOKENS)
        # The LM head sits outside the language model (LLaVA layout), so tying is decided here,
        # following the LM's own setting unless given.
        if tie_word_embeddings is None:
            tie_word_embeddings = bool(getattr(self.text_config, "tie_word_embeddings", False))
        self.tie_word_embeddings = tie_word_embeddings
        super().__init__(**kwargs)
        self.validate_vision_layout()

    @staticmethod
    def _build_text_config(text_config: dict[str, Any] | PreTrainedConfig | None) -> PreTrainedConfig:
        if text_config is None:
            text_config = dict(LLAMA2_7B_CHAT_TEXT_CONFIG)
        if isinstance(text_config, PreTrainedConfig):
            return text_config
        text_config = dict(text_config)
        model_type = text_config.pop("model_type", "llama")
        if model_type not in CONFIG_MAPPING:
            raise ValueError(f"text_config: unknown model_type {model_type!r}")
        return CONFIG_MAPPING[model_type](**text_config)

    @staticmethod
    def _build_vision_config(spec: dict[str, Any], saved: dict[str, Any] | PreTrainedConfig | None) -> PreTrainedConfig:
        """The sub-config of one encoder: `saved` (from a saved config) or the spec's `config` dict, which is moved
        out of the spec so that one config exists per tower."""
        inline = spec.pop("config", None)
        if isinstance(saved, PreTrainedConfig):
            return saved
        source = saved if saved is not None else inline
        if source is None:
            raise ValueError(f"vision encoder {spec['name']!r} has no config (`config` entry or `{vision_config_key(spec['name'])}`)")
        source = dict(source)
        model_type = source.pop("model_type", VISION_ENCODER_KINDS.get(spec.get("kind")))
        if model_type not in CONFIG_MAPPING:
            raise ValueError(f"vision encoder {spec['name']!r}: unknown model_type {model_type!r}")
        return CONFIG_MAPPING[model_type](**source)

    # ------------------------------------------------------------------ derived layout
    def vision_encoder_config(self, index: int) -> PreTrainedConfig:
        """The transformers config object of encoder `index` (the sub-config its tower is built from)."""
        return getattr(self, vision_config_key(self.vision_encoders[index]["name"]))

    @property
    def vision_hidden_size(self) -> int:
        return int(self.vision_encoders[0]["hidden_size"])

    @property
    def image_size(self) -> int:
        return int(self.vision_encoders[0]["image_size"])

    @property
    def num_patch_tokens(self) -> int:
        """Patch tokens of all encoders together (CLS dropped): 196 + 49 = 245 in the paper."""
        return sum((e["image_size"] // e["patch_size"]) ** 2 for e in self.vision_encoders)

    @property
    def num_image_tokens(self) -> int:
        """LM positions per image: 245 / 5 = 49 in the paper."""
        return self.num_patch_tokens // self.tokens_per_group

    @property
    def projector_input_size(self) -> int:
        """Width of one grouped token: 5 * 768 = 3840 in the paper."""
        return self.tokens_per_group * self.vision_hidden_size

    def validate_vision_layout(self) -> None:
        """Raise a clear `ValueError` when the encoders cannot be concatenated and grouped."""
        if not self.vision_encoders:
            raise ValueError("LiteGPTConfig needs at least one vision encoder")
        names = [e["name"] for e in self.vision_encoders]
        if len(set(names)) != len(names):
            raise ValueError(f"vision encoder names must be unique, got {names}")
        for field in ("image_size", "hidden_size"):
            values = {e["name"]: e[field] for e in self.vision_encoders}
            if len(set(values.values())) != 1:
                raise ValueError(f"all vision encoders must share {field} (one pixel_values tensor, one sequence): {values}")
        for e in self.vision_encoders:
            if e["image_size"] % e["patch_size"]:
                raise ValueError(f"encoder {e['name']!r}: image_size {e['image_size']} is not a multiple of patch_size {e['patch_size']}")
            if e["kind"] == "clip":
                encoder_config = getattr(self, vision_config_key(e["name"]))
                for field in ("image_size", "patch_size", "hidden_size"):
                    if getattr(encoder_config, field) != e[field]:
                        raise ValueError(
                            f"encoder {e['name']!r}: {field}={e[field]} disagrees with its config ({getattr(encoder_config, field)})"
                        )
        if self.tokens_per_group < 1 or self.num_patch_tokens % self.tokens_per_group:
            raise ValueError(
                f"{self.num_patch_tokens} patch tokens cannot be grouped {self.tokens_per_group} at a time; "
                "choose image/patch sizes whose total token count is a multiple of tokens_per_group"
            )

    # ------------------------------------------------------------------ presets
    @classmethod
    def from_preset(cls, name: str, **overrides) -> "LiteGPTConfig":
        """Build a named configuration offline, without weights.

        * `litegpt-7b`: the paper (BiomedCLIP ViT-B/16 + PubMedCLIP ViT-B/32 at 224 -> 245 patch tokens ->
          49 visual tokens of 3840 -> projector 5632 -> Llama-2-7b-chat, 4096).
        * `litegpt-smol`: SmolLM2-135M-Instruct as LM with small encoders of the paper's architectures and token
          layout at 128 px (`small_vision_encoders`: width 192, depth 2; 16 visual tokens of 960), projector inputs
          standardised: the CPU default.
        * `tiny`: toy sizes everywhere, for tests.
        """
        presets = {
            "litegpt-7b": lambda: dict(
                vision_encoders=paper_vision_encoders(), text_config=dict(LLAMA2_7B_CHAT_TEXT_CONFIG), image_token_id=32000
            ),
            "litegpt-smol": lambda: dict(
                vision_encoders=small_vision_encoders(),
                projector_hidden_size=2304,  # 4 x SmolLM2's hidden size 576
                # Random encoders: their tokens share a large image-independent part that a fresh projector
                # would otherwise amplify (see `projector_input_standardization`); train_sft fits it.
                projector_input_standardization=True,
                text_config=dict(SMOLLM2_135M_INSTRUCT_TEXT_CONFIG),
                image_token_id=49152,
            ),
            "tiny": lambda: dict(
                vision_encoders=tiny_vision_encoders(),
                text_config=dict(TINY_TEXT_CONFIG),
                projector_hidden_size=48,
                image_token_id=98,
            ),
        }
        if name not in presets:
            raise ValueError(f"unknown LiteGPT preset {name!r}; available: {sorted(presets)}")
        kwargs = presets[name]()
        kwargs.update(overrides)
        return cls(**kwargs)


__all__ = [
    "LiteGPTConfig",
    "vision_config_key",
    "vision_encoder_spec",
    "paper_vision_encoders",
    "small_vision_encoders",
    "tiny_vision_encoders",
]
