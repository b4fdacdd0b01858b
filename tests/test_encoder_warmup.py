"""The demo-only encoder warm-up: patch targets by hand, what trains, and the base it leaves behind."""

from __future__ import annotations

import json

import pytest
import torch

import train_sft
from litegpt_train.arguments import LiteGPTModelConfig
from litegpt_train.encoder_warmup import WARMUP_RECORD, box_patch_coverage, patch_label_targets, warm_up_encoders
from processing_litegpt import VINDR_LOCAL_LABELS

CARDIOMEGALY = VINDR_LOCAL_LABELS.index("Cardiomegaly")


def test_box_patch_coverage_by_hand():
    # a 2 x 2 grid: the box covers the whole top-left patch and a quarter of the top-right one
    coverage = box_patch_coverage((0.0, 0.0, 0.625, 0.5), grid=2)
    assert coverage.tolist() == pytest.approx([1.0, 0.25, 0.0, 0.0])


def test_patch_targets_follow_each_towers_grid_and_the_box_size():
    specs = [{"image_size": 32, "patch_size": 16}, {"image_size": 32, "patch_size": 8}]  # 2 x 2, then 4 x 4 patches
    row = {"image_id": "a", "width": 200, "height": 100, "box_labels": ["Cardiomegaly"], "boxes": [[0, 0, 100, 50]]}
    targets = patch_label_targets([row], specs, min_coverage=0.15)
    assert targets.shape == (1, 4 + 16, len(VINDR_LOCAL_LABELS))
    column = targets[0, :, CARDIOMEGALY]
    assert column[:4].tolist() == [1, 0, 0, 0]  # the box is the top-left quarter (width and height scale apart)
    assert column[4:].reshape(4, 4).tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert targets.sum() == column.sum() == 5
    small = {**row, "boxes": [[0, 0, 10, 5]]}  # 5 % x 5 % of the image: 1 % of a coarse patch, 4 % of a fine one
    assert not patch_label_targets([small], specs, min_coverage=0.15).any()
    with pytest.raises(ValueError, match="not one of the labels"):
        patch_label_targets([{**row, "box_labels": ["Heart"]}], specs)


def synthetic_rows(n: int, size: int = 32) -> list[dict]:
    """Bright square on the left = Cardiomegaly (with its box); dark image = no box."""
    from PIL import Image

    rows = []
    for k in range(n):
        pixels = torch.full((size, size), 20, dtype=torch.uint8)
        boxes, labels = [], []
        if k % 2 == 0:
            pixels[8:24, 0:16] = 230
            boxes, labels = [[0, 8, 16, 24]], ["Cardiomegaly"]
        image = Image.fromarray(pixels.numpy()).convert("RGB")
        rows.append({"image_id": str(k), "images": [image], "width": size, "height": size, "boxes": boxes,
                     "box_labels": labels})
    return rows


def test_warm_up_trains_the_towers_only_and_freezes_them_again(tiny_model_and_processor):
    model, processor = tiny_model_and_processor
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    summary = warm_up_encoders(model, processor, synthetic_rows(8), epochs=6, learning_rate=1e-2, batch_size=4,
                               show_progress=False)
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed and all("_vision_tower." in name for name in changed)
    assert any("biomed_vision_tower" in n for n in changed) and any("pubmed_vision_tower" in n for n in changed)
    assert not any(p.requires_grad for tower in model.model.vision_towers for p in tower.parameters())
    assert not any(tower.training for tower in model.model.vision_towers)
    assert summary["images"] == 8 and summary["epochs"] == 6
    assert summary["loss_last_epoch"] < summary["loss_first_epoch"]


def test_warm_up_refuses_what_it_cannot_learn_from(tiny_model_and_processor):
    model, processor = tiny_model_and_processor
    no_boxes = [row for row in synthetic_rows(6) if not row["boxes"]]
    with pytest.raises(ValueError, match="no training box"):
        warm_up_encoders(model, processor, no_boxes, epochs=1, show_progress=False)
    with pytest.raises(ValueError, match="at least one epoch"):
        warm_up_encoders(model, processor, synthetic_rows(4), epochs=0, show_progress=False)


def test_an_existing_base_must_carry_the_warm_up_the_config_asks_for(tmp_path):
    args = LiteGPTModelConfig(model_name_or_path=str(tmp_path), base_preset="litegpt-smol", encoder_warmup_epochs=3,
                              encoder_warmup_learning_rate=1e-3)
    with pytest.raises(ValueError, match="no encoder warm-up"):
        train_sft.check_base_warmup(args, tmp_path)
    (tmp_path / WARMUP_RECORD).write_text(json.dumps({"epochs": 2, "learning_rate": 1e-3}))
    with pytest.raises(ValueError, match="warm-up 2 epochs"):
        train_sft.check_base_warmup(args, tmp_path)
    (tmp_path / WARMUP_RECORD).write_text(json.dumps({"epochs": 3, "learning_rate": 1e-3}))
    train_sft.check_base_warmup(args, tmp_path)  # matches: no error


@pytest.mark.parametrize(("overrides", "match"), [
    ({"encoder_warmup_epochs": 2}, "base this script builds"),
    ({"encoder_warmup_epochs": -1}, ">= 0"),
    ({"encoder_warmup_epochs": 2, "base_preset": "litegpt-smol", "encoder_warmup_learning_rate": 0.0}, "> 0"),
])
def test_bad_warm_up_settings_fail_before_anything_loads(tiny_checkpoint, tmp_path, overrides, match):
    from test_precision_and_lora_scope import write_config

    with pytest.raises(ValueError, match=match):
        train_sft.parse_arguments(write_config(tmp_path, tiny_checkpoint, **overrides))
