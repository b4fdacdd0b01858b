"""MIMIC-CXR existence rows (the project's builder, `existence` config) -> MedKLIP training examples.

The builder writes one row per (image, entity) with a known answer (1 present / 0 absent) and the position words the
report gives that entity. MedKLIP trains on images: `group_existence_rows` gathers an image's rows into

* `labels` `(E,)` over the model's entities: 1, 0, or -1 when the report gives no answer (uncertain or not mentioned:
  the builder made no row) - masked out of the existence loss;
* `positions` per present entity: the indices of its position words in the model's position list;
* the report text (findings + impression, from the builder's `report` config of the same images, text only), the
  target of the semantic-consistency loss.

Entities of the rows that the model does not know and position words outside its list are configuration errors,
raised before training with the names. A model entity that no image answers is counted and logged.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import datasets
import torch

logger = logging.getLogger(__name__)

UNKNOWN = -1
IMAGE_COLUMNS = ("images", "image")


@dataclass
class ExistenceImage:
    """One training image: where its pixels are (first row of the existence split), its answers and positions."""

    dicom_id: str
    row: int
    labels: list[int]
    positions: list[list[int]]
    report: str | None = None


@dataclass
class GroupingSummary:
    """What `group_existence_rows` found (JSON-ready through `as_dict`)."""

    rows: int = 0
    images: int = 0
    answers: dict[str, Counter] = field(default_factory=dict)
    unanswered_entities: list[str] = field(default_factory=list)
    images_without_report: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "images": self.images,
            "answers": {entity: dict(counter) for entity, counter in self.answers.items()},
            "unanswered_entities": list(self.unanswered_entities),
            "images_without_report": len(self.images_without_report),
            "images_without_report_ids": list(self.images_without_report),
        }


def report_text(row: Mapping[str, Any]) -> str | None:
    """The report text of a builder `report` row: its target (`completion`), else findings + impression."""
    completion = row.get("completion")
    if completion:
        blocks = completion[0].get("content") or []
        text = " ".join(b.get("text") or "" for b in blocks if isinstance(b, Mapping)).strip()
        if text:
            return text
    text = " ".join(p for p in (row.get("findings"), row.get("impression")) if p).strip()
    return text or None


def report_texts(report_rows: datasets.Dataset | None) -> dict[str, str]:
    """dicom_id -> report text of the builder's `report` rows (build them with `report_section="findings+impression"`)."""
    if report_rows is None:
        return {}
    columns = [c for c in report_rows.column_names if c not in IMAGE_COLUMNS]
    out = {}
    for row in report_rows.select_columns(columns):
        text = report_text(row)
        if text:
            out[str(row["dicom_id"])] = text
    return out


def group_existence_rows(
    rows: datasets.Dataset,
    entities: Sequence[str],
    positions: Sequence[str],
    reports: Mapping[str, str] | None = None,
) -> tuple[list[ExistenceImage], GroupingSummary]:
    """Gather the builder's (image, entity) rows into one `ExistenceImage` per image (see the module docstring)."""
    entity_index = {name: k for k, name in enumerate(entities)}
    position_index = {name: k for k, name in enumerate(positions)}
    columns = [c for c in ("dicom_id", "entity", "label", "position") if c in rows.column_names]
    missing = {"dicom_id", "entity", "label"} - set(columns)
    if missing:
        raise ValueError(f"existence rows need the columns {sorted(missing)} (the MIMIC builder's existence config)")
    images: dict[str, ExistenceImage] = {}
    summary = GroupingSummary(answers={entity: Counter() for entity in entities})
    for index, row in enumerate(rows.select_columns(columns)):
        dicom_id, entity, label = str(row["dicom_id"]), str(row["entity"]), int(row["label"])
        if entity not in entity_index:
            raise ValueError(f"existence row {index} (image {dicom_id}) names the entity {entity!r}, which the model "
                             f"does not know (its entities: {list(entities)}); build the data with entities= among "
                             "them or add it to the knowledge file and the model")
        if label not in (0, 1):
            raise ValueError(f"existence row {index} (image {dicom_id}, {entity}): label {label}; only 1/0 are trained")
        image = images.get(dicom_id)
        if image is None:
            image = images[dicom_id] = ExistenceImage(dicom_id, index, [UNKNOWN] * len(entities),
                                                      [[] for _ in entities])
        k = entity_index[entity]
        if image.labels[k] != UNKNOWN:
            raise ValueError(f"image {dicom_id} has two existence rows for {entity!r} (rows of one study only)")
        image.labels[k] = label
        summary.answers[entity]["Yes" if label else "No"] += 1
        if label == 1:
            for word in row.get("position") or []:
                if word not in position_index:
                    raise ValueError(f"existence row {index} (image {dicom_id}, {entity}) has the position word "
                                     f"{word!r}, which the model does not know (its positions: {list(positions)})")
                if position_index[word] not in image.positions[k]:
                    image.positions[k].append(position_index[word])
        summary.rows += 1
    summary.images = len(images)
    summary.unanswered_entities = [e for e in entities if not sum(summary.answers[e].values())]
    if summary.unanswered_entities:
        logger.warning("no image answers the entities %s: they are never trained", summary.unanswered_entities)
    reports = reports or {}
    for image in images.values():
        image.report = reports.get(image.dicom_id)
        if image.report is None:
            summary.images_without_report.append(image.dicom_id)
    if reports and summary.images_without_report:
        logger.warning("%d image(s) without a report text (semantic loss masked), e.g. %s",
                       len(summary.images_without_report), summary.images_without_report[:3])
    return list(images.values()), summary


class ExistenceImageDataset(torch.utils.data.Dataset):
    """Torch dataset over grouped images: decodes the image of its first row, runs the image processor.

    With `cache_pixels`, each image's processed tensor is kept in memory after its first use (the small CPU
    configuration: no augmentation, so every epoch would decode and resize the same PNGs again)."""

    def __init__(self, rows: datasets.Dataset, images: Sequence[ExistenceImage], image_processor: Any, num_positions: int,
                 cache_pixels: bool = False):
        image_column = next((c for c in IMAGE_COLUMNS if c in rows.column_names), None)
        if image_column is None:
            raise ValueError("existence rows have no `images` column: build them with include_image=True")
        self.rows = rows.select_columns([image_column])
        self.image_column = image_column
        self.images = list(images)
        self.image_processor = image_processor
        self.num_positions = num_positions
        self._pixels: dict[int, torch.Tensor] | None = {} if cache_pixels else None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.images[index]
        pixel_values = self._pixels.get(index) if self._pixels is not None else None
        if pixel_values is None:
            value = self.rows[item.row][self.image_column]
            image = value[0] if isinstance(value, list) else value
            pixel_values = self.image_processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"][0]
            if self._pixels is not None:
                self._pixels[index] = pixel_values
        position_labels = torch.zeros(len(item.labels), self.num_positions)
        for k, indices in enumerate(item.positions):
            position_labels[k, indices] = 1.0
        return {"pixel_values": pixel_values, "labels": torch.tensor(item.labels, dtype=torch.long),
                "position_labels": position_labels, "report": item.report}


@dataclass
class MedKLIPCollator:
    """Stacks images, labels and positions; tokenises the reports (an image without one gets an empty text and
    `has_report` False, so its semantic loss is masked)."""

    tokenizer: Any
    report_max_length: int = 128

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        reports = [f.get("report") for f in features]
        batch = {
            "pixel_values": torch.stack([f["pixel_values"] for f in features]),
            "labels": torch.stack([f["labels"] for f in features]),
            "position_labels": torch.stack([f["position_labels"] for f in features]),
        }
        if any(reports):
            tokens = self.tokenizer([r or "" for r in reports], padding=True, truncation=True,
                                    max_length=self.report_max_length, return_tensors="pt")
            batch["report_input_ids"] = tokens["input_ids"]
            batch["report_attention_mask"] = tokens["attention_mask"]
            batch["has_report"] = torch.tensor([bool(r) for r in reports])
        return batch


# ============================================================================================== builder


def build_mimic_splits(
    data_dir: str,
    settings: Mapping[str, Any] | None = None,
    cache_dir: str | None = None,
    num_proc: int | None = None,
    with_reports: bool = True,
) -> tuple[datasets.DatasetDict, dict[str, str], dict[str, Any]]:
    """The builder's `existence` splits, the report texts of the same images (the `report` config, text only,
    findings + impression) and a JSON-ready description of both sources (settings, rows, counts, skips)."""
    from datasets_scripts.mimic_cxr import MIMICCXR

    settings = dict(settings or {})
    kwargs = {"cache_dir": cache_dir} if cache_dir else {}
    try:
        existence = MIMICCXR(config_name="existence", data_dir=data_dir, **kwargs, **settings)
    except TypeError as err:  # an unknown setting name
        raise ValueError(f"MIMIC-CXR settings {sorted(settings)}: {err}") from None
    existence.download_and_prepare(num_proc=num_proc)
    splits = existence.as_dataset()
    sources = {"existence": _describe(existence, splits)}
    texts: dict[str, str] = {}
    if with_reports:
        report_settings = {**settings, "include_image": False, "report_section": "findings+impression"}
        report = MIMICCXR(config_name="report", data_dir=data_dir, **kwargs, **report_settings)
        report.download_and_prepare(num_proc=num_proc)
        report_splits = report.as_dataset()
        for split in report_splits.values():
            texts.update(report_texts(split))
        sources["report"] = _describe(report, report_splits)
    return splits, texts, sources


def _describe(builder: Any, splits: datasets.DatasetDict) -> dict[str, Any]:
    skipped = builder.skipped
    return {
        "dataset": "mimic_cxr",
        "config": builder.config.name,
        "builder_version": str(builder.config.version),
        "fingerprint": builder.config_id,
        "settings": builder.settings,
        "rows": {name: len(split) for name, split in splits.items()},
        "skipped": {k: v for k, v in skipped.items() if k != "items"},
        "skipped_items": skipped.get("items", []),
    }


__all__ = [
    "UNKNOWN",
    "ExistenceImage",
    "ExistenceImageDataset",
    "GroupingSummary",
    "MedKLIPCollator",
    "build_mimic_splits",
    "group_existence_rows",
    "report_text",
    "report_texts",
]
