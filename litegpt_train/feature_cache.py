"""Cache of the projector's inputs: frozen encoders see each image once, later epochs and stages reuse it.

The encoders are frozen and deterministic, so `LiteGPTModel.get_projector_inputs(pixel_values)` (both towers,
parameter-free norm, 5-token grouping) is a pure function of the processed pixels. `ProjectorInputCache` computes
it once per distinct image (keyed by a digest of the exact `pixel_values` the processor produced, so any change of
image processing settings is a miss, never a stale hit) and `CachedProjectorInputsCollator` swaps the collated
`pixel_values` for the cached `projector_inputs`, which the model accepts in their place.

Memory: `num_image_tokens x projector_input_size` values per image (49 x 3840 in fp16 = 376 KB for the paper's
encoders: about 5.6 GB for VinDr-CXR's 15,000 training images). `dtype` chooses the storage precision.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

try:
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling
except ImportError as err:  # pragma: no cover - trl is a hard dependency of training
    raise ImportError("the projector-input cache is a training feature: pip install trl") from err

logger = logging.getLogger(__name__)


def pixel_digest(pixel_values: torch.Tensor) -> str:
    """Content digest of one image's processed pixels `(3, H, W)`: the cache key."""
    data = pixel_values.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    return hashlib.blake2b(data, digest_size=16).hexdigest()


class ProjectorInputCache:
    """Projector inputs of every image seen, computed by the model's frozen encoders.

    Args:
        dtype: storage precision (`torch.float16` halves memory; the projector casts to its own dtype anyway).
    """

    def __init__(self, dtype: torch.dtype = torch.float32):
        self.dtype = dtype
        self._store: dict[str, torch.Tensor] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._store)

    def __contains__(self, key: str) -> bool:
        return key in self._store

    @staticmethod
    def check_model(model: torch.nn.Module) -> None:
        """Refuse to cache features of encoders that train: their outputs change every step."""
        backbone = litegpt_backbone(model)
        if any(p.requires_grad for tower in backbone.vision_towers for p in tower.parameters()):
            raise ValueError(
                "cache_projector_inputs needs frozen vision encoders, but train_vision_towers is on: "
                "turn one of them off"
            )

    @torch.no_grad()
    def fill(
        self,
        model: torch.nn.Module,
        processor: Any,
        images: Iterable[Sequence[Any]],
        batch_size: int = 16,
        total: int | None = None,
        show_progress: bool = True,
    ) -> int:
        """Compute and store the projector inputs of `images` (one list of images per row); returns new entries."""
        self.check_model(model)
        backbone = litegpt_backbone(model)
        device = next(backbone.multi_modal_projector.parameters()).device
        added = 0
        for pixel_values in processed_pixel_batches(processor, images, batch_size, total, "caching projector inputs", show_progress):
            keys = [pixel_digest(row) for row in pixel_values]
            todo = [i for i, key in enumerate(keys) if key not in self._store]
            if todo:
                features = backbone.get_projector_inputs(pixel_values[todo].to(device))
                for i, feature in zip(todo, features):
                    if keys[i] not in self._store:  # the same image twice in one batch
                        self._store[keys[i]] = feature.to("cpu", self.dtype)
                        added += 1
        logger.info("projector-input cache: %d images (%d new)", len(self._store), added)
        return added

    def lookup(self, pixel_values: torch.Tensor) -> torch.Tensor | None:
        """Stacked cached inputs for a batch `(B, 3, H, W)`, or None if any image is missing (counted)."""
        keys = [pixel_digest(row) for row in pixel_values]
        if all(key in self._store for key in keys):
            self.hits += len(keys)
            return torch.stack([self._store[key] for key in keys])
        self.misses += sum(key not in self._store for key in keys)
        return None


def processed_pixel_batches(
    processor: Any,
    images: Iterable[Sequence[Any]],
    batch_size: int = 16,
    total: int | None = None,
    desc: str = "processing images",
    show_progress: bool = True,
) -> Iterator[torch.Tensor]:
    """`pixel_values` batches of about `batch_size` images from rows of images, with a progress bar over rows.

    Through the processor itself (image loading, RGB conversion, resize, normalisation), so the pixels (and the
    cache keys taken from them) equal those TRL's collator produces for the same rows.
    """
    batch: list[Any] = []
    with tqdm(total=total, desc=desc, unit="row", disable=not show_progress) as bar:
        for row_images in images:
            batch.extend(row_images)
            bar.update(1)
            if len(batch) >= batch_size:
                yield _pixel_values(processor, batch)
                batch = []
        if batch:
            yield _pixel_values(processor, batch)


def _pixel_values(processor: Any, images: list[Any]) -> torch.Tensor:
    return processor(images=[[image] for image in images], text=[processor.image_token] * len(images), return_tensors="pt")[
        "pixel_values"
    ]


class CachedProjectorInputsCollator(DataCollatorForVisionLanguageModeling):
    """TRL's vision collator, with `pixel_values` replaced by cached `projector_inputs` when every image is cached.

    A batch with an uncached image keeps its `pixel_values` (the model then runs the encoders): a miss costs
    time, never correctness. `cache.misses` counts them.
    """

    def __init__(self, processor: Any, cache: ProjectorInputCache, **kwargs):
        super().__init__(processor, **kwargs)
        self.cache = cache

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = super().torch_call(examples)
        pixel_values = batch.get("pixel_values")
        if pixel_values is not None and pixel_values.dim() == 4:
            cached = self.cache.lookup(pixel_values)
            if cached is not None:
                del batch["pixel_values"]
                batch["projector_inputs"] = cached
        return batch


def litegpt_backbone(model: torch.nn.Module) -> torch.nn.Module:
    """The `LiteGPTModel` inside a full, PEFT-wrapped or quantised LiteGPT model."""
    for module in model.modules():
        if hasattr(module, "get_projector_inputs") and hasattr(module, "vision_towers"):
            return module
    raise TypeError(f"{type(model).__name__} holds no LiteGPT backbone (get_projector_inputs)")


__all__ = ["CachedProjectorInputsCollator", "ProjectorInputCache", "litegpt_backbone", "pixel_digest", "processed_pixel_batches"]
