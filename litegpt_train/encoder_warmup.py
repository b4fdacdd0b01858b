"""Demo only: warm up randomly initialised vision encoders on the training split before they are frozen.

The paper's encoders (BiomedCLIP, PubMedCLIP) arrive pretrained; the CPU demo's small encoders of the same
architectures start random. Random features keep large findings (an enlarged heart, an effusion) linearly readable,
but not small ones (nodules, rings, pleural bands, reticular nets): a linear probe on the demo's frozen random
features scores them at AUC 0.5-0.6 on the synthetic test split. This warm-up is a stand-in for the missing
pretraining: both towers learn, with one linear head on their patch tokens, which local labels' boxes cover each
patch (dense multi-label binary cross-entropy: what and where), on the first stage's training images only. Then the
head is dropped, the towers are frozen again, and training proceeds exactly as with pretrained encoders.

`train_sft.py` runs it when it builds the demo base (`encoder_warmup_epochs > 0` with `base_preset`) and writes
`encoder_warmup.json` beside the weights; the paper recipe never uses it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from codec_litegpt import VINDR_LOCAL_LABELS

logger = logging.getLogger(__name__)

WARMUP_RECORD = "encoder_warmup.json"


def patch_grid_edges(grid: int) -> torch.Tensor:
    """The `grid + 1` patch boundaries of a square patch grid, in [0, 1] image coordinates."""
    return torch.arange(grid + 1, dtype=torch.float32) / grid


def box_patch_coverage(box: Sequence[float], grid: int) -> torch.Tensor:
    """Share of each patch (raster order, `(grid * grid,)`) covered by a box given in [0, 1] coordinates."""
    x1, y1, x2, y2 = (float(v) for v in box)
    edges = patch_grid_edges(grid)
    cover_x = (edges[1:].clamp(max=x2) - edges[:-1].clamp(min=x1)).clamp(min=0) * grid
    cover_y = (edges[1:].clamp(max=y2) - edges[:-1].clamp(min=y1)).clamp(min=0) * grid
    return (cover_y[:, None] * cover_x[None, :]).flatten()


def patch_label_targets(
    rows: Sequence[dict[str, Any]],
    vision_encoders: Sequence[dict[str, Any]],
    labels: Sequence[str] = VINDR_LOCAL_LABELS,
    min_coverage: float = 0.15,
) -> torch.Tensor:
    """`(len(rows), num_patch_tokens, len(labels))` 0/1 targets: patch `p` of a tower is positive for label `L` when a
    box of `L` covers at least `min_coverage` of it. Patches run tower by tower in config order, in raster order,
    as the towers' concatenated patch tokens do. Rows carry the builder's `boxes` (pixels), `box_labels`, `width`
    and `height`; the processor squashes images to a square, so boxes scale by width and height separately."""
    index = {label: k for k, label in enumerate(labels)}
    per_tower = []
    for spec in vision_encoders:
        grid = spec["image_size"] // spec["patch_size"]
        targets = torch.zeros(len(rows), grid * grid, len(labels))
        for row_index, row in enumerate(rows):
            width, height = float(row["width"]), float(row["height"])
            for label, box in zip(row["box_labels"], row["boxes"]):
                if label not in index:
                    raise ValueError(f"row {row.get('image_id')!r}: box label {label!r} is not one of the labels")
                normalised = (box[0] / width, box[1] / height, box[2] / width, box[3] / height)
                covered = (box_patch_coverage(normalised, grid) >= min_coverage).float()
                column = targets[row_index, :, index[label]]
                torch.maximum(column, covered, out=column)
        per_tower.append(targets)
    return torch.cat(per_tower, dim=1)


def _pixel_values(processor: Any, rows: Sequence[dict[str, Any]]) -> torch.Tensor:
    images = [row["images"][0] if isinstance(row["images"], (list, tuple)) else row["images"] for row in rows]
    return processor.image_processor(images, return_tensors="pt")["pixel_values"]


def warm_up_encoders(
    model: torch.nn.Module,
    processor: Any,
    rows: Sequence[dict[str, Any]],
    epochs: int,
    learning_rate: float = 1e-3,
    batch_size: int = 16,
    positive_weight: float = 5.0,
    min_coverage: float = 0.15,
    seed: int = 0,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Train the vision towers of `model` (a LiteGPT model) on `rows` for `epochs`, then freeze them again.

    Returns a JSON-ready summary (settings, images, positive patch share, loss of the first and last epoch).
    """
    backbone = model.model if hasattr(model, "model") else model
    specs = backbone.config.vision_encoders
    widths = {spec["hidden_size"] for spec in specs}
    if len(widths) != 1:
        raise ValueError(f"the warm-up's shared head needs towers of one width, got {sorted(widths)}")
    if epochs < 1:
        raise ValueError(f"encoder warm-up needs at least one epoch, got {epochs}")
    if len(rows) < 2:
        raise ValueError(f"encoder warm-up needs training images, got {len(rows)}")
    targets = patch_label_targets(rows, specs, min_coverage=min_coverage)
    if not targets.any():
        raise ValueError("no training box covers any patch: nothing for the encoder warm-up to learn")
    pixels = _pixel_values(processor, rows)
    generator = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(widths.pop(), targets.shape[-1])
    torch.nn.init.normal_(head.weight, std=0.02, generator=generator)
    torch.nn.init.zeros_(head.bias)
    backbone.freeze_vision(False)
    parameters = [p for tower in backbone.vision_towers for p in tower.parameters()] + list(head.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=0.01)
    weight = torch.tensor(positive_weight)
    losses = []
    progress = None
    if show_progress:
        from tqdm.auto import tqdm

        progress = tqdm(total=epochs * math.ceil(len(rows) / batch_size), desc="encoder warm-up", unit="step")
    try:
        for _ in range(epochs):
            order, total = torch.randperm(len(rows), generator=generator), 0.0
            for start in range(0, len(rows), batch_size):
                batch = order[start : start + batch_size]
                tokens, _, _ = backbone._vision_tokens(pixels[batch].to(next(head.parameters()).device))
                loss = F.binary_cross_entropy_with_logits(head(tokens.float()), targets[batch], pos_weight=weight)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                total += float(loss.detach()) * len(batch)
                if progress is not None:
                    progress.update(1)
            losses.append(total / len(rows))
    finally:
        if progress is not None:
            progress.close()
        backbone.freeze_vision(True)
    logger.info("encoder warm-up: %d epochs on %d images, loss %.4f -> %.4f", epochs, len(rows), losses[0], losses[-1])
    return {
        "what": "demo-only supervised warm-up of the random vision encoders (dense patch x local-label BCE) on the "
        "first stage's training images; the encoders are frozen again afterwards",
        "epochs": epochs,
        "learning_rate": learning_rate,
        "batch_size": batch_size,
        "positive_weight": positive_weight,
        "min_coverage": min_coverage,
        "seed": seed,
        "images": len(rows),
        "positive_patch_share": float(targets.mean()),
        "loss_first_epoch": losses[0],
        "loss_last_epoch": losses[-1],
    }


__all__ = ["WARMUP_RECORD", "box_patch_coverage", "patch_label_targets", "warm_up_encoders"]
