"""MedKLIP data: the builder's existence rows grouped per image (unknown answers masked), positions, report texts,
bad configurations named, and the collator."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from medklip.data import (
    UNKNOWN,
    ExistenceImageDataset,
    MedKLIPCollator,
    group_existence_rows,
    report_text,
    report_texts,
)

ENTITIES = ["Opacity", "Effusion", "Cardiomegaly"]
POSITIONS = ["left", "right", "lower", "base"]


def rows(*entries):
    """Existence rows like the builder's: (dicom_id, entity, label, positions)."""
    image = Image.fromarray(np.arange(48 * 40, dtype=np.uint8).reshape(48, 40) % 251)
    return datasets.Dataset.from_list([
        {"dicom_id": d, "entity": e, "label": y, "position": p, "images": [image]} for d, e, y, p in entries
    ])


def test_rows_of_an_image_become_one_example_with_unknown_answers_masked():
    data = rows(("a", "Effusion", 1, ["right", "lower"]), ("a", "Opacity", 0, []), ("b", "Cardiomegaly", 1, []),
                ("b", "Effusion", 0, ["left"]))  # positions of an absent entity are not trained
    images, summary = group_existence_rows(data, ENTITIES, POSITIONS, reports={"a": "Right lower effusion."})
    by_id = {im.dicom_id: im for im in images}
    assert by_id["a"].labels == [0, 1, UNKNOWN] and by_id["a"].positions == [[], [1, 2], []]
    assert by_id["b"].labels == [UNKNOWN, 0, 1] and by_id["b"].positions == [[], [], []]
    assert by_id["a"].row == 0 and by_id["b"].row == 2
    assert by_id["a"].report == "Right lower effusion." and by_id["b"].report is None
    assert summary.as_dict()["answers"] == {"Opacity": {"No": 1}, "Effusion": {"Yes": 1, "No": 1}, "Cardiomegaly": {"Yes": 1}}
    assert summary.images_without_report == ["b"] and summary.unanswered_entities == []


def test_configuration_mismatches_are_named():
    with pytest.raises(ValueError, match=r"entity 'Pneumothorax'.*does not know"):
        group_existence_rows(rows(("a", "Pneumothorax", 1, [])), ENTITIES, POSITIONS)
    with pytest.raises(ValueError, match=r"image a, Opacity\) has the position word 'apex'"):
        group_existence_rows(rows(("a", "Opacity", 1, ["apex"])), ENTITIES, POSITIONS)
    with pytest.raises(ValueError, match="two existence rows for 'Opacity'"):
        group_existence_rows(rows(("a", "Opacity", 1, []), ("a", "Opacity", 0, [])), ENTITIES, POSITIONS)
    with pytest.raises(ValueError, match=r"label -1"):
        group_existence_rows(rows(("a", "Opacity", -1, [])), ENTITIES, POSITIONS)
    _, summary = group_existence_rows(rows(("a", "Opacity", 1, [])), ENTITIES, POSITIONS)
    assert summary.unanswered_entities == ["Effusion", "Cardiomegaly"]  # counted, logged, never trained


def test_dataset_and_collator_shapes_and_report_mask():
    from medklip.checkpoint import build_medklip

    _, tokenizer, processor = build_medklip("tiny")
    data = rows(("a", "Effusion", 1, ["right"]), ("b", "Opacity", 0, []))
    images, _ = group_existence_rows(data, ENTITIES, POSITIONS, reports={"a": "Small right effusion."})
    dataset = ExistenceImageDataset(data, images, processor, len(POSITIONS))
    item = dataset[0]
    assert item["pixel_values"].shape == (3, 64, 64)
    assert item["position_labels"][1].tolist() == [0, 1, 0, 0] and item["labels"].tolist() == [UNKNOWN, 1, UNKNOWN]
    batch = MedKLIPCollator(tokenizer, report_max_length=8)([dataset[0], dataset[1]])
    assert batch["pixel_values"].shape == (2, 3, 64, 64) and batch["labels"].shape == (2, 3)
    assert batch["has_report"].tolist() == [True, False]
    assert batch["report_input_ids"].shape[1] <= 8
    no_reports = MedKLIPCollator(tokenizer)([dataset[1]])
    assert "report_input_ids" not in no_reports  # nothing to compare: the semantic loss is not computed
    with pytest.raises(ValueError, match="no `images` column"):
        ExistenceImageDataset(data.remove_columns("images"), images, processor, 4)


def test_report_text_from_builder_report_rows():
    completion = [{"role": "assistant", "content": [{"type": "text", "text": "Findings. Impression."}]}]
    assert report_text({"completion": completion}) == "Findings. Impression."
    assert report_text({"completion": None, "findings": "F.", "impression": "I."}) == "F. I."
    assert report_text({"completion": None, "findings": None, "impression": None}) is None
    table = datasets.Dataset.from_list([{"dicom_id": "x", "completion": completion, "findings": None, "impression": None}])
    assert report_texts(table) == {"x": "Findings. Impression."}


def test_synthetic_existence_grouping_matches_the_builder_rows(tmp_path):
    """On the builder's real output: every image appears once, its known answers are exactly its rows."""
    from datasets_scripts import synthetic
    from datasets_scripts.mimic_reports import ENTITIES as BUILDER_ENTITIES
    from datasets_scripts.mimic_reports import POSITION_WORDS
    from medklip.data import build_mimic_splits

    synthetic.generate(tmp_path / "data", n_train=0, n_test=0, mimic_studies=12, seed=5, image_size=48)
    splits, texts, sources = build_mimic_splits(str(tmp_path / "data"), {"max_side": 64}, str(tmp_path / "cache"))

    train = splits["train"]
    images, summary = group_existence_rows(train, BUILDER_ENTITIES, POSITION_WORDS, texts)
    assert summary.rows == len(train) and len({im.dicom_id for im in images}) == len(images)
    known = sum(1 for im in images for label in im.labels if label != UNKNOWN)
    assert known == len(train)
    assert all(im.report for im in images)  # every existence image has its report (same studies, same selection)
    assert sources["existence"]["skipped"].get("study_without_selected_view", 0) >= 0
    assert torch.tensor([im.labels for im in images]).min() >= UNKNOWN
