"""VinDr-CXR (PhysioNet `vindr-cxr/1.0.0`, credentialed) as a `datasets.GeneratorBasedBuilder`.

`datasets` >= 4 no longer runs loading scripts: instantiate the builder directly.

```python
from datasets_scripts.vindr_cxr import VinDrCXR

builder = VinDrCXR(config_name="grounding", data_dir="/data/vindr-cxr/1.0.0")
builder.download_and_prepare(num_proc=8)
ds = builder.as_dataset()        # DatasetDict(train, validation, test)
builder.skipped                  # {reason: count, "items": [...]}: everything dropped, never silent
builder.counts                   # preprocessing counts (conflicts, dedup, fusion, taxonomy...)
```

or `python -m datasets_scripts.vindr_cxr --data_dir /data/vindr-cxr/1.0.0 [--config grounding] [--num_proc 8]
[--set dedup=mean ...] [--export out/] [--push_to_hub me/vindr-cxr-litegpt]` (Parquet + card with YAML `configs:`,
so `load_dataset("me/vindr-cxr-litegpt", "grounding")` works script-free; the push is always private).

Input (PhysioNet's official layout): `train/{image_id}.dicom`, `test/{image_id}.dicom`,
`annotations/annotations_{train,test}.csv` (`image_id, rad_id (train), class_name, x_min, y_min, x_max, y_max`;
`No finding` rows have empty boxes) and `annotations/image_labels_{train,test}.csv` (`image_id, rad_id (train)` + 22
local + 6 global 0/1 columns). Columns are found by name, never by position; label spellings go through
`processing_litegpt.canonical_label` (e.g. `Other disease` -> `Other diseases`); unknown names raise.

Configs (rows; splits `train`, `validation` (5 % of train by `sha1(image_id)`), `test`):

* `raw` - one row per annotation CSV row, every reader kept (`rad_id`), never fused: `image_id, split, rad_id,
  row` (CSV line), `class_name`, `class_name_raw`, `box` (pixels) / `grid_box` (0-100) or null, `width, height`.
  No image by default (it would be stored once per CSV row; `include_image=True` adds it).
* `labels` - one row per image x reader (test: one consensus row): one 0/1 column per label (canonical names), the
  reader's `local_labels`, `global_labels`, boxes (`box_labels`, `boxes`, `grid_boxes`), image.
* `grounding` - stage 1: TRL prompt-completion row (`images: List(Image())`, `prompt`, `completion`) whose target is
  the paper's `Local diseases of this chest radiograph are <p>label</p> {<x1><y1><x2><y2>},...` + `image_id`,
  `width`, `height`, fused labels and boxes (pixels and grid).
* `diagnosis` - stage 2: same columns, target `Global diseases of this chest radiograph are ...`.

All prompt/target text comes from the processor's codec (`prompt_messages`, `completion_messages`,
`format_grounding_answer`, `format_diagnosis_answer`); images are converted with `dicom_to_uint8` (`windowing`:
our DICOM window or full range by default, the paper's appendix code with `paper_appendix`; MONOCHROME1 inverted)
and stored as 8-bit PNG.

Preprocessing (train/validation images; test boxes and labels are the consensus, taken as given) - each step is
a `VinDrCXRConfig` setting with the paper's value as default (except three of ours: `windowing`, `stage1_images`
and the 5 % `validation_fraction`; `configs/litegpt-7b.yaml` sets the paper's), and every count is logged
(`builder.counts`):

1. validation of every CSV row (`on_bad_row`); DICOM presence and header (`on_bad_image`);
2. reader conflicts on `No finding` (`conflict_policy`, default `drop`: the image is removed);
3. fusion of the three readers' image-level labels (`global_fusion`, default `union`);
4. taxonomy (`vindr22` or `kaggle14`);
5. same-class box deduplication (`dedup`, default `keep_first` at IoU > 0.5);
6. deterministic order: canonical label index, then grid box (the codec's rule; `format_grounding_answer` sorts).

Bad input is never silent: a missing/corrupt DICOM, a class row without a box, a box outside the image or inverted,
an unknown label... raise a clear error naming the file and CSV line (default), or, with `on_bad_row="skip_row"|
"skip_image"` / `on_bad_image="skip"`, are skipped, logged, counted and listed in `builder.skipped` (also in
`vindr_preprocessing.json` in the prepared cache folder and in `info.description`). A failed `download_and_prepare`
leaves no prepared cache (datasets writes into `<dir>.incomplete` and renames on success).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from datasets import Features, List, Value
from datasets import Image as ImageFeature

try:
    from datasets.builder import DatasetGenerationError
except ImportError:  # pragma: no cover - older layouts
    from datasets.exceptions import DatasetGenerationError

from processing_litegpt import (
    DEFAULT_TASK_TOKENS,
    NO_FINDING,
    VINDR_GLOBAL_LABELS,
    VINDR_LOCAL_LABELS,
    WINDOWING_MODES,
    DicomReadError,
    box_to_grid,
    canonical_label,
    completion_messages,
    dicom_to_uint8,
    format_diagnosis_answer,
    format_grounding_answer,
    normalize_label_name,
    prompt_messages,
    read_dicom,
)

from datasets_scripts.common import (
    PreparationLogMixin,
    SkipLog,
    check_choices,
    encode_png,
    input_error_cause,
    run_builder_cli,
)

__all__ = [
    "CONFIG_NAMES",
    "KAGGLE14_LOCAL_LABELS",
    "VinDrCXR",
    "VinDrCXRConfig",
    "VinDrDataError",
    "box_iou",
    "dedup_boxes",
    "fuse_labels",
    "is_validation_image",
    "main",
    "resolve_no_finding",
]

logger = logging.getLogger("datasets_scripts.vindr_cxr")

CONFIG_NAMES = ("raw", "labels", "grounding", "diagnosis")
SPLITS = ("train", "test")
PREPROCESSING_LOG = "vindr_preprocessing.json"

# Kaggle VinBigData's 14 classes (mapped by name): the VinDr local labels minus the 8 it lacks.
KAGGLE14_MISSING = (
    "Clavicle fracture",
    "Edema",
    "Emphysema",
    "Enlarged PA",
    "Lung cavity",
    "Lung cyst",
    "Mediastinal shift",
    "Rib fracture",
)
KAGGLE14_LOCAL_LABELS = tuple(label for label in VINDR_LOCAL_LABELS if label not in KAGGLE14_MISSING)
GLOBAL_DISEASES = tuple(label for label in VINDR_GLOBAL_LABELS if label != NO_FINDING)

DEDUP_METHODS = ("keep_first", "mean", "wbf", "none")
CONFLICT_POLICIES = ("drop", "majority", "union")
FUSION_RULES = ("union", "majority")
TAXONOMIES = ("vindr22", "kaggle14")
STAGE1_TARGETS = ("local", "global+local")
STAGE1_IMAGES = ("all", "with_boxes")
BAD_ROW_POLICIES = ("raise", "skip_row", "skip_image")
BAD_IMAGE_POLICIES = ("raise", "skip")


class VinDrDataError(ValueError):
    """The VinDr CSVs or folder do not match the official layout; the message names the file (and CSV line)."""


# ======================================================================================================= config


@dataclass
class VinDrCXRConfig(datasets.BuilderConfig):
    """Settings of the VinDr-CXR builder (paper defaults; every divergence from the paper is one of these).

    Attributes:
        dedup: same-label boxes of one train image: `"keep_first"` (default, as [C]): the image's boxes of a label,
            ordered by (`rad_id` as a string, CSV line), each join the first group whose representative (its first
            member) has pixel IoU > `dedup_iou`, else start a group; one box per group, the representative.
            `"mean"`: same groups, coordinate-wise mean. `"wbf"`: weighted boxes fusion with unit scores (a box
            joins the first cluster whose running mean box has IoU > `dedup_iou`; output the mean). `"none"`: keep
            every reader's box. Train/validation only; test boxes are the consensus, as given.
        dedup_iou: IoU threshold of `dedup` (strictly greater; paper: 0.5).
        conflict_policy: train images where one reader says `No finding`=1 and another 0: `"drop"` (default, [P]:
            image removed), `"majority"` (strict majority of the readers' `No finding` votes; a tie is abnormal),
            `"union"` (abnormal when any reader reports a finding, as [C]).
        global_fusion: how the train readers' image-level labels (22 local + 5 global diseases, from
            `image_labels_train.csv`, plus the classes of each reader's own boxes) are fused: `"union"` (default,
            [C]) or `"majority"` (a label needs a strict majority of the image's readers; boxes of local labels that
            fail the vote are dropped too, counted).
        taxonomy: `"vindr22"` (all 22 local labels, default) or `"kaggle14"` (drops the 8 classes Kaggle VinBigData
            lacks: their labels and boxes are removed, counted).
        windowing: DICOM -> 8-bit conversion of `processing_litegpt.dicom_to_uint8`: `"window"` (default, ours [D]: our
            reading of the paper's section 4.2 text - modality LUT, the DICOM window `[c - w/2, c + w/2]` of the first
            `WindowCenter`/`WindowWidth`, else full min-max, rounded), `"paper_appendix"` ([P]: the paper's Appendix
            A.1 code - stored values, `(v - c) / w` clipped to +-1, i.e. twice the window, else `(v - mean) /
            (max - min)`, truncated), `"voi_lut"`, `"minmax"`; MONOCHROME1 is inverted in every mode.
        max_side: longest side of the *stored* PNG (default 1024; `None`/0 keeps the DICOM size). Boxes and grid
            always refer to the DICOM `Columns` x `Rows` (`width`, `height` columns).
        png_compress_level: zlib level of the stored PNG (all lossless): 0 stores, 1 (default) run-length
            (fast, about as small as full deflate on filtered radiographs), 2-9 full deflate (see `grey_png_bytes`).
        task_token: task token of the prompt (`None` -> `DEFAULT_TASK_TOKENS`: `[identify]` for grounding, `[vqa]`
            for diagnosis; [C] used `[grounding]`).
        image_wrapper: the text around the image placeholder that the chat template renders for the prompt's image
            block (default `("<Img>", "</Img>")`, [C] and MiniGPT-v2; [P] wrote `<image>`). The rows themselves hold
            a bare `{"type": "image"}` block: the wrapper is recorded in the settings/card so training can check it
            matches `LiteGPTProcessor.image_wrapper`.
        stage1_target: `"local"` (default, [P]: the local sentence) or `"global+local"` (the global sentence, a space,
            then the local sentence, like [C]'s combined string).
        stage1_images: which train images the `grounding` (stage 1) config keeps: `"all"` (default, [D]) or
            `"with_boxes"` ([P] section 3.2: "We select samples that contain identified anomalies along with their
            specific locations"; images whose fused target has no box - normal ones and abnormal ones without a local
            box - are dropped, counted in `stage1_images_without_boxes`). Only the `train` split is filtered: the
            validation and test splits keep every image, so thresholds and scores cover normal images too. The
            default keeps all images because the stage-1 instruction asks the model to "state that the chest
            radiograph shows no findings" when there are none, which it can only learn from normal images;
            `configs/litegpt-7b.yaml` sets the paper's `with_boxes`.
        validation_fraction: share of train images (by `sha1(image_id)`, deterministic) put in a `validation` split
            (default 0.05, ours [D]; 0 -> no validation split, the paper's: it trains on all training images).
        on_bad_row: invalid CSV row (unknown label, class without box, box inverted/empty or outside the image,
            `No finding` with a box, bad 0/1 value, reader or image missing from the labels CSV, a reader with
            `No finding`=1 and findings): `"raise"` (default: one error listing the file, line and reason of every
            bad row), `"skip_row"` (drop the row, counted and listed), `"skip_image"` (drop the whole image).
        on_bad_image: missing, unreadable or undecodable DICOM: `"raise"` (default; error naming the file) or
            `"skip"` (image dropped, counted and listed in `builder.skipped`).
        include_image: add the `images` column (`None` -> every config except `raw`).
    """

    dedup: str = "keep_first"
    dedup_iou: float = 0.5
    conflict_policy: str = "drop"
    global_fusion: str = "union"
    taxonomy: str = "vindr22"
    windowing: str = "window"
    max_side: int | None = 1024
    png_compress_level: int = 1
    task_token: str | None = None
    image_wrapper: tuple = ("<Img>", "</Img>")
    stage1_target: str = "local"
    stage1_images: str = "all"
    validation_fraction: float = 0.05
    on_bad_row: str = "raise"
    on_bad_image: str = "raise"
    include_image: bool | None = None

    def __post_init__(self):
        super().__post_init__()
        self.validate()

    def validate(self) -> None:
        """Raise `ValueError` naming the first invalid setting."""
        choices = {
            "dedup": DEDUP_METHODS,
            "conflict_policy": CONFLICT_POLICIES,
            "global_fusion": FUSION_RULES,
            "taxonomy": TAXONOMIES,
            "windowing": WINDOWING_MODES,
            "stage1_target": STAGE1_TARGETS,
            "stage1_images": STAGE1_IMAGES,
            "on_bad_row": BAD_ROW_POLICIES,
            "on_bad_image": BAD_IMAGE_POLICIES,
        }
        check_choices("VinDrCXRConfig", self, choices)
        if self.name not in CONFIG_NAMES:
            raise ValueError(f"unknown VinDr config {self.name!r}; expected one of {CONFIG_NAMES}")
        if not 0.0 <= float(self.dedup_iou) < 1.0:
            raise ValueError(f"dedup_iou must be in [0, 1), got {self.dedup_iou!r}")
        if not 0.0 <= float(self.validation_fraction) < 1.0:
            raise ValueError(f"validation_fraction must be in [0, 1), got {self.validation_fraction!r}")
        if self.max_side is not None and int(self.max_side) < 0:
            raise ValueError(f"max_side must be >= 0 or None, got {self.max_side!r}")
        if not 0 <= int(self.png_compress_level) <= 9:
            raise ValueError(f"png_compress_level must be 0..9, got {self.png_compress_level!r}")
        if len(tuple(self.image_wrapper)) != 2 or not all(isinstance(x, str) for x in self.image_wrapper):
            raise ValueError(f"image_wrapper must be two strings (open, close), got {self.image_wrapper!r}")
        self.image_wrapper = tuple(self.image_wrapper)
        if self.task_token is not None and not isinstance(self.task_token, str):
            raise ValueError(f"task_token must be a string or None, got {self.task_token!r}")

    @property
    def with_image(self) -> bool:
        return self.name != "raw" if self.include_image is None else bool(self.include_image)

    @property
    def local_labels(self) -> tuple[str, ...]:
        return VINDR_LOCAL_LABELS if self.taxonomy == "vindr22" else KAGGLE14_LOCAL_LABELS

    def settings(self) -> dict[str, Any]:
        """The settings as a JSON-ready dict (everything but name/version/data_dir/data_files/description)."""
        skip = {"name", "version", "data_dir", "data_files", "description"}
        out = {}
        for f in dataclasses.fields(self):
            if f.name in skip:
                continue
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


# ======================================================================================================= pure rules


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Continuous pixel IoU of two `(x1, y1, x2, y2)` boxes (no +1 convention)."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def dedup_boxes(boxes: Sequence[Sequence[float]], method: str = "keep_first", iou: float = 0.5) -> list[tuple]:
    """Deduplicate the boxes of one (image, label), given in (`rad_id`, CSV line) order (see `VinDrCXRConfig.dedup`).

    Returns one box per group, groups in order of their first member.
    """
    if method not in DEDUP_METHODS:
        raise ValueError(f"dedup must be one of {DEDUP_METHODS}, got {method!r}")
    boxes = [tuple(float(v) for v in box) for box in boxes]
    if method == "none":
        return boxes
    groups: list[list[tuple]] = []
    references: list[tuple] = []  # representative (keep_first/mean) or running fused box (wbf)
    for box in boxes:
        for k, reference in enumerate(references):
            if box_iou(reference, box) > iou:
                groups[k].append(box)
                if method == "wbf":
                    references[k] = tuple(float(v) for v in np.mean(groups[k], axis=0))
                break
        else:
            groups.append([box])
            references.append(box)
    if method == "keep_first":
        return [group[0] for group in groups]
    return [tuple(float(v) for v in np.mean(group, axis=0)) for group in groups]


def resolve_no_finding(flags: Sequence[int], policy: str = "drop") -> bool | None:
    """Image-level `No finding` from the readers' votes: True (normal), False (abnormal) or None (dropped).

    Unanimous votes are kept as they are; a conflict is resolved by `policy` (see `VinDrCXRConfig.conflict_policy`).
    """
    if policy not in CONFLICT_POLICIES:
        raise ValueError(f"conflict_policy must be one of {CONFLICT_POLICIES}, got {policy!r}")
    flags = [int(f) for f in flags]
    if not flags:
        raise ValueError("no reader votes")
    if len(set(flags)) == 1:
        return flags[0] == 1
    if policy == "drop":
        return None
    if policy == "majority":
        return 2 * sum(flags) > len(flags)
    return False  # union: any finding makes the image abnormal


def fuse_labels(
    reader_labels: Sequence[Iterable[str]], rule: str = "union", num_readers: int | None = None
) -> set[str]:
    """Fuse the label sets of an image's readers: `"union"` or `"majority"` (strictly more than half of
    `num_readers`, default the number of sets)."""
    if rule not in FUSION_RULES:
        raise ValueError(f"global_fusion must be one of {FUSION_RULES}, got {rule!r}")
    sets = [set(labels) for labels in reader_labels]
    if rule == "union":
        return set().union(*sets) if sets else set()
    n = len(sets) if num_readers is None else int(num_readers)
    votes = Counter(label for labels in sets for label in labels)
    return {label for label, count in votes.items() if 2 * count > n}


def is_validation_image(image_id: str, fraction: float = 0.05) -> bool:
    """Deterministic validation membership: the first 8 hex digits of `sha1(image_id)` / 2**32 < `fraction`."""
    if fraction <= 0:
        return False
    digest = hashlib.sha1(str(image_id).encode("utf-8")).hexdigest()
    return int(digest[:8], 16) / 2**32 < fraction


# ======================================================================================================= CSV reading


@dataclass
class _Row:
    """One validated annotation row."""

    line: int
    image_id: str
    rad_id: str | None
    class_name: str | None  # canonical
    class_name_raw: str
    box: tuple[float, float, float, float] | None


@dataclass
class _Reader:
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


class _BadRows:
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


def _read_csv(path: Path):
    import pandas as pd

    if not path.is_file():
        raise FileNotFoundError(f"missing VinDr file {path} (expected the official PhysioNet layout)")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    except Exception as err:
        raise VinDrDataError(f"cannot parse {path}: {type(err).__name__}: {err}") from err
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def _find_columns(frame, path: Path, names: Sequence[str], optional: Sequence[str] = ()) -> dict[str, str | None]:
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


def _read_image_labels(path: Path, split: str, bad: _BadRows) -> dict[str, dict[str | None, _Reader]]:
    """image_id -> {rad_id (None for test): _Reader}, in file order; label columns matched by canonical name."""
    frame = _read_csv(path)
    ids = _find_columns(frame, path, ["image_id"], optional=["rad_id"])
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

    out: dict[str, dict[str | None, _Reader]] = {}
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
        readers[key] = _Reader(rad_id=key, line=line, values=parsed)
    return out


def _read_annotations(path: Path, split: str, bad: _BadRows) -> list[_Row]:
    """Validated rows (label known, box complete/ordered or absent for `No finding`); sizes are checked later."""
    frame = _read_csv(path)
    cols = _find_columns(
        frame, path, ["image_id", "class_name", "x_min", "y_min", "x_max", "y_max"], optional=["rad_id"]
    )
    if split == "train" and cols["rad_id"] is None:
        raise VinDrDataError(f"{path}: missing column 'rad_id' (train annotations are per reader)")
    names = ["image_id", "rad_id", "class_name", "x_min", "y_min", "x_max", "y_max"]
    selected = [cols[n] for n in names if cols[n] is not None]
    rows: list[_Row] = []
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
        rows.append(_Row(line, image_id, rad_id if split == "train" else None, label, raw, box))
    return rows


# ======================================================================================================= DICOM


def _dicom_path(data_dir: Path, split: str, image_id: str) -> Path:
    path = data_dir / split / f"{image_id}.dicom"
    if not path.exists():
        alternative = data_dir / split / f"{image_id}.dcm"
        if alternative.exists():
            return alternative
    return path


def _read_size(path: Path) -> tuple[int, int]:
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


def convert_dicom(
    path: str | os.PathLike,
    windowing: str,
    max_side: int | None,
    compress_level: int,
    expected_size: tuple[int, int] | None = None,
) -> bytes:
    """DICOM file -> PNG bytes of `dicom_to_uint8` (the processor's conversion). Errors name the file."""
    array = dicom_to_uint8(read_dicom(path), windowing=windowing)
    if expected_size is not None and (array.shape[1], array.shape[0]) != tuple(expected_size):
        raise DicomReadError(
            f"{path}: decoded pixels are {array.shape[1]}x{array.shape[0]}, header says "
            f"{expected_size[0]}x{expected_size[1]}"
        )
    return encode_png(array, max_side, compress_level)[0]


# ======================================================================================================= features


def _box_features() -> dict[str, Any]:
    return {
        "box_labels": List(Value("string")),
        "boxes": List(List(Value("float64"), length=4)),
        "grid_boxes": List(List(Value("int32"), length=4)),
    }


_MESSAGES = List({"role": Value("string"), "content": List({"type": Value("string"), "text": Value("string")})})


def _features(config: VinDrCXRConfig) -> Features:
    local = config.local_labels
    if config.name == "raw":
        spec = {
            "image_id": Value("string"),
            "split": Value("string"),
            "rad_id": Value("string"),
            "row": Value("int32"),
            "class_name": Value("string"),
            "class_name_raw": Value("string"),
            "box": List(Value("float64"), length=4),
            "grid_box": List(Value("int32"), length=4),
            "width": Value("int32"),
            "height": Value("int32"),
        }
    elif config.name == "labels":
        spec = {
            "image_id": Value("string"),
            "rad_id": Value("string"),
            "width": Value("int32"),
            "height": Value("int32"),
            **{label: Value("int8") for label in local + VINDR_GLOBAL_LABELS},
            "no_finding": Value("bool"),
            "local_labels": List(Value("string")),
            "global_labels": List(Value("string")),
            **_box_features(),
        }
    else:
        spec = {
            "image_id": Value("string"),
            "width": Value("int32"),
            "height": Value("int32"),
            "no_finding": Value("bool"),
            "local_labels": List(Value("string")),
            "global_labels": List(Value("string")),
            **_box_features(),
            "prompt": _MESSAGES,
            "completion": _MESSAGES,
        }
    if config.with_image:
        spec["images"] = List(ImageFeature())
    return Features(spec)


# ======================================================================================================= builder


def _source_fingerprint(data_dir: str | None) -> str:
    """Cache key part: code of this builder, the shared module and the codec, plus the CSVs' size/mtime."""
    digest = hashlib.sha1()
    here = Path(__file__).resolve()
    import processing_litegpt

    for path in (here, here.with_name("common.py"), Path(processing_litegpt.__file__)):
        try:
            digest.update(path.read_bytes())
        except OSError:
            digest.update(str(path).encode())
    if data_dir:
        for split in SPLITS:
            for name in (f"annotations_{split}.csv", f"image_labels_{split}.csv"):
                path = Path(data_dir).expanduser() / "annotations" / name
                try:
                    stat = path.stat()
                    digest.update(f"{name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
                except OSError:
                    digest.update(f"{name}:missing".encode())
    return digest.hexdigest()[:16]


class VinDrCXR(PreparationLogMixin, datasets.GeneratorBasedBuilder):
    """VinDr-CXR builder (see the module docstring and `VinDrCXRConfig` for every setting)."""

    VERSION = datasets.Version("1.0.0")
    BUILDER_CONFIG_CLASS = VinDrCXRConfig
    BUILDER_CONFIGS = [
        VinDrCXRConfig(name="raw", version=VERSION, description="Every annotation CSV row, per reader, never fused."),
        VinDrCXRConfig(name="labels", version=VERSION, description="Image x reader labels and boxes (by column name)."),
        VinDrCXRConfig(name="grounding", version=VERSION, description="Stage 1: findings with 0-100 grid boxes."),
        VinDrCXRConfig(name="diagnosis", version=VERSION, description="Stage 2: global diseases."),
    ]
    preprocessing_log_name = PREPROCESSING_LOG
    worker_skips_dirname = "_vindr_skips"
    DEFAULT_CONFIG_NAME = "grounding"
    CARD_TITLE = "VinDr-CXR for LiteGPT-CXR"
    DEFAULT_WRITER_BATCH_SIZE = 100  # rows carry ~1 MB PNGs

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("hash", _source_fingerprint(kwargs.get("data_dir")))
        super().__init__(*args, **kwargs)
        # datasets ignores config overrides whose value is None (`max_side=None` would silently stay 1024); the
        # config id (cache folder) already includes them, so apply them here.
        settings = {f.name for f in dataclasses.fields(VinDrCXRConfig)} - {"name", "version", "description"}
        explicit_none = [key for key, value in kwargs.items() if value is None and key in settings]
        for key in explicit_none:
            setattr(self.config, key, None)
        self.config.validate()
        if explicit_none:
            self.info.features = _features(self.config)
        self._log: dict[str, Any] | None = None

    # ----------------------------------------------------------------------------------------------- info
    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(
            description=f"VinDr-CXR ({self.config.name}) for LiteGPT-CXR",
            features=_features(self.config),
            homepage="https://physionet.org/content/vindr-cxr/1.0.0/",
            license="PhysioNet Credentialed Health Data License 1.5.0 (credentialed access; do not redistribute)",
            citation=(
                "Nguyen, H. Q. et al. VinDr-CXR: An open dataset of chest X-rays with radiologist's annotations. "
                "Scientific Data 9, 429 (2022)."
            ),
        )

    # ----------------------------------------------------------------------------------------------- prepare
    def download_and_prepare(self, *args, **kwargs):
        """`datasets`' download_and_prepare (atomic: `.incomplete` folder renamed on success) with the input error
        of a failed conversion surfaced (it names the file) instead of datasets' generic wrapper."""
        try:
            return super().download_and_prepare(*args, **kwargs)
        except DatasetGenerationError as err:
            cause = input_error_cause(err, (DicomReadError, VinDrDataError, FileNotFoundError))
            if cause is None:
                raise
            raise type(cause)(f"{cause} (nothing was written to the cache)") from err

    def _make_split_generators_kwargs(self, prepare_split_kwargs):
        return {"num_proc": prepare_split_kwargs.get("num_proc")}

    def _split_generators(self, dl_manager, num_proc: int | None = None):
        if not self.config.data_dir:
            raise ValueError("VinDrCXR needs data_dir=<the vindr-cxr/1.0.0 folder> (credentialed PhysioNet download)")
        data_dir = Path(self.config.data_dir).expanduser().resolve()
        plan, log = build_plan(data_dir, self.config, num_threads=max(1, 4 * int(num_proc or 1)))
        self._log = log
        self._plan_skips = log["skipped"]
        generators = []
        for split in ("train", "validation", "test"):
            if split not in plan:
                continue
            items = plan[split]
            if not items:  # datasets cannot read back a split without rows
                logger.warning("VinDr %s: no image for the %s split; the split is omitted", self.config.name, split)
                log["counts"].setdefault("empty_splits_omitted", []).append(split)
                continue
            generators.append(datasets.SplitGenerator(name=split, gen_kwargs={"items": items, "split": split}))
        return generators

    def _download_and_prepare(self, dl_manager, verification_mode, **prepare_splits_kwargs):
        super()._download_and_prepare(dl_manager, verification_mode, **prepare_splits_kwargs)
        skips = SkipLog.from_summary(self._plan_skips, name="vindr")
        decode_skips = self._collect_worker_skips(("train", "validation", "test"))
        log = self._finish_preprocessing_log(
            skips,
            decode_skips,
            {"decode_skipped": len(decode_skips)},
            f"VinDr-CXR ({self.config.name})",
            empty_splits_key="empty_splits_omitted",
        )
        logger.info("VinDr %s rows: %s; skipped: %s", self.config.name, log["rows"], skips.counts())

    def _generate_examples(self, items: list[dict], split: str) -> Iterator[tuple[str, dict]]:
        config = self.config
        for item in items:
            rows = item["rows"]
            if config.with_image:
                try:
                    png = convert_dicom(
                        item["path"],
                        config.windowing,
                        config.max_side or None,
                        config.png_compress_level,
                        expected_size=(item["width"], item["height"]),
                    )
                except (DicomReadError, OSError) as err:
                    message = str(err) if item["path"] in str(err) else f"{item['path']}: {err}"
                    if config.on_bad_image == "raise":
                        raise DicomReadError(
                            f"{message}\nBuild with on_bad_image='skip' to skip such images (counted and listed)."
                        ) from err
                    self._record_decode_skip(split, item, message)
                    continue
                image = [{"bytes": png, "path": f"{item['image_id']}.png"}]
                rows = [{**row, "images": image} for row in rows]
            for k, row in enumerate(rows):
                yield f"{item['image_id']}/{k}", row

    def _record_decode_skip(self, split: str, item: dict, message: str) -> None:
        logger.warning("[vindr] skipped %s: dicom_decode_failed (%s)", item["path"], message)
        self._record_worker_skip(
            {"split": split, "index": item["index"], "item": message, "reason": "dicom_decode_failed"}
        )


# ======================================================================================================= plan


def _sort_boxes(findings: list[tuple[str, tuple]], width: int, height: int):
    """Findings sorted as the codec sorts them (label index, grid box), pixel box as tie-breaker."""
    order = {label: k for k, label in enumerate(VINDR_LOCAL_LABELS)}
    keyed = [(label, box, box_to_grid(box, width, height)) for label, box in findings]
    keyed.sort(key=lambda t: (order[t[0]], t[2], t[1]))
    return {
        "box_labels": [label for label, _, _ in keyed],
        "boxes": [list(box) for _, box, _ in keyed],
        "grid_boxes": [list(grid) for _, _, grid in keyed],
    }


def _task_tokens(config: VinDrCXRConfig, task: str) -> dict[str, str]:
    tokens = dict(DEFAULT_TASK_TOKENS)
    if config.task_token is not None:
        tokens[task] = config.task_token
    return tokens


def _training_row(
    config: VinDrCXRConfig,
    image_id: str,
    width: int,
    height: int,
    normal: bool,
    local: set[str],
    global_: set[str],
    findings: list[tuple[str, tuple]],
) -> dict:
    boxes = _sort_boxes(findings, width, height)
    global_labels = [NO_FINDING] if normal else [label for label in GLOBAL_DISEASES if label in global_]
    local_labels = [label for label in config.local_labels if label in local]
    if config.name == "grounding":
        task = "grounding"
        answer = format_grounding_answer(
            list(zip(boxes["box_labels"], boxes["boxes"])), width, height, no_finding=normal, labels=VINDR_LOCAL_LABELS
        )
        if config.stage1_target == "global+local":
            answer = f"{format_diagnosis_answer(global_labels)} {answer}"
    else:
        task = "diagnosis"
        answer = format_diagnosis_answer(global_labels)
    return {
        "image_id": image_id,
        "width": width,
        "height": height,
        "no_finding": bool(normal),
        "local_labels": local_labels,
        "global_labels": global_labels,
        **boxes,
        "prompt": prompt_messages(task, task_tokens=_task_tokens(config, task)),
        "completion": completion_messages(answer),
    }


def _empty_counts() -> dict[str, Any]:
    return {
        "labels_csv_rows": 0,
        "annotation_rows": 0,
        "images_in_labels_csv": 0,
        "images_skipped": 0,
        "images": 0,
        "readers_per_image": {},
        "conflict_images": 0,
        "conflict_dropped": 0,
        "conflict_resolved_normal": 0,
        "conflict_resolved_abnormal": 0,
        "normal_images": 0,
        "abnormal_images": 0,
        "abnormal_images_without_boxes": 0,
        "stage1_images_without_boxes": 0,
        "boxes_in": 0,
        "boxes_dropped_taxonomy": 0,
        "boxes_dropped_fusion": 0,
        "boxes_dropped_dedup": 0,
        "boxes_out": 0,
        "reader_box_class_not_in_labels_csv": 0,
        "dicom_files_without_labels": 0,
    }


def build_plan(data_dir: Path, config: VinDrCXRConfig, num_threads: int = 4) -> tuple[dict[str, list[dict]], dict]:
    """Read and validate the CSVs and DICOM headers and apply every preprocessing rule (main process).

    Returns `({split: [item]}, log)`; an item is `{"index", "image_id", "path", "width", "height", "rows"}` where
    `rows` are the finished rows of that image (without the image). `log` holds settings, counts, skipped and the ids
    dropped by preprocessing. Raises `VinDrDataError`/`DicomReadError`/`FileNotFoundError` per the policies.
    """
    data_dir = Path(data_dir)
    skips = SkipLog(name="vindr")
    bad = _BadRows(config.on_bad_row, skips)
    counts: dict[str, Any] = {split: _empty_counts() for split in SPLITS}
    dropped: dict[str, list[str]] = {"conflict": [], "stage1_without_boxes": []}

    tables = {}
    for split in SPLITS:
        labels_path = data_dir / "annotations" / f"image_labels_{split}.csv"
        ann_path = data_dir / "annotations" / f"annotations_{split}.csv"
        readers = _read_image_labels(labels_path, split, bad)
        rows = _read_annotations(ann_path, split, bad)
        counts[split]["labels_csv_rows"] = sum(len(r) for r in readers.values())
        counts[split]["annotation_rows"] = len(rows)
        tables[split] = (readers, rows, ann_path)

    # Cross-file checks: annotation rows need a labels row for their image and reader.
    by_image: dict[str, dict[str, list[_Row]]] = {split: defaultdict(list) for split in SPLITS}
    for split in SPLITS:
        readers, rows, ann_path = tables[split]
        for row in rows:
            where = f"{ann_path.name} line {row.line} (image_id={row.image_id!r}" + (
                f", rad_id={row.rad_id!r})" if split == "train" else ")"
            )
            if row.image_id not in readers:
                bad.add(split, row.image_id, where, "image_not_in_labels_csv", f"image not in image_labels_{split}.csv")
                continue
            if row.rad_id not in readers[row.image_id]:
                bad.add(
                    split,
                    row.image_id,
                    where,
                    "reader_not_in_labels_csv",
                    f"reader {row.rad_id!r} has no row for this image in image_labels_{split}.csv",
                )
                continue
            by_image[split][row.image_id].append(row)
        # A reader with No finding = 1 must not report findings.
        contradictions: list[tuple[str, str | None]] = []
        for image_id, image_readers in readers.items():
            for reader in image_readers.values():
                if not reader.no_finding:
                    continue
                own_boxes = [r for r in by_image[split].get(image_id, []) if r.rad_id == reader.rad_id and r.box]
                labelled = sorted(reader.local() | reader.global_())
                if own_boxes or labelled:
                    where = f"image_labels_{split}.csv line {reader.line} (image_id={image_id!r}" + (
                        f", rad_id={reader.rad_id!r})" if split == "train" else ")"
                    )
                    detail = (
                        f"'No finding'=1 together with findings {labelled or sorted({r.class_name for r in own_boxes})}"
                    )
                    bad.add(split, image_id, where, "reader_contradiction", detail)
                    contradictions.append((image_id, reader.rad_id))
        if config.on_bad_row == "skip_row":  # drop the contradicting reader: its labels row and its annotation rows
            for image_id, rad_id in contradictions:
                readers[image_id].pop(rad_id, None)
                by_image[split][image_id] = [r for r in by_image[split].get(image_id, []) if r.rad_id != rad_id]
                if not readers[image_id]:
                    del readers[image_id]
                    skips.skip(f"{split}/{image_id}", "no_valid_reader")
    bad.check()  # raise policy: every bad row at once, before touching a DICOM

    # DICOM headers (sizes), in parallel threads; missing/unreadable files follow on_bad_image.
    for split in SPLITS:
        readers = tables[split][0]
        present = {p.stem for p in (data_dir / split).glob("*.dicom")} if (data_dir / split).is_dir() else set()
        counts[split]["dicom_files_without_labels"] = len(present - set(readers))
    jobs = [
        (split, image_id)
        for split in SPLITS
        for image_id in tables[split][0]
        if (split, image_id) not in bad.bad_images
    ]
    paths = {job: _dicom_path(data_dir, *job) for job in jobs}

    def probe(job):
        try:
            return job, _read_size(paths[job]), None
        except (DicomReadError, FileNotFoundError) as err:
            return job, None, err

    sizes: dict[tuple[str, str], tuple[int, int]] = {}
    with ThreadPoolExecutor(max_workers=max(1, num_threads)) as pool:
        for job, size, err in pool.map(probe, jobs):
            if err is None:
                sizes[job] = size
            elif config.on_bad_image == "raise":
                raise type(err)(f"{err}\nBuild with on_bad_image='skip' to skip such images (counted and listed).")
            else:
                reason = "dicom_missing" if isinstance(err, FileNotFoundError) else "dicom_unreadable"
                skips.skip(str(err), reason)

    # Boxes outside the image (needs the DICOM size).
    for split in SPLITS:
        _, _, ann_path = tables[split]
        for image_id, rows in by_image[split].items():
            size = sizes.get((split, image_id))
            if size is None:
                continue
            width, height = size
            kept = []
            for row in rows:
                if row.box is not None:
                    x1, y1, x2, y2 = row.box
                    if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
                        where = (
                            f"{ann_path.name} line {row.line} (image_id={image_id!r}"
                            + (f", rad_id={row.rad_id!r}" if split == "train" else "")
                            + f", class_name={row.class_name_raw!r})"
                        )
                        bad.add(
                            split,
                            image_id,
                            where,
                            "box_outside_image",
                            f"box {list(row.box)} outside the {width}x{height} image",
                        )
                        continue
                kept.append(row)
            by_image[split][image_id] = kept
    bad.check()

    plan: dict[str, list[dict]] = {"train": [], "test": []}
    if config.validation_fraction > 0:
        plan["validation"] = []
    index = 0
    for split in SPLITS:
        readers_by_image, _, _ = tables[split]
        c = counts[split]
        c["images_in_labels_csv"] = len(readers_by_image)
        for image_id, image_readers in readers_by_image.items():
            key = (split, image_id)
            if key in bad.bad_images or key not in sizes:
                c["images_skipped"] += 1  # listed in the skip log (bad row with skip_image, or DICOM problem)
                continue
            width, height = sizes[key]
            rows = by_image[split].get(image_id, [])
            out_split = split
            if split == "train" and is_validation_image(image_id, config.validation_fraction):
                out_split = "validation"
            built = _image_rows(config, split, image_id, width, height, image_readers, rows, c, dropped)
            if not built:
                continue
            if out_split == "train" and _dropped_from_stage1(config, built):
                c["stage1_images_without_boxes"] += 1
                dropped["stage1_without_boxes"].append(image_id)
                continue
            c["images"] += 1
            plan[out_split].append(
                {
                    "index": index,
                    "image_id": image_id,
                    "path": str(paths[key]),
                    "width": width,
                    "height": height,
                    "rows": built,
                }
            )
            index += 1
        c["readers_per_image"] = {str(k): v for k, v in sorted(c["readers_per_image"].items())}
    counts["output_images"] = {split: len(items) for split, items in plan.items()}
    counts["output_rows"] = {split: sum(len(i["rows"]) for i in items) for split, items in plan.items()}
    for split in SPLITS:
        logger.info("VinDr %s/%s counts: %s", config.name, split, counts[split])
    logger.info("VinDr %s output: images %s, rows %s", config.name, counts["output_images"], counts["output_rows"])
    log = {"settings": config.settings(), "counts": counts, "skipped": skips.summary(), "dropped": dropped}
    return plan, log


def _dropped_from_stage1(config: VinDrCXRConfig, rows: list[dict]) -> bool:
    """`stage1_images="with_boxes"`: a stage-1 training image whose target lists no box is left out."""
    return config.name == "grounding" and config.stage1_images == "with_boxes" and not any(row["boxes"] for row in rows)


def _image_rows(
    config: VinDrCXRConfig,
    split: str,
    image_id: str,
    width: int,
    height: int,
    readers: dict[str | None, _Reader],
    rows: list[_Row],
    c: dict,
    dropped: dict,
) -> list[dict]:
    """The finished rows of one image for the configured view (empty when the image is dropped)."""
    c["readers_per_image"][len(readers)] = c["readers_per_image"].get(len(readers), 0) + 1
    local_allowed = set(config.local_labels)

    if config.name == "raw":
        out = []
        for row in sorted(rows, key=lambda r: r.line):
            out.append(
                {
                    "image_id": image_id,
                    "split": split,
                    "rad_id": row.rad_id,
                    "row": row.line,
                    "class_name": row.class_name,
                    "class_name_raw": row.class_name_raw,
                    "box": list(row.box) if row.box else None,
                    "grid_box": list(box_to_grid(row.box, width, height)) if row.box else None,
                    "width": width,
                    "height": height,
                }
            )
        return out

    if config.name == "labels":
        out = []
        for rad_id, reader in readers.items():
            own = [(r.class_name, r.box) for r in rows if r.rad_id == rad_id and r.box is not None]
            c["boxes_in"] += len(own)
            kept = [(label, box) for label, box in own if label in local_allowed]
            c["boxes_dropped_taxonomy"] += len(own) - len(kept)
            c["boxes_out"] += len(kept)
            normal = bool(reader.no_finding)
            out.append(
                {
                    "image_id": image_id,
                    "rad_id": rad_id,
                    "width": width,
                    "height": height,
                    **{label: int(reader.values[label]) for label in config.local_labels + VINDR_GLOBAL_LABELS},
                    "no_finding": normal,
                    "local_labels": [label for label in config.local_labels if reader.values[label]],
                    "global_labels": [NO_FINDING] if normal else [g for g in GLOBAL_DISEASES if reader.values[g]],
                    **_sort_boxes(kept, width, height),
                }
            )
        return out

    # grounding / diagnosis: fuse the readers (train) or take the consensus (test).
    ordered = sorted(readers.values(), key=lambda r: r.rad_id or "")
    flags = [r.no_finding for r in ordered]
    boxes = [r for r in rows if r.box is not None]
    c["boxes_in"] += len(boxes)
    if split == "train":
        normal = resolve_no_finding(flags, config.conflict_policy)
        if len(set(flags)) > 1:
            c["conflict_images"] += 1
            if normal is None:
                c["conflict_dropped"] += 1
                dropped["conflict"].append(image_id)
                return []
            c["conflict_resolved_normal" if normal else "conflict_resolved_abnormal"] += 1
    else:
        normal = bool(flags[0])

    if normal:
        c["normal_images"] += 1
        c["boxes_dropped_fusion"] += len(boxes)  # only readers overruled by a majority 'No finding' have boxes here
        return [_training_row(config, image_id, width, height, True, set(), set(), [])]

    # Per reader: labels CSV flags plus the classes of the reader's own boxes.
    reader_local = []
    for reader in ordered:
        own_classes = {r.class_name for r in boxes if r.rad_id == reader.rad_id}
        missing = own_classes - reader.local()
        c["reader_box_class_not_in_labels_csv"] += len(missing)
        reader_local.append(reader.local() | own_classes)
    if split == "train":
        local = fuse_labels(reader_local, config.global_fusion)
        global_ = fuse_labels([r.global_() for r in ordered], config.global_fusion)
    else:
        local, global_ = reader_local[0], ordered[0].global_()
    local_taxonomy = local & local_allowed

    findings: list[tuple[str, tuple]] = []
    for label in VINDR_LOCAL_LABELS:
        group = [r for r in boxes if r.class_name == label]
        if not group:
            continue
        if label not in local_allowed:
            c["boxes_dropped_taxonomy"] += len(group)
            continue
        if label not in local_taxonomy:
            c["boxes_dropped_fusion"] += len(group)
            continue
        group.sort(key=lambda r: (r.rad_id or "", r.line))  # (rad_id as a string, CSV line)
        if split == "train":
            kept = dedup_boxes([r.box for r in group], config.dedup, config.dedup_iou)
        else:
            kept = [r.box for r in group]
        c["boxes_dropped_dedup"] += len(group) - len(kept)
        findings += [(label, tuple(box)) for box in kept]
    c["boxes_out"] += len(findings)
    c["abnormal_images"] += 1
    if not findings:
        c["abnormal_images_without_boxes"] += 1
    return [_training_row(config, image_id, width, height, False, local_taxonomy, global_, findings)]


# ======================================================================================================= CLI


def main(argv: list[str] | None = None) -> int:
    run_builder_cli(VinDrCXR, "Build VinDr-CXR (raw, labels, grounding, diagnosis) for LiteGPT-CXR.", argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
