"""Load the LiteGPT base for training, attach (or continue) the LoRA adapter, and check what trains."""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from .arguments import PAPER_LORA_MODULES, LiteGPTModelConfig, OptimisationArguments, resolve_adapter_config

logger = logging.getLogger(__name__)

VISION_TOWER_MODULES = ["biomed_vision_tower", "pubmed_vision_tower"]
DTYPES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_base_model(
    model_args: LiteGPTModelConfig, opt: OptimisationArguments, gradient_checkpointing: bool = False
) -> torch.nn.Module:
    """`AutoModelForImageTextToText` with the base's remote code; LM optionally 8/4-bit; encoders frozen."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    kwargs: dict[str, Any] = {"trust_remote_code": True, "revision": model_args.model_revision}
    kwargs["dtype"] = DTYPES[model_args.dtype]
    if model_args.attn_implementation:
        kwargs["attn_implementation"] = model_args.attn_implementation
    bits = model_args.quantization_bits
    if bits:
        from accelerate import PartialState

        from modeling_litegpt import bnb_quantization_config

        config = AutoConfig.from_pretrained(model_args.model_name_or_path, **kwargs)
        compute_dtype = kwargs["dtype"] if isinstance(kwargs["dtype"], torch.dtype) else torch.float32
        kwargs["quantization_config"] = bnb_quantization_config(
            config, bits=bits, compute_dtype=compute_dtype, quant_type=model_args.bnb_4bit_quant_type,
            double_quant=model_args.use_bnb_nested_quant,
        )  # fmt: skip
        # One full copy per process (DDP); bitsandbytes weights cannot be moved after loading.
        kwargs["device_map"] = {"": PartialState().local_process_index if torch.cuda.is_available() else "cpu"}
    model = AutoModelForImageTextToText.from_pretrained(model_args.model_name_or_path, **kwargs)
    model.freeze_vision()  # loading resets requires_grad; from_pretrained also does it
    if bits:
        from peft import prepare_model_for_kbit_training

        # Freezes everything, upcasts the non-quantised modules (towers, projector, head) to fp32.
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    if opt.train_vision_towers:
        model.freeze_vision(False)
    return model


@torch.no_grad()
def fit_projector_input_standardization(
    model: torch.nn.Module,
    processor: Any,
    images: Iterable[Sequence[Any]],
    total: int | None = None,
    batch_size: int = 16,
    show_progress: bool = True,
) -> int:
    """Set the projector's input standardization to the mean / std of the projector inputs of `images`.

    `images` holds one list of images per training row. The statistics are streamed (float64 sums), so the paper's
    15,000 images need no more memory than one batch. Returns the number of images seen.
    """
    from .feature_cache import litegpt_backbone, processed_pixel_batches

    backbone = litegpt_backbone(model)
    projector = backbone.multi_modal_projector
    device = next(projector.parameters()).device
    count, total_sum, total_squares = 0, 0.0, 0.0
    for pixel_values in processed_pixel_batches(
        processor, images, batch_size, total, "fitting projector input standardization", show_progress
    ):
        features = backbone.get_projector_inputs(pixel_values.to(device)).double()
        count += features.shape[0]
        total_sum = total_sum + features.sum(0)
        total_squares = total_squares + features.square().sum(0)
    if count < 2:
        raise ValueError(f"fitting the projector input standardization needs at least 2 training images, got {count}")
    mean = total_sum / count
    variance = ((total_squares - count * mean.square()) / (count - 1)).clamp_min(0.0)
    projector.set_input_standardization(mean.float(), variance.sqrt().float())
    logger.info("projector input standardization fitted on %d training images", count)
    return count


def lora_config_for(model_args: LiteGPTModelConfig, opt: OptimisationArguments, base_model_name_or_path: str):
    """The paper's LoRA (q/v of the LM, r/alpha/dropout from the config), projector (and demo towers) in full."""
    from modeling_litegpt import LiteGPTForConditionalGeneration

    config = LiteGPTForConditionalGeneration.lora_config(
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        train_projector=opt.train_projector,
        base_model_name_or_path=base_model_name_or_path,
        use_rslora=model_args.use_rslora,
        use_dora=model_args.use_dora,
    )
    if tuple(model_args.lora_target_modules) != PAPER_LORA_MODULES:
        config.target_modules = language_model_lora_targets(model_args.lora_target_modules)
    if opt.train_vision_towers:
        config.modules_to_save = list(config.modules_to_save or []) + VISION_TOWER_MODULES
    return config


def language_model_lora_targets(module_names: Sequence[str]) -> str:
    """PEFT `target_modules` regex (full match) for these projections of the LM's decoder layers only.

    A plain list such as `["q_proj", "v_proj"]` would suffix-match the CLIP encoder's attention too.
    """
    return r".*\.language_model\.layers\.\d+\.(self_attn|mlp)\.(" + "|".join(sorted(module_names)) + ")"


def attach_adapter(
    model: torch.nn.Module, model_args: LiteGPTModelConfig, opt: OptimisationArguments, init_from: str | None
):
    """A trainable `PeftModel`: continued from `init_from` (checked against the base first) or a fresh LoRA."""
    from peft import PeftModel, get_peft_model

    if init_from:
        check_adapter_matches_base(init_from, model, revision=None)
        model = PeftModel.from_pretrained(model, init_from, is_trainable=True)
        logger.info("continuing the adapter of %s", init_from)
    else:
        model = get_peft_model(model, lora_config_for(model_args, opt, model_args.model_name_or_path))
    if opt.train_vision_towers:
        for name, param in model.named_parameters():
            if any(f"{tower}.modules_to_save" in name for tower in VISION_TOWER_MODULES):
                param.requires_grad_(True)
    check_trainable_parameters(model, allow_towers=opt.train_vision_towers)
    return model


def parameter_role(name: str) -> str:
    """Role of a parameter by its name: lora, projector, vision (demo only) or other (never expected to train)."""
    if ".lora_" in name:
        return "lora"
    if "multi_modal_projector" in name:
        return "projector"
    if "vision_tower" in name:
        return "vision"
    return "other"


def trainable_parameter_groups(model: torch.nn.Module) -> Counter:
    """Trainable parameter counts by `parameter_role`."""
    groups: Counter = Counter()
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups[parameter_role(name)] += param.numel()
    return groups


def check_trainable_parameters(model: torch.nn.Module, allow_towers: bool = False) -> Counter:
    """Only LoRA and the projector train (plus the towers in the demo-only setting); anything else is a bug."""
    groups = trainable_parameter_groups(model)
    if groups["other"]:
        names = [n for n, p in model.named_parameters() if p.requires_grad and parameter_role(n) == "other"]
        raise RuntimeError(f"unexpected trainable parameters (the LM base must stay frozen): {names[:5]}")
    if groups["vision"] and not allow_towers:
        raise RuntimeError("vision tower parameters are trainable although train_vision_towers is off")
    if not groups["lora"]:
        raise RuntimeError("no LoRA parameter is trainable: check the adapter's target_modules")
    logger.info("trainable parameters: %s", dict(groups))
    return groups


# ----------------------------------------------------------------------------------------- adapter checks
def _adapter_weight_shapes(adapter: str, revision: str | None = None) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    path = Path(adapter) / "adapter_model.safetensors"
    if not path.is_file():
        from huggingface_hub import hf_hub_download

        path = Path(hf_hub_download(adapter, "adapter_model.safetensors", revision=revision))
    with safe_open(str(path), framework="pt") as f:
        return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}


def check_adapter_matches_base(adapter: str, model: torch.nn.Module, revision: str | None = None) -> None:
    """Raise `ValueError` when an adapter was trained on another base (other sizes, layers or modules).

    Every LoRA matrix must sit on an existing layer with matching in/out features, every fully saved module
    (projector) must have the base's parameter and buffer shapes. PEFT itself would fail later, mid-load, or not at all
    when only `modules_to_save` differ.
    """
    config = resolve_adapter_config(adapter, what="adapter", revision=revision)
    if config.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"adapter {adapter} is a {config.get('peft_type')} adapter; LiteGPT trains LoRA")
    modules = dict(model.named_modules())
    # Fully saved modules carry their buffers too (the projector's input standardization).
    tensors = {name: tuple(t.shape) for name, t in [*model.named_parameters(), *model.named_buffers()]}
    problems = []
    for key, shape in _adapter_weight_shapes(adapter, revision).items():
        name = key.removeprefix("base_model.model.")
        lora = re.match(r"(.+)\.lora_([AB])(?:\.[^.]+)?\.weight$", name)
        if lora:
            module = modules.get(lora.group(1))
            if module is None:
                problems.append(f"{lora.group(1)} does not exist in the base")
                continue
            expected = getattr(module, "in_features", None) if lora.group(2) == "A" else getattr(module, "out_features", None)
            got = shape[1] if lora.group(2) == "A" else shape[0]
            if expected is not None and expected != got:
                problems.append(f"{key}: {got} features, the base's {lora.group(1)} has {expected}")
            continue
        name = re.sub(r"\.modules_to_save\.[^.]+\.", ".", name).replace(".original_module.", ".")
        if name not in tensors:
            problems.append(f"{key}: no parameter or buffer {name} in the base")
        elif tensors[name] != shape and not _quantized_shape_ok(tensors[name], shape):
            problems.append(f"{key}: shape {shape}, the base's is {tensors[name]}")
        if len(problems) >= 5:
            break
    if problems:
        raise ValueError(
            f"adapter {adapter} (trained on {config.get('base_model_name_or_path')!r}) does not fit this base:\n  "
            + "\n  ".join(problems)
        )


def _quantized_shape_ok(base_shape: tuple[int, ...], adapter_shape: tuple[int, ...]) -> bool:
    """4-bit weights are stored packed; their logical shape cannot be compared here."""
    return len(base_shape) == 2 and base_shape[1] == 1


__all__ = [
    "VISION_TOWER_MODULES",
    "attach_adapter",
    "check_adapter_matches_base",
    "check_trainable_parameters",
    "language_model_lora_targets",
    "load_base_model",
    "lora_config_for",
    "parameter_role",
    "trainable_parameter_groups",
]
