"""Build a full LiteGPT base checkpoint from the real upstream checkpoints (docs/design.md, "Architecture").

Over 600 lines, on purpose: the whole conversion of the four upstream checkpoints stays in this one script (reading
each upstream format, mapping its keys, checking the converted towers against the source models, writing the
manifest), because it is the only code that imports open_clip and reads pickled upstream files, both kept out of the
installed packages and of the shipped model code.

Inputs, in their upstream on-disk formats:

* ``--biomedclip DIR``: BiomedCLIP in open_clip hub format (``open_clip_config.json`` +
  ``open_clip_pytorch_model.bin``). ``visual.trunk.*`` becomes ``timm_model.*`` of the
  ``TimmWrapperModel`` at ``model.biomed_vision_tower``; the encoder spec (timm architecture, image
  size, patch size, width, depth, heads) is read from ``vision_cfg`` and the weights. Text tower,
  ``visual.head.*`` (the 768->512 CLIP projection) and ``logit_scale`` are ignored and counted.
* ``--pubmedclip DIR``: PubMedCLIP as a transformers ``CLIPModel`` folder (``config.json`` +
  ``pytorch_model.bin``). Its ``vision_config`` is copied (``quick_gelu``); ``vision_model.*`` goes to
  the ``CLIPVisionModel`` at ``model.pubmed_vision_tower`` (whose transformers-5 keys have no
  ``vision_model.`` prefix: ``embeddings.*``, ``encoder.*``, ``pre_layrnorm.*``, ``post_layernorm.*``).
* ``--llm DIR_OR_ID``: Llama-2-7b-chat in HF format (``AutoModelForCausalLM`` + ``AutoTokenizer``).
  The tokenizer gains ``<ImageHere>`` and the embeddings / LM head are resized once, in
  ``assemble_litegpt``.
* ``--minigptv2 checkpoint_stage3.pth`` (optional): ``llama_proj`` -> ``multi_modal_projector.linear_2``;
  its old-peft LoRA on ``q_proj``/``v_proj`` -> ``OUT/minigptv2_init_adapter/`` (a PEFT adapter with the paper's
  ``LiteGPTForConditionalGeneration.lora_config()``; the projector is stored there too, as ``modules_to_save``).
  EVA ViT, Q-Former and any other keys are ignored and counted.

``multi_modal_projector.linear_1`` is new: it is PyTorch's default ``nn.Linear`` init under a fixed
seed, i.e. exactly ``torch.manual_seed(seed); linear_1 = torch.nn.Linear(in, hidden)`` in float32
(``seed`` = ``--seed``, default 0). Without ``--minigptv2``, ``linear_2`` is the ``nn.Linear`` built
right after it from the same generator. Both are then cast to ``--dtype``.

Pickled inputs (``.bin`` / ``.pth``) are read only with ``torch.load(..., weights_only=True)``; the
output holds safetensors only (written by ``save_litegpt``) plus ``conversion_manifest.json``
(inputs, sha256 hashes, key counts, ignored key prefixes, parity results, warnings).

Parity: before saving, the converted towers are run against the originals (open_clip's
``TimmModel.trunk.forward_features`` and transformers' ``CLIPModel.vision_model``) on random
pixels; conversion fails if they differ (``check_tower_parity``, also used by the tests).
open_clip is imported only there, never by the remote-code files.

Non-standard input (tests only): open_clip's ``timm_model_name`` cannot describe a toy ViT, so
``vision_cfg`` may carry an optional ``timm_model_kwargs`` dict (e.g. ``{"patch_size": 8,
"embed_dim": 32, "depth": 2, "num_heads": 2}``) passed to ``timm.create_model`` on top of the named
architecture. The real BiomedCLIP config has none and converts from plain ``vit_base_patch16_224``.

Command line::

    python -m scripts.convert_litegpt --biomedclip BiomedCLIP-PubMedBERT_256-vit_base_patch16_224 \\
        --pubmedclip pubmed-clip-vit-base-patch32 --llm meta-llama/Llama-2-7b-chat-hf \\
        --minigptv2 checkpoint_stage3.pth --out checkpoints/litegpt-7b-base --dtype float16

Memory: with ``--dtype float16`` the model is built directly in float16 (about 2 bytes/parameter,
plus the source LM in its stored dtype); without ``--dtype`` everything is float32.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import json
import logging
import pickle
import re
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from configuration_litegpt import CLIP_IMAGE_MEAN, CLIP_IMAGE_STD, LiteGPTConfig, vision_encoder_spec
from litegpt_eval.manifest import package_versions, sha256_file
from litegpt_train.base import assemble_litegpt, save_litegpt
from modeling_litegpt import LiteGPTForConditionalGeneration

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------- constants
# Libraries whose versions the conversion manifest records.
CONVERSION_PACKAGES = ("torch", "transformers", "timm", "peft", "open_clip_torch", "safetensors")
OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
INIT_ADAPTER_DIRNAME = "minigptv2_init_adapter"
MANIFEST_NAME = "conversion_manifest.json"

# A string is re.fullmatch'ed by PEFT; a list would suffix-match PubMedCLIP's attention too.

# MiniGPT-v2 (old peft, no adapter name; newer peft would insert `.default`).
MINIGPTV2_LORA_KEY = re.compile(
    r"llama_model\.base_model\.model\.model\.layers\.(\d+)\.self_attn\.(q_proj|v_proj)"
    r"\.lora_(A|B)(?:\.default)?\.weight"
)
MINIGPTV2_PROJ_KEYS = ("llama_proj.weight", "llama_proj.bias")

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# The CLIP vision fields that define the architecture (same set as the `litegpt-7b` preset writes).
CLIP_VISION_FIELDS = (
    "image_size",
    "patch_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "projection_dim",
    "hidden_act",
    "layer_norm_eps",
)


# ---------------------------------------------------------------------------------------------- file helpers
def load_torch_file(path: str | Path) -> Any:
    """`torch.load` restricted to tensors and plain containers (never arbitrary pickles)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"{path}: refusing to unpickle non-tensor objects (torch.load(weights_only=True) failed). "
            f"Re-save the state dict with plain tensors/containers. Original error: {error}"
        ) from error


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = load_torch_file(path)
    if not isinstance(state, Mapping):
        raise TypeError(f"{path}: expected a state dict, got {type(state).__name__}")
    return dict(state)


def _first_existing(folder: Path, names: tuple[str, ...]) -> Path:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"{folder}: none of {list(names)} found")


def _prefix_counts(keys: list[str], depth: int = 1) -> dict[str, int]:
    """Ignored keys counted by their first `depth` dotted components (buffers named `position_ids` apart)."""

    def prefix(key: str) -> str:
        head = ".".join(key.split(".")[:depth])
        return f"{head}.*.position_ids" if key.endswith(".position_ids") else head

    return dict(sorted(Counter(prefix(k) for k in keys).items()))


# ---------------------------------------------------------------------------------------------- BiomedCLIP
@dataclass
class OpenClipVision:
    """BiomedCLIP's image tower as read from an open_clip hub folder."""

    folder: Path
    weights_file: Path
    model_cfg: dict[str, Any]
    preprocess_cfg: dict[str, Any]
    trunk_state_dict: dict[str, torch.Tensor]  # keys as in `TimmWrapperModel` (`timm_model.*`)
    key_counts: dict[str, Any] = field(default_factory=dict)

    @property
    def vision_cfg(self) -> dict[str, Any]:
        return self.model_cfg["vision_cfg"]


def read_open_clip_config(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / OPEN_CLIP_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no {OPEN_CLIP_CONFIG} (expected an open_clip hub folder)")
    config = json.loads(path.read_text())
    vision_cfg = config.get("model_cfg", {}).get("vision_cfg", {})
    if not vision_cfg.get("timm_model_name"):
        raise ValueError(
            f"{path}: model_cfg.vision_cfg.timm_model_name is missing; only timm image towers are supported"
        )
    return config


def _timm_image_size(vision_cfg: dict[str, Any]) -> int:
    size = vision_cfg.get("image_size", 224)
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise ValueError(f"non-square open_clip image_size {size} is not supported")
        size = size[0]
    return int(size)


def timm_create_kwargs(vision_cfg: dict[str, Any]) -> dict[str, Any]:
    """Extra `timm.create_model` kwargs of an open_clip timm tower: `img_size` plus `timm_model_kwargs` (tests)."""
    kwargs = {"img_size": _timm_image_size(vision_cfg)}
    kwargs.update(vision_cfg.get("timm_model_kwargs") or {})
    return kwargs


def biomedclip_encoder_spec(open_clip_config: dict[str, Any], name: str = "biomed") -> dict[str, Any]:
    """LiteGPT encoder spec for an open_clip timm ViT tower.

    The timm model is instantiated on the meta device (no weights, no download) to read its patch
    size, width, depth, heads and prefix-token count, so the spec is explicit and, for the real
    BiomedCLIP, identical to the `litegpt-7b` preset's.
    """
    import timm
    from timm.models.vision_transformer import VisionTransformer

    vision_cfg = open_clip_config["model_cfg"]["vision_cfg"]
    architecture = vision_cfg["timm_model_name"]
    create_kwargs = timm_create_kwargs(vision_cfg)
    with torch.device("meta"):
        trunk = timm.create_model(architecture, pretrained=False, num_classes=0, **create_kwargs)
    if not isinstance(trunk, VisionTransformer):
        raise NotImplementedError(
            f"timm architecture {architecture!r} is a {type(trunk).__name__}; only ViT trunks are supported"
        )
    image_size = create_kwargs["img_size"]
    patch_size = trunk.patch_embed.patch_size
    if patch_size[0] != patch_size[1]:
        raise ValueError(f"non-square patches {patch_size} are not supported")
    model_args = {
        "img_size": image_size,
        "patch_size": int(patch_size[0]),
        "embed_dim": int(trunk.embed_dim),
        "depth": len(trunk.blocks),
        "num_heads": int(trunk.blocks[0].attn.num_heads),
        "global_pool": "",
    }
    model_args.update({k: v for k, v in create_kwargs.items() if k not in model_args})
    config = {
        "model_type": "timm_wrapper",
        "architecture": architecture,
        "num_labels": 0,
        "do_pooling": False,
        "model_args": model_args,
    }
    return vision_encoder_spec(
        name,
        "timm",
        image_size,
        model_args["patch_size"],
        model_args["embed_dim"],
        config,
        num_prefix_tokens=int(trunk.num_prefix_tokens),
    )


def read_biomedclip(folder: str | Path) -> OpenClipVision:
    """Config and `visual.trunk.*` weights of an open_clip hub folder (the rest is counted as ignored)."""
    folder = Path(folder)
    config = read_open_clip_config(folder)
    weights_file = _first_existing(folder, OPEN_CLIP_WEIGHTS)
    state = load_state_dict_file(weights_file)
    trunk, ignored = {}, []
    for key, tensor in state.items():
        if key.startswith("visual.trunk."):
            trunk["timm_model." + key[len("visual.trunk.") :]] = tensor
        else:
            ignored.append(key)
    if not trunk:
        raise ValueError(f"{weights_file}: no `visual.trunk.*` keys (is this an open_clip timm-tower checkpoint?)")
    return OpenClipVision(
        folder=folder,
        weights_file=weights_file,
        model_cfg=config["model_cfg"],
        preprocess_cfg=config.get("preprocess_cfg", {}),
        trunk_state_dict=trunk,
        key_counts={
            "total": len(state),
            "converted": len(trunk),
            "ignored": len(ignored),
            "ignored_prefixes": _prefix_counts(ignored, depth=2),
        },
    )


# ---------------------------------------------------------------------------------------------- PubMedCLIP
@dataclass
class ClipVision:
    folder: Path
    weights_file: Path
    clip_config: Any  # transformers CLIPConfig
    state_dict: dict[str, torch.Tensor]  # the checkpoint's `vision_model.*` keys, prefix kept
    preprocessor: dict[str, Any] | None
    key_counts: dict[str, Any] = field(default_factory=dict)


def pubmedclip_encoder_spec(clip_config: Any, name: str = "pubmed") -> dict[str, Any]:
    """LiteGPT encoder spec copying a `CLIPConfig`'s `vision_config` (architecture fields only)."""
    vision = clip_config.vision_config
    config = {"model_type": "clip_vision_model"}
    config.update({key: getattr(vision, key) for key in CLIP_VISION_FIELDS})
    if getattr(vision, "num_channels", 3) != 3:
        config["num_channels"] = vision.num_channels
    return vision_encoder_spec(name, "clip", vision.image_size, vision.patch_size, vision.hidden_size, config)


def read_pubmedclip(folder: str | Path) -> ClipVision:
    from transformers import CLIPConfig

    folder = Path(folder)
    clip_config = CLIPConfig.from_pretrained(folder)
    if clip_config.model_type != "clip":
        raise ValueError(f"{folder}: model_type {clip_config.model_type!r}, expected 'clip' (a transformers CLIPModel)")
    weights_file = _first_existing(folder, HF_WEIGHTS)
    state = load_state_dict_file(weights_file)
    vision, ignored = {}, []
    for key, tensor in state.items():
        # `position_ids` was a persistent buffer in older transformers; it is recomputed now.
        if key.startswith("vision_model.") and not key.endswith(".position_ids"):
            vision[key] = tensor
        else:
            ignored.append(key)
    if not vision:
        raise ValueError(f"{weights_file}: no `vision_model.*` keys (is this a CLIPModel checkpoint?)")
    preprocessor_file = folder / "preprocessor_config.json"
    preprocessor = json.loads(preprocessor_file.read_text()) if preprocessor_file.is_file() else None
    return ClipVision(
        folder=folder,
        weights_file=weights_file,
        clip_config=clip_config,
        state_dict=vision,
        preprocessor=preprocessor,
        key_counts={
            "total": len(state),
            "converted": len(vision),
            "ignored": len(ignored),
            "ignored_prefixes": _prefix_counts(ignored, depth=1),
        },
    )


def clip_vision_state_for(tower: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`CLIPModel` keys `vision_model.*` laid out for a `CLIPVisionModel`.

    transformers 5.x's `CLIPVisionModel` holds the transformer directly (keys `embeddings.*`,
    `encoder.*`, `pre_layrnorm.*`, `post_layernorm.*`); 4.x nested it under `vision_model.`. Follow
    whichever layout `tower` has.
    """
    if any(key.startswith("vision_model.") for key in tower.state_dict()):
        return dict(state)
    return {key[len("vision_model.") :]: value for key, value in state.items()}


# ---------------------------------------------------------------------------------------------- MiniGPT-v2
@dataclass
class MiniGPTv2Weights:
    path: Path
    sha256: str
    llama_proj_weight: torch.Tensor
    llama_proj_bias: torch.Tensor | None
    lora: dict[tuple[int, str, str], torch.Tensor]  # (layer, "q_proj"|"v_proj", "A"|"B") -> tensor
    rank: int | None
    key_counts: dict[str, Any] = field(default_factory=dict)

    @property
    def lora_layers(self) -> list[int]:
        return sorted({layer for layer, _, _ in self.lora})


def read_minigptv2(path: str | Path) -> MiniGPTv2Weights:
    """`llama_proj` and the LoRA tensors of a MiniGPT-v2 training checkpoint (`["model"]`)."""
    path = Path(path)
    checkpoint = load_torch_file(path)
    if not isinstance(checkpoint, Mapping) or "model" not in checkpoint:
        raise ValueError(f"{path}: expected a MiniGPT-v2 checkpoint dict with a 'model' entry")
    state = checkpoint["model"]
    if "llama_proj.weight" not in state:
        raise ValueError(f"{path}: no `llama_proj.weight` in checkpoint['model']")
    lora: dict[tuple[int, str, str], torch.Tensor] = {}
    ignored = []
    for key, tensor in state.items():
        match = MINIGPTV2_LORA_KEY.fullmatch(key)
        if match:
            lora[(int(match.group(1)), match.group(2), match.group(3))] = tensor
        elif key not in MINIGPTV2_PROJ_KEYS:
            ignored.append(key)
    stray_llm = [k for k in ignored if k.startswith("llama_model.")]
    if stray_llm:
        logger.warning(
            "MiniGPT-v2: %d llama_model.* keys that are not q/v LoRA are ignored (e.g. %s)",
            len(stray_llm),
            stray_llm[0],
        )
    ranks = {t.shape[0] for (_, _, ab), t in lora.items() if ab == "A"} | {
        t.shape[1] for (_, _, ab), t in lora.items() if ab == "B"
    }
    if len(ranks) > 1:
        raise ValueError(f"{path}: inconsistent LoRA ranks {sorted(ranks)}")
    for layer in sorted({layer for layer, _, _ in lora}):
        for proj in ("q_proj", "v_proj"):
            missing = [ab for ab in ("A", "B") if (layer, proj, ab) not in lora]
            if missing:
                raise ValueError(f"{path}: layer {layer} {proj} lacks lora_{'/'.join(missing)}")
    return MiniGPTv2Weights(
        path=path,
        sha256=sha256_file(path),
        llama_proj_weight=state["llama_proj.weight"],
        llama_proj_bias=state.get("llama_proj.bias"),
        lora=lora,
        rank=ranks.pop() if ranks else None,
        key_counts={
            "total": len(state),
            "llama_proj": sum(k in state for k in MINIGPTV2_PROJ_KEYS),
            "lora": len(lora),
            "ignored": len(ignored),
            "ignored_prefixes": _prefix_counts(ignored, depth=1),
        },
    )


def check_llama_proj(weights: MiniGPTv2Weights, config: LiteGPTConfig) -> None:
    """`llama_proj` must map `projector_hidden_size` (5632 = 1408 * 4) to the LM width."""
    expected = (config.text_config.hidden_size, config.projector_hidden_size)
    got = tuple(weights.llama_proj_weight.shape)
    if got != expected:
        raise ValueError(
            f"MiniGPT-v2 llama_proj.weight has shape {got}, but multi_modal_projector.linear_2 needs "
            f"{expected} (projector_hidden_size {config.projector_hidden_size} -> LM hidden size "
            f"{config.text_config.hidden_size}). Use the Llama-2-7b-chat LM that MiniGPT-v2 was trained with "
            f"and --projector-hidden-size {got[1] if len(got) == 2 else '?'}."
        )
    if config.projector_bias != (weights.llama_proj_bias is not None):
        raise ValueError(
            f"llama_proj has {'a' if weights.llama_proj_bias is not None else 'no'} bias "
            f"but projector_bias={config.projector_bias}"
        )
    if weights.llama_proj_bias is not None and tuple(weights.llama_proj_bias.shape) != expected[:1]:
        raise ValueError(
            f"MiniGPT-v2 llama_proj.bias has shape {tuple(weights.llama_proj_bias.shape)}, expected {expected[:1]}"
        )


def check_lora_shapes(weights: MiniGPTv2Weights, model: nn.Module) -> None:
    layers = model.model.language_model.layers
    for (layer, proj, ab), tensor in sorted(weights.lora.items()):
        if layer >= len(layers):
            raise ValueError(f"MiniGPT-v2 LoRA for layer {layer}, but the LM has {len(layers)} layers")
        linear = getattr(layers[layer].self_attn, proj)
        expected = (weights.rank, linear.in_features) if ab == "A" else (linear.out_features, weights.rank)
        if tuple(tensor.shape) != expected:
            raise ValueError(
                f"MiniGPT-v2 layer {layer} {proj}.lora_{ab} has shape {tuple(tensor.shape)}, expected {expected}"
            )


def write_init_adapter(
    model: nn.Module, weights: MiniGPTv2Weights, adapter_dir: str | Path, base_model_name_or_path: str
) -> Path:
    """PEFT adapter folder: MiniGPT-v2's q/v LoRA + the full projector (`modules_to_save`), safetensors."""
    from safetensors.torch import save_file

    if not weights.lora:
        raise ValueError(f"{weights.path}: no LoRA keys, cannot write an init adapter")
    adapter_dir = Path(adapter_dir)
    adapter_dir.mkdir(parents=True, exist_ok=True)
    dtype = model.model.multi_modal_projector.linear_2.weight.dtype
    tensors = {}
    for (layer, proj, ab), tensor in sorted(weights.lora.items()):
        key = f"base_model.model.model.language_model.layers.{layer}.self_attn.{proj}.lora_{ab}.weight"
        tensors[key] = tensor.detach().to(dtype).contiguous()
    for name, tensor in model.model.multi_modal_projector.state_dict().items():
        tensors[f"base_model.model.model.multi_modal_projector.{name}"] = tensor.detach().clone().contiguous()
    save_file(tensors, str(adapter_dir / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = LiteGPTForConditionalGeneration.lora_config(r=weights.rank, base_model_name_or_path=base_model_name_or_path)
    config.save_pretrained(str(adapter_dir))
    return adapter_dir


# ---------------------------------------------------------------------------------------------- parity
@contextlib.contextmanager
def _timm_create_model_with(extra_kwargs: dict[str, Any]) -> Iterator[None]:
    """Let open_clip's `TimmModel` build a toy ViT: its `timm.create_model` call gets `extra_kwargs` too."""
    if not extra_kwargs:
        yield
        return
    import timm

    original = timm.create_model
    timm.create_model = functools.partial(original, **extra_kwargs)
    try:
        yield
    finally:
        timm.create_model = original


def open_clip_visual_reference(biomedclip_dir: str | Path) -> nn.Module:
    """open_clip's own image tower (`open_clip.timm_model.TimmModel`) loaded strictly with `visual.*`."""
    from open_clip.timm_model import TimmModel

    folder = Path(biomedclip_dir)
    config = read_open_clip_config(folder)
    model_cfg, vision_cfg = config["model_cfg"], config["model_cfg"]["vision_cfg"]
    extra = dict(vision_cfg.get("timm_model_kwargs") or {})
    if extra:  # our test-only extension: open_clip passes no size kwargs to timm itself
        extra.setdefault("img_size", _timm_image_size(vision_cfg))
    with _timm_create_model_with(extra):
        visual = TimmModel(
            vision_cfg["timm_model_name"],
            model_cfg["embed_dim"],
            image_size=_timm_image_size(vision_cfg),
            pool=vision_cfg.get("timm_pool", "avg"),
            proj=vision_cfg.get("timm_proj", "linear"),
            proj_bias=vision_cfg.get("timm_proj_bias", False),
        )
    state = load_state_dict_file(_first_existing(folder, OPEN_CLIP_WEIGHTS))
    visual.load_state_dict({k[len("visual.") :]: v for k, v in state.items() if k.startswith("visual.")}, strict=True)
    return visual.eval()


def _get_tower(model_or_towers: Any, name: str) -> nn.Module:
    if isinstance(model_or_towers, Mapping):
        return model_or_towers[name]
    base = getattr(model_or_towers, "model", model_or_towers)
    return getattr(base, f"{name}_vision_tower")


@torch.no_grad()
def check_tower_parity(
    model_or_towers: Any,
    biomedclip_dir: str | Path,
    pubmedclip_dir: str | Path,
    biomed_name: str = "biomed",
    pubmed_name: str = "pubmed",
    batch_size: int = 2,
    seed: int = 0,
    atol: float = 1e-4,
    raise_on_mismatch: bool = True,
) -> dict[str, float]:
    """Max |difference| between our towers and the upstream implementations on random pixels.

    * biomed: open_clip `TimmModel(...).trunk.forward_features(x)` vs
      `biomed_vision_tower(pixel_values=x).last_hidden_state`
    * pubmed: `CLIPModel.from_pretrained(dir).vision_model(x).last_hidden_state` vs the pubmed tower's.

    `model_or_towers` is a LiteGPT model (`LiteGPTForConditionalGeneration` or `LiteGPTModel`) or a
    mapping `{name: tower}`. Towers run on float32 copies. Raises `ValueError` above `atol`.
    """
    from transformers import CLIPModel

    biomed = copy.deepcopy(_get_tower(model_or_towers, biomed_name)).float().eval()
    pubmed = copy.deepcopy(_get_tower(model_or_towers, pubmed_name)).float().eval()
    reference_visual = open_clip_visual_reference(biomedclip_dir)
    reference_clip = CLIPModel.from_pretrained(str(pubmedclip_dir), dtype=torch.float32).eval()

    image_size = _timm_image_size(read_open_clip_config(biomedclip_dir)["model_cfg"]["vision_cfg"])
    if reference_clip.config.vision_config.image_size != image_size:
        raise ValueError(
            f"BiomedCLIP image size {image_size} != PubMedCLIP {reference_clip.config.vision_config.image_size}"
        )
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn(batch_size, 3, image_size, image_size, generator=generator)

    ours_b = biomed(pixel_values=pixels).last_hidden_state
    ref_b = reference_visual.trunk.forward_features(pixels)
    ours_p = pubmed(pixel_values=pixels).last_hidden_state
    ref_p = reference_clip.vision_model(pixel_values=pixels).last_hidden_state
    report = {}
    for name, ours, ref in ((biomed_name, ours_b, ref_b), (pubmed_name, ours_p, ref_p)):
        if ours.shape != ref.shape:
            raise ValueError(f"{name} tower parity: shape {tuple(ours.shape)} vs reference {tuple(ref.shape)}")
        report[name] = float((ours - ref).abs().max())
    bad = {k: v for k, v in report.items() if not v <= atol}
    if bad and raise_on_mismatch:
        raise ValueError(f"vision tower parity failed (max abs diff > {atol}): {bad}")
    return report


# ---------------------------------------------------------------------------------------------- preprocessing check
def _close(a: Any, b: Any, tol: float = 1e-6) -> bool:
    return (
        a is not None
        and b is not None
        and len(a) == len(b)
        and all(abs(float(x) - float(y)) <= tol for x, y in zip(a, b))
    )


def check_normalisation(processor: Any, biomed: OpenClipVision, pubmed: ClipVision) -> list[str]:
    """Warnings when the upstream mean/std differ from the processor's (OpenAI-CLIP, as both encoders' reference preprocessing)."""
    image_processor = getattr(processor, "image_processor", None)
    mean = list(getattr(image_processor, "image_mean", None) or CLIP_IMAGE_MEAN)
    std = list(getattr(image_processor, "image_std", None) or CLIP_IMAGE_STD)
    sources = {"BiomedCLIP preprocess_cfg": (biomed.preprocess_cfg.get("mean"), biomed.preprocess_cfg.get("std"))}
    if pubmed.preprocessor:
        sources["PubMedCLIP preprocessor_config"] = (
            pubmed.preprocessor.get("image_mean"),
            pubmed.preprocessor.get("image_std"),
        )
    warnings = []
    for source, (src_mean, src_std) in sources.items():
        if src_mean is None or src_std is None:
            warnings.append(f"{source}: no mean/std recorded; the processor uses mean={mean} std={std}")
        elif not (_close(src_mean, mean) and _close(src_std, std)):
            warnings.append(
                f"{source}: mean={src_mean} std={src_std} differ from the processor's mean={mean} std={std}"
            )
    for warning in warnings:
        logger.warning(warning)
    return warnings


# ---------------------------------------------------------------------------------------------- LM
def _hash_llm_files(llm: str) -> dict[str, str] | None:
    folder = Path(llm)
    if not folder.is_dir():
        return None
    patterns = ("*.safetensors", "*.bin", "*.json", "tokenizer.model")
    files = sorted({p for pattern in patterns for p in folder.glob(pattern) if p.is_file()})
    return {p.name: sha256_file(p) for p in files}


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def init_projector_linears(config: LiteGPTConfig, seed: int) -> tuple[nn.Linear, nn.Linear]:
    """`torch.manual_seed(seed); linear_1 = nn.Linear(...); linear_2 = nn.Linear(...)` in float32 (PyTorch defaults)."""
    with _default_dtype(torch.float32):
        torch.manual_seed(seed)
        linear_1 = nn.Linear(config.projector_input_size, config.projector_hidden_size, bias=config.projector_bias)
        linear_2 = nn.Linear(config.projector_hidden_size, config.text_config.hidden_size, bias=config.projector_bias)
    return linear_1, linear_2


# ---------------------------------------------------------------------------------------------- convert
def convert(
    biomedclip: str | Path,
    pubmedclip: str | Path,
    llm: str,
    out: str | Path,
    minigptv2: str | Path | None = None,
    dtype: str | torch.dtype | None = None,
    seed: int = 0,
    projector_hidden_size: int = 5632,
    tokens_per_group: int = 5,
    llm_revision: str | None = None,
    adapter_base: str | None = None,
    check_parity: bool = True,
    parity_atol: float = 1e-4,
) -> Path:
    """Convert the upstream checkpoints into a LiteGPT base folder `out` (see the module docstring).

    Returns `out`. Writes `out/minigptv2_init_adapter/` when `minigptv2` is given, and always
    `out/conversion_manifest.json`.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = Path(out)
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        dtype = DTYPES[dtype]
    dtype = dtype or torch.float32

    # --- read everything first, so format errors surface before the expensive steps
    biomed = read_biomedclip(biomedclip)
    pubmed = read_pubmedclip(pubmedclip)
    mgv2 = read_minigptv2(minigptv2) if minigptv2 is not None else None
    biomed_spec = biomedclip_encoder_spec({"model_cfg": biomed.model_cfg}, name="biomed")
    pubmed_spec = pubmedclip_encoder_spec(pubmed.clip_config, name="pubmed")

    logger.info("loading LM %s", llm)
    tokenizer = AutoTokenizer.from_pretrained(llm, revision=llm_revision)
    language_model = AutoModelForCausalLM.from_pretrained(llm, revision=llm_revision, dtype="auto")
    llm_commit = getattr(language_model.config, "_commit_hash", None)
    source_vocab = len(tokenizer)

    config = LiteGPTConfig(
        vision_encoders=[biomed_spec, pubmed_spec],
        tokens_per_group=tokens_per_group,
        projector_hidden_size=projector_hidden_size,
        text_config=language_model.config,
    )
    if mgv2 is not None:
        check_llama_proj(mgv2, config)

    # --- assemble (tokenizer gains <ImageHere>, embeddings resized there), built directly in `dtype`
    with _default_dtype(dtype):
        model, processor = assemble_litegpt(config, tokenizer, language_model, seed=seed)
    del language_model

    # --- towers
    model.model.biomed_vision_tower.load_state_dict(biomed.trunk_state_dict, strict=True)
    model.model.pubmed_vision_tower.load_state_dict(
        clip_vision_state_for(model.model.pubmed_vision_tower, pubmed.state_dict), strict=True
    )

    # --- projector
    linear_1, linear_2 = init_projector_linears(model.config, seed)
    projector = model.model.multi_modal_projector
    projector.linear_1.load_state_dict(linear_1.state_dict())
    if mgv2 is not None:
        check_lora_shapes(mgv2, model)
        proj_state = {"weight": mgv2.llama_proj_weight}
        if mgv2.llama_proj_bias is not None:
            proj_state["bias"] = mgv2.llama_proj_bias
        projector.linear_2.load_state_dict(proj_state)
    else:
        projector.linear_2.load_state_dict(linear_2.state_dict())
    model.to(dtype)  # save_litegpt records the weights' dtype in the config and the text config

    # --- checks
    warnings = check_normalisation(processor, biomed, pubmed)
    parity = None
    if check_parity:
        # The towers were loaded in `dtype`; compare float32 towers so the check stays exact.
        towers = {}
        for name, state in (("biomed", biomed.trunk_state_dict), ("pubmed", pubmed.state_dict)):
            tower = copy.deepcopy(getattr(model.model, f"{name}_vision_tower")).float()
            if name == "pubmed":
                state = clip_vision_state_for(tower, state)
            tower.load_state_dict(state, strict=True)
            towers[name] = tower
        parity = check_tower_parity(towers, biomed.folder, pubmed.folder, atol=parity_atol)
        logger.info("tower parity (max abs diff): %s", parity)

    # --- save
    provenance = {
        "built by": "`python -m scripts.convert_litegpt` (inputs and their sha256 in `conversion_manifest.json`)",
        "vision towers": f"BiomedCLIP `{Path(biomedclip).name}` (open_clip trunk), PubMedCLIP `{Path(pubmedclip).name}`",
        "language model": f"`{llm}`",
        "projector": (
            f"`linear_2` from MiniGPT-v2 `{Path(minigptv2).name}` (`llama_proj`), `linear_1` seeded init (seed {seed})"
            if mgv2 is not None
            else f"seeded init (seed {seed})"
        ),
    }
    save_litegpt(model, processor, out, provenance=provenance, card_metadata={"license": "llama2"})
    adapter_dir = None
    if mgv2 is not None:
        adapter_dir = write_init_adapter(model, mgv2, out / INIT_ADAPTER_DIRNAME, adapter_base or str(out))

    manifest = {
        "converter": "scripts/convert_litegpt.py",
        "versions": package_versions(CONVERSION_PACKAGES, missing=None),
        "dtype": str(dtype).replace("torch.", ""),
        "seed": seed,
        "inputs": {
            "biomedclip": {
                "path": str(biomed.folder),
                "files": {
                    OPEN_CLIP_CONFIG: sha256_file(biomed.folder / OPEN_CLIP_CONFIG),
                    biomed.weights_file.name: sha256_file(biomed.weights_file),
                },
                "vision_cfg": biomed.vision_cfg,
                "preprocess_cfg": biomed.preprocess_cfg,
                "keys": biomed.key_counts,
                "mapping": "visual.trunk.* -> model.biomed_vision_tower.timm_model.*",
            },
            "pubmedclip": {
                "path": str(pubmed.folder),
                "files": {
                    "config.json": sha256_file(pubmed.folder / "config.json"),
                    pubmed.weights_file.name: sha256_file(pubmed.weights_file),
                },
                "keys": pubmed.key_counts,
                "mapping": "vision_model.* -> model.pubmed_vision_tower.* (CLIPVisionModel, transformers 5 layout)",
            },
            "llm": {
                "name_or_path": str(llm),
                "revision": llm_revision,
                "commit": llm_commit,
                "files": _hash_llm_files(str(llm)),
                "vocab_size_source": source_vocab,
                "vocab_size_out": model.config.text_config.vocab_size,
                "image_token": model.config.image_token,
                "image_token_id": model.config.image_token_id,
            },
            "minigptv2": None
            if mgv2 is None
            else {
                "path": str(mgv2.path),
                "sha256": mgv2.sha256,
                "keys": mgv2.key_counts,
                "lora_rank": mgv2.rank,
                "lora_layers": mgv2.lora_layers,
                "mapping": {
                    "llama_proj.*": "model.multi_modal_projector.linear_2.*",
                    "llama_model.base_model.model.model.layers.N.self_attn.{q,v}_proj.lora_{A,B}.weight": (
                        f"{INIT_ADAPTER_DIRNAME}/adapter_model.safetensors: "
                        "base_model.model.model.language_model.layers.N.self_attn.{q,v}_proj.lora_{A,B}.weight"
                    ),
                },
            },
        },
        "projector": {
            "linear_1": (
                f"torch.manual_seed({seed}); torch.nn.Linear({config.projector_input_size}, "
                f"{config.projector_hidden_size}) (float32, PyTorch default init)"
            ),
            "linear_2": "MiniGPT-v2 llama_proj"
            if mgv2 is not None
            else (
                f"the torch.nn.Linear({config.projector_hidden_size}, {config.text_config.hidden_size}) "
                "built right after linear_1"
            ),
        },
        "init_adapter": None if adapter_dir is None else INIT_ADAPTER_DIRNAME,
        "parity_max_abs_diff": parity,
        "warnings": warnings,
    }
    (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    leftovers = [p for p in out.rglob("*") if p.suffix in (".bin", ".pth", ".pt", ".pkl")]
    if leftovers:
        raise RuntimeError(f"pickled files were written to {out}: {leftovers}")
    logger.info("saved LiteGPT base checkpoint to %s", out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--biomedclip", required=True, help="open_clip hub folder of BiomedCLIP")
    parser.add_argument("--pubmedclip", required=True, help="transformers CLIPModel folder of PubMedCLIP")
    parser.add_argument("--llm", required=True, help="HF causal LM folder or hub id (Llama-2-7b-chat-hf)")
    parser.add_argument("--llm-revision", default=None, help="hub revision of --llm")
    parser.add_argument("--minigptv2", default=None, help="MiniGPT-v2 checkpoint_stage3.pth (optional)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--dtype", default=None, choices=sorted(DTYPES), help="weight dtype of the output (default float32)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the new projector layer(s)")
    parser.add_argument("--projector-hidden-size", type=int, default=5632)
    parser.add_argument("--tokens-per-group", type=int, default=5)
    parser.add_argument(
        "--adapter-base", default=None, help="base_model_name_or_path of the init adapter (default: --out)"
    )
    parser.add_argument(
        "--skip-parity", action="store_true", help="do not compare the towers with open_clip / CLIPModel"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    convert(
        biomedclip=args.biomedclip,
        pubmedclip=args.pubmedclip,
        llm=args.llm,
        out=args.out,
        minigptv2=args.minigptv2,
        dtype=args.dtype,
        seed=args.seed,
        projector_hidden_size=args.projector_hidden_size,
        tokens_per_group=args.tokens_per_group,
        llm_revision=args.llm_revision,
        adapter_base=args.adapter_base,
        check_parity=not args.skip_parity,
    )


if __name__ == "__main__":
    main()
