"""PyTorch LiteGPT, laid out like transformers' LLaVA.

`LiteGPTForConditionalGeneration` holds the backbone at `self.model` (vision towers, projector,
language model) and the LM head outside it, because TRL's loss path reads `last_hidden_state`
from the `base_model_prefix` submodule and the head from `get_output_embeddings()`.

Image path: every tower sees the same `pixel_values`; each drops its CLS token;
the patch tokens are concatenated along the sequence (first encoder first), normalised by a
parameter-free LayerNorm, and every `tokens_per_group` consecutive positions become one
`tokens_per_group * hidden` vector, projected to the LM width and scattered into
`inputs_embeds` at the `<ImageHere>` positions.

Shipped as remote code next to the weights: imports only torch, transformers and sibling files.
"""

from dataclasses import dataclass
from typing import Unpack

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, BitsAndBytesConfig, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPast, BaseModelOutputWithPooling, ModelOutput
from transformers.utils import TransformersKwargs, can_return_tuple

try:
    from .configuration_litegpt import LiteGPTConfig
except ImportError:  # imported as a plain module (tests, repo scripts)
    from configuration_litegpt import LiteGPTConfig


@dataclass
class LiteGPTModelOutputWithPast(BaseModelOutputWithPast):
    """`BaseModelOutputWithPast` plus the projected image features (`(num_images, num_image_tokens, hidden)`)."""

    image_hidden_states: torch.Tensor | None = None


@dataclass
class LiteGPTCausalLMOutputWithPast(ModelOutput):
    """Causal-LM output with the projected image features."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    past_key_values: Cache | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    image_hidden_states: torch.Tensor | None = None


class LiteGPTMultiModalProjector(nn.Module):
    """`Linear(tokens_per_group * vision_hidden, projector_hidden) -> GELU -> Linear(projector_hidden, lm_hidden)`.

    In the paper 3840 -> 5632 -> 4096; `linear_2` takes MiniGPT-v2's `llama_proj` at conversion.

    With `config.projector_input_standardization`, inputs are first standardised with the fixed buffers
    `input_mean` / `input_std` of shape `(num_image_tokens, projector_input_size)` (identity until fitted).
    """

    def __init__(self, config: LiteGPTConfig):
        super().__init__()
        self.standardize_inputs = config.projector_input_standardization
        if self.standardize_inputs:
            shape = (config.num_image_tokens, config.projector_input_size)
            self.register_buffer("input_mean", torch.zeros(shape))
            self.register_buffer("input_std", torch.ones(shape))
        self.linear_1 = nn.Linear(config.projector_input_size, config.projector_hidden_size, bias=config.projector_bias)
        self.act = ACT2FN[config.projector_hidden_act]
        self.linear_2 = nn.Linear(config.projector_hidden_size, config.text_config.hidden_size, bias=config.projector_bias)

    @torch.no_grad()
    def set_input_standardization(self, mean: torch.Tensor, std: torch.Tensor, min_std: float = 1e-3) -> None:
        """Set `input_mean` / `input_std`, each `(num_image_tokens, projector_input_size)`.

        `min_std` floors the deviation so that a feature constant over the fitting images is not blown up.
        """
        if not self.standardize_inputs:
            raise ValueError("this projector was built with projector_input_standardization=False")
        for name, value in (("mean", mean), ("std", std)):
            if tuple(value.shape) != tuple(self.input_mean.shape):
                raise ValueError(f"input {name} of shape {tuple(value.shape)}, expected {tuple(self.input_mean.shape)}")
            if not torch.isfinite(value).all():
                raise ValueError(f"input {name} has non-finite values")
        self.input_mean.copy_(mean.to(self.input_mean.device, torch.float32))
        self.input_std.copy_(std.to(self.input_std.device, torch.float32).clamp_min(min_std))

    def forward(self, grouped_features: torch.Tensor) -> torch.Tensor:
        if self.standardize_inputs:
            grouped_features = (grouped_features - self.input_mean.to(grouped_features.dtype)) / self.input_std.to(grouped_features.dtype)
        return self.linear_2(self.act(self.linear_1(grouped_features)))


def group_patch_tokens(patch_tokens: torch.Tensor, tokens_per_group: int) -> torch.Tensor:
    """`(B, N, D) -> (B, N / g, g * D)`: every `g` consecutive sequence positions become one vector.

    Groups are taken along the concatenated sequence, not as spatial blocks, so they cross raster
    rows and encoder boundaries exactly as the reference code's `reshape` does.
    """
    batch, num_tokens, width = patch_tokens.shape
    if num_tokens % tokens_per_group:
        raise ValueError(f"{num_tokens} patch tokens cannot be grouped {tokens_per_group} at a time")
    return patch_tokens.reshape(batch, num_tokens // tokens_per_group, tokens_per_group * width)


# LoRA on the language model's q/v projections only (the paper's r = 64 on W_q, W_v). A string is `re.fullmatch`ed by
# PEFT; the list ["q_proj", "v_proj"] would suffix-match PubMedCLIP's attention too.
LORA_TARGET_MODULES = r".*\.language_model\.layers\.\d+\.self_attn\.(q_proj|v_proj)"


def non_quantized_modules(config: LiteGPTConfig) -> list[str]:
    """Full module paths that bitsandbytes must leave in float: every tower, the projector and the LM head.

    transformers matches a skip entry from the start of the module path or as a suffix of it, so a
    bare `"multi_modal_projector"` (the short names one would first write) does not protect
    `model.multi_modal_projector.linear_1`: the entries must be full prefixes.
    """
    towers = [f"model.{spec['name']}_vision_tower" for spec in config.vision_encoders]
    return [*towers, "model.multi_modal_projector", "lm_head"]


def bnb_quantization_config(
    config: LiteGPTConfig,
    bits: int,
    compute_dtype: torch.dtype = torch.bfloat16,
    quant_type: str = "nf4",
    double_quant: bool = True,
) -> BitsAndBytesConfig:
    """`BitsAndBytesConfig` quantising the language model only: 8-bit as in the paper, or 4-bit (`quant_type`, default
    nf4, with double quantisation by default, as the reference code's 4-bit option)."""
    skip = non_quantized_modules(config)
    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    if bits == 4:
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=quant_type,
            bnb_4bit_use_double_quant=double_quant,
            bnb_4bit_compute_dtype=compute_dtype,
            llm_int8_skip_modules=skip,
        )
    raise ValueError(f"bits must be 4 or 8, got {bits}")


def _continues_a_cache(past_key_values: Cache | None) -> bool:
    """True when this pass extends a non-empty KV cache, i.e. it reads tokens after the prompt."""
    return past_key_values is not None and past_key_values.get_seq_length() > 0


class LiteGPTPreTrainedModel(PreTrainedModel):
    config_class = LiteGPTConfig
    config: LiteGPTConfig
    base_model_prefix = "model"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _skip_keys_device_placement = ["past_key_values"]
    _no_split_modules = ["LlamaDecoderLayer", "CLIPEncoderLayer", "TimmWrapperModel"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, LiteGPTMultiModalProjector) and module.standardize_inputs:
            # Unfitted standardization is the identity (also for checkpoints saved without it).
            init.zeros_(module.input_mean)
            init.ones_(module.input_std)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """Load as usual, then re-freeze the vision towers: loading resets `requires_grad`."""
        model = super().from_pretrained(*args, **kwargs)
        base = model.model if hasattr(model, "model") and isinstance(model.model, LiteGPTModel) else model
        if isinstance(base, LiteGPTModel):
            base.freeze_vision()
        return model


class LiteGPTModel(LiteGPTPreTrainedModel):
    """Vision towers + parameter-free token norm + projector + language model, without LM head."""

    # The towers and the projector stay in float: bitsandbytes never quantises them (a plain
    # `BitsAndBytesConfig(load_in_8bit=True)` quantises the language model only, as in the paper) and a float16
    # load keeps them in float32. Entries are module-path patterns, as transformers matches them.
    _keep_in_fp32_modules = ["multi_modal_projector", r"\w+_vision_tower"]

    def __init__(self, config: LiteGPTConfig):
        super().__init__(config)
        self.vision_tower_names = []
        for index, spec in enumerate(config.vision_encoders):
            name = f"{spec['name']}_vision_tower"
            self.add_module(name, AutoModel.from_config(config.vision_encoder_config(index)))
            self.vision_tower_names.append(name)
        self.multi_modal_projector = LiteGPTMultiModalProjector(config)
        self.language_model = AutoModel.from_config(config.text_config)
        self.freeze_vision()
        self.post_init()

    # ------------------------------------------------------------------ embeddings
    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    # ------------------------------------------------------------------ vision
    @property
    def vision_towers(self) -> list[nn.Module]:
        return [getattr(self, name) for name in self.vision_tower_names]

    def freeze_vision(self, frozen: bool = True) -> None:
        """Freeze (or, for demo-only encoder training, unfreeze) every vision tower."""
        for tower in self.vision_towers:
            tower.requires_grad_(not frozen)
            if frozen:
                tower.eval()

    def train(self, mode: bool = True):
        """Keep frozen towers in eval mode (no dropout) while the rest trains, as the reference code does."""
        super().train(mode)
        for tower in self.vision_towers:
            if not any(p.requires_grad for p in tower.parameters()):
                tower.eval()
        return self

    def _run_tower(
        self, tower: nn.Module, spec: dict, pixel_values: torch.Tensor, output_hidden_states: bool, output_attentions: bool
    ) -> tuple[torch.Tensor, tuple | None, tuple | None]:
        """Patch tokens of one encoder `(B, num_patches, D)` (CLS/prefix tokens dropped), with its hidden states and
        attentions when asked (timm towers cannot return attentions: theirs stay `None`)."""
        tower_dtype = next(tower.parameters()).dtype
        layer = spec.get("feature_layer", -1)
        outputs = tower(
            pixel_values=pixel_values.to(tower_dtype),
            output_hidden_states=output_hidden_states or layer != -1,
            output_attentions=output_attentions and spec["kind"] != "timm",
            return_dict=True,
        )
        hidden = outputs.last_hidden_state if layer == -1 else outputs.hidden_states[layer]
        num_patches = (spec["image_size"] // spec["patch_size"]) ** 2
        prefix = spec.get("num_prefix_tokens", 1)
        if hidden.shape[1] != prefix + num_patches:
            raise ValueError(
                f"vision encoder {spec['name']!r} returned {hidden.shape[1]} tokens, expected {prefix} prefix + "
                f"{num_patches} patch tokens for image_size {spec['image_size']} / patch {spec['patch_size']}"
            )
        hidden_states = tuple(outputs.hidden_states) if output_hidden_states else None
        attentions = getattr(outputs, "attentions", None) if output_attentions else None
        return hidden[:, prefix:], hidden_states, tuple(attentions) if attentions is not None else None

    def _vision_tokens(
        self, pixel_values: torch.Tensor, output_hidden_states: bool = False, output_attentions: bool = False
    ) -> tuple[torch.Tensor, tuple | None, tuple | None]:
        """The towers' patch tokens concatenated in config order and normalised, `(B, num_patch_tokens, D)`, with
        every tower's hidden states / attentions, towers one after the other, when asked."""
        expected = (self.config.image_size, self.config.image_size)
        if tuple(pixel_values.shape[-2:]) != expected:
            raise ValueError(f"pixel_values of spatial size {tuple(pixel_values.shape[-2:])}, the encoders expect {expected}")
        towers_trainable = any(p.requires_grad for tower in self.vision_towers for p in tower.parameters())
        with torch.set_grad_enabled(towers_trainable and torch.is_grad_enabled()):
            runs = [
                self._run_tower(tower, spec, pixel_values, output_hidden_states, output_attentions)
                for tower, spec in zip(self.vision_towers, self.config.vision_encoders)
            ]
            tokens = torch.cat([patch_tokens for patch_tokens, _, _ in runs], dim=1)
            if self.config.vision_feature_norm:
                # The reference's `ln_vision` is never loaded nor trained: a non-affine LayerNorm, in fp32.
                tokens = F.layer_norm(tokens.float(), (tokens.shape[-1],), eps=self.config.vision_feature_norm_eps)
        hidden_states = sum((states for _, states, _ in runs), ()) if output_hidden_states else None
        attentions = sum((maps for _, _, maps in runs if maps is not None), ()) if output_attentions else None
        return tokens, hidden_states, attentions

    def get_projector_inputs(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Grouped, normalised patch tokens `(B, num_image_tokens, projector_input_size)`.

        Depends only on the frozen towers, so it can be cached per image and fed back through
        `get_image_features(projector_inputs=...)`.
        """
        tokens, _, _ = self._vision_tokens(pixel_values)
        return group_patch_tokens(tokens, self.config.tokens_per_group)

    @can_return_tuple
    def get_image_features(
        self,
        pixel_values: torch.Tensor | None = None,
        projector_inputs: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
    ) -> BaseModelOutputWithPooling:
        """Image features from pixels or from cached projector inputs, as a `BaseModelOutputWithPooling`:

        * `pooler_output` `(B, num_image_tokens, lm_hidden)`: the projected features the model scatters into the
          language model's input at the image tokens;
        * `last_hidden_state` `(B, num_patch_tokens, vision_hidden)`: the towers' patch tokens, concatenated in
          config order and normalised (what the projector groups `tokens_per_group` at a time);
        * `hidden_states` / `attentions` (`output_hidden_states` / `output_attentions`, default from the config):
          every tower's, towers one after the other in config order (a timm tower gives one hidden state per block
          and no attentions; a CLIP tower the embeddings plus one per layer, and its attentions). `None` from
          cached projector inputs, which skip the towers.

        `return_dict=False` gives the tuple of the non-`None` fields.
        """
        output_hidden_states = self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        hidden_states = attentions = None
        if projector_inputs is None:
            if pixel_values is None:
                raise ValueError("get_image_features needs pixel_values or projector_inputs")
            tokens, hidden_states, attentions = self._vision_tokens(pixel_values, output_hidden_states, output_attentions)
            projector_inputs = group_patch_tokens(tokens, self.config.tokens_per_group)
        else:
            tokens = projector_inputs.reshape(projector_inputs.shape[0], -1, self.config.vision_hidden_size)
        projector_dtype = self.multi_modal_projector.linear_1.weight.dtype
        if not projector_dtype.is_floating_point:  # quantised projector weights are never expected, but be explicit
            projector_dtype = torch.float32
        features = self.multi_modal_projector(projector_inputs.to(projector_dtype))
        return BaseModelOutputWithPooling(
            last_hidden_state=tokens, pooler_output=features, hidden_states=hidden_states, attentions=attentions
        )

    def get_placeholder_mask(self, input_ids: torch.LongTensor | None, inputs_embeds: torch.Tensor, image_features: torch.Tensor):
        """Boolean mask of the image-token positions, checked against the number of image features."""
        if input_ids is None:
            image_embedding = self.get_input_embeddings()(
                torch.tensor(self.config.image_token_id, dtype=torch.long, device=inputs_embeds.device)
            )
            special_image_mask = (inputs_embeds == image_embedding).all(-1)
        else:
            special_image_mask = input_ids == self.config.image_token_id
        n_image_tokens = int(special_image_mask.sum())
        n_image_features = image_features.shape[0] * image_features.shape[1]
        if n_image_tokens != n_image_features:
            raise ValueError(
                f"Image features and image tokens do not match, tokens: {n_image_tokens}, features: {n_image_features}"
            )
        return special_image_mask.unsqueeze(-1).expand_as(inputs_embeds).to(inputs_embeds.device)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        projector_inputs: torch.Tensor | None = None,
        use_cache: bool | None = None,
        image_sizes: list | torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> LiteGPTModelOutputWithPast:
        """Language-model hidden states with the image features placed at the image tokens.

        Image features replace the image tokens of a pass that reads the prompt. In a pass that continues a KV cache
        (every decoding step), an image token id is an ordinary token with its own embedding: the image is already
        in the cache, and the model may emit the id (the shipped generation config suppresses it). `image_sizes`
        (the processor's `return_image_sizes=True`) is accepted and unused: every image is squash-resized to the
        encoders' input size, its original size matters only to map boxes back (`post_process_grounding`).
        """
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if pixel_values is not None and projector_inputs is not None:
            raise ValueError("Pass pixel_values or projector_inputs, not both")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)

        image_features = None
        if pixel_values is not None or projector_inputs is not None:
            image_features = self.get_image_features(
                pixel_values=pixel_values,
                projector_inputs=projector_inputs,
                output_hidden_states=False,
                output_attentions=False,
                return_dict=True,
            ).pooler_output
            image_features = image_features.to(inputs_embeds.device, inputs_embeds.dtype)
            mask = self.get_placeholder_mask(input_ids, inputs_embeds, image_features)
            inputs_embeds = inputs_embeds.masked_scatter(mask, image_features)
        elif (
            input_ids is not None
            and not _continues_a_cache(past_key_values)
            and bool((input_ids == self.config.image_token_id).any())
        ):
            # A prompt's placeholders without an image would otherwise reach the LM silently as a learned token.
            raise ValueError("input_ids contain image tokens but neither pixel_values nor projector_inputs were given")

        outputs = self.language_model(
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            return_dict=True,
            **kwargs,
        )
        return LiteGPTModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_hidden_states=image_features,
        )


class LiteGPTForConditionalGeneration(LiteGPTPreTrainedModel, GenerationMixin):
    """LiteGPT with its LM head: `AutoModelForImageTextToText`, `AutoModelForCausalLM` and `AutoModel` target."""

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}
    _tp_plan = {"lm_head": "colwise_gather_output"}
    # As in `LiteGPTModel`, with this class's module paths (bitsandbytes matches from the start of a path).
    _keep_in_fp32_modules = ["model.multi_modal_projector", r"model\.\w+_vision_tower"]

    def __init__(self, config: LiteGPTConfig):
        super().__init__(config)
        self.model = LiteGPTModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    @classmethod
    def lora_config(
        cls,
        r: int = 64,
        lora_alpha: int = 16,
        lora_dropout: float = 0.05,
        train_projector: bool = True,
        **kwargs,
    ):
        """The paper's LoRA as a `peft.LoraConfig`: rank `r` (64) on the language model's q/v projections only
        (`LORA_TARGET_MODULES`, a regex: PEFT suffix-matches a list such as `["q_proj", "v_proj"]`, which would
        also wrap PubMedCLIP's attention), alpha 16 and dropout 0.05 as in the reference code, and the projector
        trained in full (`modules_to_save`; a plain LoRA config leaves it frozen). `kwargs` go to `LoraConfig`.
        """
        try:  # inside `try`, transformers' remote-code loader does not make PEFT a requirement of loading the model
            from peft import LoraConfig
        except ImportError as err:
            raise ImportError("LiteGPT's LoRA configuration needs PEFT: `pip install peft`") from err

        return LoraConfig(
            r=r,
            lora_alpha=lora_alpha,
            lora_dropout=lora_dropout,
            bias="none",
            task_type="CAUSAL_LM",
            target_modules=LORA_TARGET_MODULES,
            modules_to_save=["multi_modal_projector"] if train_projector else None,
            **kwargs,
        )

    def set_output_embeddings(self, new_embeddings: nn.Module) -> None:
        self.lm_head = new_embeddings

    def freeze_vision(self, frozen: bool = True) -> None:
        self.model.freeze_vision(frozen)

    def get_image_features(
        self,
        pixel_values: torch.Tensor | None = None,
        projector_inputs: torch.Tensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling | tuple:
        """See `LiteGPTModel.get_image_features` (`output_hidden_states`, `output_attentions`, `return_dict`)."""
        return self.model.get_image_features(pixel_values=pixel_values, projector_inputs=projector_inputs, **kwargs)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        projector_inputs: torch.Tensor | None = None,
        image_sizes: list | torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> LiteGPTCausalLMOutputWithPast:
        """Logits (and the loss with `labels`); see `LiteGPTModel.forward` for the image inputs and `image_sizes`."""
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            projector_inputs=projector_inputs,
            use_cache=use_cache,
            return_dict=True,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        slice_indices = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, slice_indices, :])

        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs)

        return LiteGPTCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_hidden_states=outputs.image_hidden_states,
        )

    def prepare_inputs_for_generation(
        self, input_ids, pixel_values=None, projector_inputs=None, past_key_values=None, is_first_iteration=False, **kwargs
    ):
        """Pass the image to every pass that reads the prompt: the prefill, each step without a cache, and an assistant
        model's first pass (assisted decoding calls it with `is_first_iteration=False` and an empty cache). Passes
        that continue a cache get no image: it is in the cache."""
        model_inputs = super().prepare_inputs_for_generation(
            input_ids, past_key_values=past_key_values, is_first_iteration=is_first_iteration, **kwargs
        )
        if is_first_iteration or not kwargs.get("use_cache", True) or not _continues_a_cache(past_key_values):
            model_inputs["pixel_values"] = pixel_values
            model_inputs["projector_inputs"] = projector_inputs
        return model_inputs


__all__ = [
    "LORA_TARGET_MODULES",
    "LiteGPTForConditionalGeneration",
    "LiteGPTModel",
    "LiteGPTPreTrainedModel",
    "bnb_quantization_config",
    "group_patch_tokens",
    "non_quantized_modules",
]
