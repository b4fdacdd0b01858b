"""Reading the VinDr-CXR inputs: the annotation and image-label CSVs, validated row by row (columns found by name,
labels by their canonical spelling, every bad row named with its file and line), and the DICOM headers' sizes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from codec_litegpt import (
    NO_FINDING,
    VINDR_GLOBAL_LABELS,
    VINDR_LOCAL_LABELS,
    canonical_label,
    normalize_label_name,
)
from datasets_scripts.common import SkipLog, read_csv_strings
from image_processing_litegpt import DicomReadError

# The five global diseases (the sixth global label, No finding, is a reader's vote, not a disease).
GLOBAL_DISEASES = tuple(label for label in VINDR_GLOBAL_LABELS if label != NO_FINDING)


class VinDrDataError(ValueError):
    """The VinDr CSVs or folder do not match the official layout; the message names the file (and CSV line)."""


@dataclass
class AnnotationRow:
    """One validated annotation row."""

    line: int
    image_id: str
    rad_id: str | None
    class_name: str | None  # canonical
    class_name_raw: str
    box: tuple[float, float, float, float] | None


@dataclass
class ReaderLabels:
    rad_id: str | None
    line: int
    values: dict[str, int]  # canonical label -> 0/1 (22 local + 6 global)

    @property
    def no_finding(self) -> int:
        return self.values[NO_FINDING]

    def local(self) -> set[str]:
        return {label for label in VINDR_LOCAL_LABELS if self.values[label]}

    def global_(self) -> set[str]:
        return {label for label in GLOBAL_DISEASES if self.values[label]}


class BadRows:
    """Collects bad rows; `raise` lists them all in one error."""

    def __init__(self, policy: str, skips: SkipLog):
        self.policy = policy
        self.skips = skips
        self.errors: list[str] = []
        self.bad_images: dict[tuple[str, str], str] = {}  # (split, image_id) -> first reason (skip_image)

    def add(self, split: str, image_id: str | None, where: str, reason: str, detail: str) -> None:
        message = f"{where}: {detail}"
        if self.policy == "raise":
            self.errors.append(message)
        elif self.policy == "skip_row" or not image_id:
            self.skips.skip(message, reason)
        else:  # skip_image
            self.skips.skip(message, reason)
            self.bad_images.setdefault((split, image_id), reason)

    def check(self) -> None:
        if self.errors:
            shown = "\n  ".join(self.errors[:25])
            more = f"\n  ... and {len(self.errors) - 25} more" if len(self.errors) > 25 else ""
            raise VinDrDataError(
                f"{len(self.errors)} invalid VinDr CSV row(s):\n  {shown}{more}\n"
                "Fix the files, or build with on_bad_row='skip_row' / 'skip_image' to skip them (counted and listed)."
            )


def find_columns(frame, path: Path, names: Sequence[str], optional: Sequence[str] = ()) -> dict[str, str | None]:
    """Map required/optional column names (case-insensitive, whitespace-normalised) to the file's columns."""
    by_norm: dict[str, str] = {}
    for column in frame.columns:
        key = normalize_label_name(column)
        if key in by_norm:
            raise VinDrDataError(f"{path}: duplicate column {column!r}")
        by_norm[key] = column
    found: dict[str, str | None] = {}
    missing = []
    for name in list(names) + list(optional):
        column = by_norm.get(normalize_label_name(name))
        if column is None and name in names:
            missing.append(name)
        found[name] = column
    if missing:
        raise VinDrDataError(f"{path}: missing column(s) {missing}; found {list(frame.columns)}")
    return found


def _parse_float(text: str) -> float | None:
    text = text.strip()
    if text == "" or text.lower() == "nan":
        return None
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"non-finite value {text!r}")
    return value


def read_image_labels(path: Path, split: str, bad: BadRows) -> dict[str, dict[str | None, ReaderLabels]]:
    """image_id -> {rad_id (None for test): ReaderLabels}, in file order; label columns matched by canonical name."""
    frame = read_csv_strings(path, VinDrDataError, f"missing VinDr file {path} (expected the official PhysioNet layout)")
    ids = find_columns(frame, path, ["image_id"], optional=["rad_id"])
    id_col, rad_col = ids["image_id"], ids["rad_id"]
    if split == "test":
        rad_col = None  # the test labels are one consensus row per image (a rad_id column, if any, is ignored)
    if split == "train" and rad_col is None:
        raise VinDrDataError(f"{path}: missing column 'rad_id' (the train split has one row per image and reader)")
    label_columns: dict[str, str] = {}
    for column in frame.columns:
        if column in (id_col, ids["rad_id"]):
            continue
        try:
            label = canonical_label(column)
        except ValueError as err:
            raise VinDrDataError(f"{path}: unknown label column {column!r} ({err})") from err
        if label in label_columns:
            raise VinDrDataError(
                f"{path}: columns {label_columns[label]!r} and {column!r} are the same label {label!r}"
            )
        label_columns[label] = column
    missing = [label for label in VINDR_LOCAL_LABELS + VINDR_GLOBAL_LABELS if label not in label_columns]
    if missing:
        raise VinDrDataError(f"{path}: missing label column(s) {missing}")

    out: dict[str, dict[str | None, ReaderLabels]] = {}
    ordered_labels = list(VINDR_LOCAL_LABELS + VINDR_GLOBAL_LABELS)
    columns = [id_col] + ([rad_col] if rad_col else []) + [label_columns[label] for label in ordered_labels]
    for offset, values in enumerate(frame[columns].itertuples(index=False, name=None)):
        line = offset + 2
        image_id = values[0].strip()
        rad_id = values[1].strip() if rad_col else None
        where = f"{path.name} line {line} (image_id={image_id!r}" + (f", rad_id={rad_id!r})" if rad_col else ")")
        if not image_id:
            bad.add(split, None, where, "missing_image_id", "empty image_id")
            continue
        if rad_col and not rad_id:
            bad.add(split, image_id, where, "missing_rad_id", "empty rad_id")
            continue
        raw_values = values[2:] if rad_col else values[1:]
        parsed: dict[str, int] = {}
        problem = None
        for label, text in zip(ordered_labels, raw_values):
            text = text.strip()
            try:
                number = float(text)
            except ValueError:
                number = None
            if number not in (0.0, 1.0):
                problem = f"column {label_columns[label]!r} holds {text!r}, expected 0 or 1"
                break
            parsed[label] = int(number)
        if problem:
            bad.add(split, image_id, where, "bad_label_value", problem)
            continue
        readers = out.setdefault(image_id, {})
        key = rad_id if rad_col else None
        if key in readers:
            what = f"reader {rad_id!r}" if rad_col else "image"
            bad.add(split, image_id, where, "duplicate_label_row", f"second labels row for this {what}")
            continue
        readers[key] = ReaderLabels(rad_id=key, line=line, values=parsed)
    return out


def read_annotations(path: Path, split: str, bad: BadRows) -> list[AnnotationRow]:
    """Validated rows (label known, box complete/ordered or absent for `No finding`); sizes are checked later."""
    frame = read_csv_strings(path, VinDrDataError, f"missing VinDr file {path} (expected the official PhysioNet layout)")
    cols = find_columns(
        frame, path, ["image_id", "class_name", "x_min", "y_min", "x_max", "y_max"], optional=["rad_id"]
    )
    if split == "train" and cols["rad_id"] is None:
        raise VinDrDataError(f"{path}: missing column 'rad_id' (train annotations are per reader)")
    names = ["image_id", "rad_id", "class_name", "x_min", "y_min", "x_max", "y_max"]
    selected = [cols[n] for n in names if cols[n] is not None]
    rows: list[AnnotationRow] = []
    local_set = set(VINDR_LOCAL_LABELS)
    for offset, values in enumerate(frame[selected].itertuples(index=False, name=None)):
        record = dict(zip([n for n in names if cols[n] is not None], values))
        line = offset + 2
        image_id = record["image_id"].strip()
        rad_id = record["rad_id"].strip() if cols["rad_id"] is not None else None
        raw = record["class_name"]
        where = (
            f"{path.name} line {line} (image_id={image_id!r}"
            + (f", rad_id={rad_id!r}" if cols["rad_id"] is not None else "")
            + f", class_name={raw!r})"
        )
        if not image_id:
            bad.add(split, None, where, "missing_image_id", "empty image_id")
            continue
        if split == "train" and not rad_id:
            bad.add(split, image_id, where, "missing_rad_id", "empty rad_id")
            continue
        try:
            label = canonical_label(raw)
        except ValueError:
            bad.add(split, image_id, where, "unknown_label", f"unknown label {raw!r}")
            continue
        try:
            coords = [_parse_float(record[k]) for k in ("x_min", "y_min", "x_max", "y_max")]
        except ValueError as err:
            bad.add(split, image_id, where, "bad_coordinate", f"bad coordinate: {err}")
            continue
        present = [c is not None for c in coords]
        if label == NO_FINDING:
            if any(present):
                bad.add(split, image_id, where, "no_finding_with_box", f"'No finding' row with a box {coords}")
                continue
            box = None
        elif label not in local_set:
            bad.add(split, image_id, where, "not_a_local_label", f"{label!r} is a global label, not a box class")
            continue
        else:
            if not all(present):
                bad.add(split, image_id, where, "box_missing", f"class {label!r} without a complete box {coords}")
                continue
            x1, y1, x2, y2 = coords
            if x2 <= x1 or y2 <= y1:
                bad.add(split, image_id, where, "box_inverted", f"inverted or empty box {coords}")
                continue
            box = (x1, y1, x2, y2)
        rows.append(AnnotationRow(line, image_id, rad_id if split == "train" else None, label, raw, box))
    return rows


def dicom_path(data_dir: Path, split: str, image_id: str) -> Path:
    path = data_dir / split / f"{image_id}.dicom"
    if not path.exists():
        alternative = data_dir / split / f"{image_id}.dcm"
        if alternative.exists():
            return alternative
    return path


def read_dicom_size(path: Path) -> tuple[int, int]:
    """(width, height) = (Columns, Rows) from the DICOM header; raises DicomReadError/FileNotFoundError."""
    import pydicom

    if not path.is_file():
        raise FileNotFoundError(f"missing DICOM file {path}")
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True, specific_tags=["Rows", "Columns"])
        rows, columns = int(ds.Rows), int(ds.Columns)
    except Exception as err:
        raise DicomReadError(f"cannot read the DICOM header of {path}: {type(err).__name__}: {err}") from err
    if rows <= 0 or columns <= 0:
        raise DicomReadError(f"{path}: invalid size Rows={rows}, Columns={columns}")
    return columns, rows
