"""MIMIC-CXR / MIMIC-CXR-JPG (PhysioNet, credentialed) as a `datasets.GeneratorBasedBuilder`.

`datasets` >= 4 no longer runs loading scripts: instantiate the builder directly.

```python
from datasets_scripts.mimic_cxr import MIMICCXR

builder = MIMICCXR(config_name="existence", data_dir="/data/physionet.org/files")
builder.download_and_prepare(num_proc=8)
ds = builder.as_dataset()        # DatasetDict(train, validation, test)
builder.skipped                  # {reason: count, "items": [...]}: everything dropped, never silent
builder.counts                   # preprocessing counts (views, targets, labels, rules-vs-CheXpert agreement...)
```

or `python -m datasets_scripts.mimic_cxr --data_dir DIR [--config report] [--num_proc 8] [--set views=PA,AP ...]
[--export out/] [--push_to_hub me/mimic-cxr-litegpt]` (Parquet + card with YAML `configs:`; the push is always
private: the data use agreement forbids redistribution).

Input (official layouts, docs/design.md "MIMIC-CXR")
----------------------------------------------------
`data_dir` is either one release folder or a folder holding them (``mimic-cxr/<version>``,
``mimic-cxr-jpg/<version>``, also under ``physionet.org/files/``); every file is searched in all of them:

* images ``files/pXX/p<subject_id>/s<study_id>/<dicom_id>.dcm`` (MIMIC-CXR) or ``.jpg`` (MIMIC-CXR-JPG);
  `image_format="auto"` uses the DICOM tree when there is one (the paper's 8-bit conversion), else the JPG tree;
* reports ``files/pXX/p<subject_id>/s<study_id>.txt`` or the reports archive ``mimic-cxr-reports.zip``;
* ``mimic-cxr-2.0.0-metadata.csv(.gz)`` (`ViewPosition`, `Rows`, `Columns`, ...; required) and
  ``mimic-cxr-2.0.0-split.csv(.gz)`` (`train`/`validate`/`test`, used as is; required), both from MIMIC-CXR-JPG;
* ``mimic-cxr-2.0.0-chexpert.csv(.gz)`` and ``mimic-cxr-2.0.0-negbio.csv(.gz)`` (per study, joined on
  (`subject_id`, `study_id`); required only when `label_source` names them). Cells: ``1.0`` -> 1, ``0.0`` -> 0,
  ``-1.0`` -> -1 (uncertain), blank -> null (not mentioned): the four states stay distinct everywhere.

Configs (splits `train`, `validation` (official `validate`), `test`; a split without rows is left out and listed
in `counts["empty_splits"]`)
--------------------------------------------------------------------------------------------------------------
* `raw` - one row per selected image: ids, split, view, `width`/`height` (metadata `Columns`/`Rows`), paths, the
  full report, its cleaned `findings`/`impression`/`last_paragraph` and every section, the 14 CheXpert and NegBio
  labels, the rules labels of the six entities and every triplet. No image unless `include_image=True`.
* `report` - findings (else impression) generation: TRL prompt-completion row (`images: List(Image())`, `prompt`
  from `prompt_messages("report")` = ``[caption] Please write the findings section ...``, `completion` = the
  cleaned target section) + ids, view, `width`, `height`, `target_section`.
* `existence` - one row per (image, entity) with a known answer: prompt ``[vqa] Is there {entity} in this chest
  X-ray? Answer yes or no.`` (entity in lower case), completion ``Yes`` (label 1) / ``No`` (label 0), plus the
  entity, the label and its source, the rules / CheXpert / NegBio labels of that entity and the rules' position
  words. Uncertain (-1) and unmentioned (null) answers are never turned into rows (counted per entity and study in
  `counts["existence_not_trained"]`; trained answers in `counts["existence_answers"]`).

Existence values (one convention for rules, CheXpert and NegBio)
----------------------------------------------------------------
Per mention (rules triplets): 1 present, 0 absent, -1 uncertain. Per study and entity: 1, 0, -1 or null, where
null means "not mentioned" (the rules aggregate mentions as the CheXpert labeler does: 1 if any mention is 1, else
-1 if any is uncertain, else 0, else null). CheXpert/NegBio cells map 1.0 -> 1, 0.0 -> 0, -1.0 -> -1, blank -> null,
so the three sources share these four states and are compared one to one (`counts["agreement"][source][entity]`:
every (rules, other) pair, and the agreement rate where both are 0/1). Only 1 and 0 become training rows.

Report parsing and entity rules are in `datasets_scripts/mimic_reports.py` (sections as MIT-LCP's
`section_parser.py`; MedKLIP-style triplets with negation and uncertainty; study label 1 > -1 > 0 > null, the
CheXpert labeler's aggregation). The documented preprocessing of every text column is `clean_section_text`: cut
at the first underscore separator line, collapse whitespace; PHI ``___`` kept.

Images: DICOM -> `processing_litegpt.dicom_to_uint8` (window tags or full range, MONOCHROME1 inverted); JPG ->
decoded 8-bit; both stored as PNG (downscaled to `max_side`), with the source `width`/`height`.

Bad input is never silent: a missing or undecodable image, a missing report or one without any usable section,
a malformed CSV row raise an error naming the file (and CSV line), or - with `on_bad_image="skip"` /
`on_bad_report="skip"` - are skipped, logged, counted and listed in `builder.skipped` (also in
`mimic_preprocessing.json` in the prepared cache folder and in `info.description`). Malformed CSV rows always raise.
A failed `download_and_prepare` leaves no prepared cache (datasets writes into `<dir>.incomplete`, removed on
failure, renamed on success).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
import sys
import zipfile
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
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
    CHEXPERT_LABELS,
    DEFAULT_TASK_TOKENS,
    WINDOWING_MODES,
    completion_messages,
    dicom_to_uint8,
    minmax_to_uint8,
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
from datasets_scripts.mimic_reports import (
    ABSENT,
    ENTITIES,
    ENTITY_CHEXPERT_COLUMN,
    PRESENT,
    REPORT_SECTION_CHOICES,
    UNCERTAIN,
    chexpert_value,
    extract_triplets,
    labeling_text,
    parse_sections,
    report_target,
    study_labels,
)

__all__ = [
    "MIMICCXR",
    "MIMICCXRConfig",
    "MIMICDataError",
    "MIMICImageError",
    "MimicLayout",
    "CONFIG_NAMES",
    "CHEXPERT_LABELS",
    "find_layout",
    "select_images",
    "convert_image",
    "main",
]

logger = logging.getLogger(__name__)

CONFIG_NAMES = ("raw", "report", "existence")
IMAGE_FORMATS = ("auto", "dicom", "jpg")
LABEL_SOURCES = ("rules", "chexpert", "negbio")
BAD_IMAGE_POLICIES = ("raise", "skip")
BAD_REPORT_POLICIES = ("raise", "skip")
FRONTAL_VIEWS = ("PA", "AP")
ALL_VIEWS = "all"
# official split value -> datasets split name
SPLIT_NAMES = {"train": "train", "validate": "validation", "test": "test"}
SPLIT_ORDER = ("train", "validation", "test")
# view preference when `views` is "all" (otherwise the order of `views`): frontal first, PA before AP
_DEFAULT_VIEW_ORDER = ("PA", "AP", "LATERAL", "LL")

CSV_NAMES = {
    "metadata": "mimic-cxr-2.0.0-metadata",
    "split": "mimic-cxr-2.0.0-split",
    "chexpert": "mimic-cxr-2.0.0-chexpert",
    "negbio": "mimic-cxr-2.0.0-negbio",
}
REPORTS_ARCHIVES = ("mimic-cxr-reports.zip",)
PREPROCESSING_LOG = "mimic_preprocessing.json"
_METADATA_OPTIONAL = (
    "StudyDate", "StudyTime", "PerformedProcedureStepDescription", "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
)
_REPORT_PATH_RE = re.compile(r"p(\d+)/s(\d+)\.txt$")


class MIMICDataError(ValueError):
    """The MIMIC-CXR files do not match the official layout; the message names the file (and CSV line)."""


class MIMICImageError(MIMICDataError):
    """An image file is missing or cannot be decoded; the message names the file. `reason` is `"image_missing"` or
    `"image_unreadable"` (the skip reason with `on_bad_image="skip"`)."""

    def __init__(self, message: str, reason: str = "image_unreadable"):
        super().__init__(message)
        self.reason = reason


def _as_optional_bool(name: str, value: Any) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    if text in ("none", "null", "auto"):
        return None
    raise ValueError(f"MIMICCXRConfig.{name} must be true, false or None, got {value!r}")


# ======================================================================================================= config


@dataclass
class MIMICCXRConfig(datasets.BuilderConfig):
    """Settings of the MIMIC-CXR builder.

    Attributes:
        image_format: `"auto"` (default: the DICOM tree when `data_dir` has one, else the JPG tree), `"dicom"` or
            `"jpg"`.
        views: `ViewPosition` values kept, in order of preference (default `("PA", "AP")`: frontal); `"all"` /
            `("all",)` / None keeps every image (an empty `ViewPosition` included). Filtered images are counted
            per view.
        one_image_per_study: keep one image per study: the first by (rank of its view in `views`, `dicom_id`), i.e.
            PA before AP, then the smallest `dicom_id`. None (default) -> True for `report` and
            `existence` (labels and targets are per study, a second frontal image would duplicate them), False
            for `raw`.
        report_section: target of `report`: `"findings"` (default: findings, else impression), `"impression"`
            (impression, else findings) or `"findings+impression"` (both joined by a space; either alone when the
            other is missing).
        fallback_last_paragraph: when a report has neither findings nor impression, use its last paragraph (the
            MIT-LCP fallback) as the target / text to label (default True). Otherwise such a report is "without
            sections" (`on_bad_report`).
        label_source: answers of `existence`: `"rules"` (default, MedKLIP-style rules on findings + impression,
            `mimic_reports.py`), `"chexpert"` or `"negbio"` (the CSVs; Opacity -> `Lung Opacity`, Effusion ->
            `Pleural Effusion`). In every case only 1 (Yes) and 0 (No) make rows; -1 (uncertain) and null (not
            mentioned) are counted, never trained.
        entities: entities of `existence` (default the six MedKLIP-style entities of `mimic_reports.ENTITIES`, in that order).
        windowing: DICOM -> 8-bit mode of `processing_litegpt.dicom_to_uint8`: `"window"` (default), `"voi_lut"`,
            `"minmax"`.
        max_side: longest side of the stored PNG (default 1024; 0 keeps the source size). `width`/`height` are
            always the source image's size.
        png_compress_level: zlib level of the stored PNG (0-9, default 1; lossless at every level).
        task_token: task token of the prompt (None -> `DEFAULT_TASK_TOKENS`: `[caption]` for report, `[vqa]` for
            existence).
        image_wrapper: the text the chat template puts around the image placeholder (default `("<Img>", "</Img>")`);
            rows hold a bare `{"type": "image"}` block, the wrapper is recorded in the settings/card.
        on_bad_image: a missing or undecodable image: `"raise"` (default; error naming the file) or `"skip"` (its
            rows dropped, counted and listed in `builder.skipped`).
        on_bad_report: a report that is missing, unreadable or has no usable section (no findings, impression or
            last paragraph), when the config needs it (`report`; `existence` with `label_source="rules"`):
            `"skip"` (default: the study is dropped, counted and listed; the full MIMIC-CXR has such reports) or
            `"raise"`. Configs that do not need the text keep the study and count it.
        include_image: add the `images` column (None -> every config except `raw`).
    """

    image_format: str = "auto"
    views: tuple | str | None = FRONTAL_VIEWS
    one_image_per_study: bool | None = None
    report_section: str = "findings"
    fallback_last_paragraph: bool = True
    label_source: str = "rules"
    entities: tuple = ENTITIES
    windowing: str = "window"
    max_side: int | None = 1024
    png_compress_level: int = 1
    task_token: str | None = None
    image_wrapper: tuple = ("<Img>", "</Img>")
    on_bad_image: str = "raise"
    on_bad_report: str = "skip"
    include_image: bool | None = None

    def __post_init__(self):
        super().__post_init__()
        self.validate()

    def validate(self) -> None:
        """Raise `ValueError` naming the first invalid setting (and normalise list-like settings to tuples)."""
        choices = {
            "image_format": IMAGE_FORMATS,
            "report_section": REPORT_SECTION_CHOICES,
            "label_source": LABEL_SOURCES,
            "windowing": WINDOWING_MODES,
            "on_bad_image": BAD_IMAGE_POLICIES,
            "on_bad_report": BAD_REPORT_POLICIES,
        }
        check_choices("MIMICCXRConfig", self, choices)
        if self.name not in CONFIG_NAMES:
            raise ValueError(f"unknown MIMIC-CXR config {self.name!r}; expected one of {CONFIG_NAMES}")
        views = self.views
        if isinstance(views, str):
            views = tuple(v.strip() for v in views.split(","))
        if views is not None:
            views = tuple(str(v).strip() for v in views)
            if not views or any(not v for v in views):
                raise ValueError(f"views must be view names (e.g. ('PA', 'AP')) or 'all', got {self.views!r}")
            if any(v.lower() == ALL_VIEWS for v in views):
                views = (ALL_VIEWS,)
            else:
                views = tuple(v.upper() for v in views)
        self.views = views
        self.entities = tuple(self.entities)
        unknown = [e for e in self.entities if e not in ENTITIES]
        if unknown or not self.entities or len(set(self.entities)) != len(self.entities):
            raise ValueError(f"entities must be distinct names among {ENTITIES}, got {self.entities!r}")
        self.one_image_per_study = _as_optional_bool("one_image_per_study", self.one_image_per_study)
        self.include_image = _as_optional_bool("include_image", self.include_image)
        self.fallback_last_paragraph = bool(_as_optional_bool("fallback_last_paragraph", self.fallback_last_paragraph))
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
    def all_views(self) -> bool:
        return self.views is None or self.views == (ALL_VIEWS,)

    @property
    def one_per_study(self) -> bool:
        return self.name != "raw" if self.one_image_per_study is None else bool(self.one_image_per_study)

    @property
    def with_image(self) -> bool:
        return self.name != "raw" if self.include_image is None else bool(self.include_image)

    @property
    def needs_report(self) -> bool:
        """True when a study cannot make rows without its report text."""
        return self.name == "report" or (self.name == "existence" and self.label_source == "rules")

    def settings(self) -> dict[str, Any]:
        """The settings as a JSON-ready dict (everything but name/version/data_dir/data_files/description)."""
        skip = {"name", "version", "data_dir", "data_files", "description"}
        out = {}
        for f in dataclasses.fields(self):
            if f.name in skip:
                continue
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        out["resolved"] = {
            "one_image_per_study": self.one_per_study,
            "include_image": self.with_image,
            "views": ALL_VIEWS if self.all_views else list(self.views),
        }
        return out


# ======================================================================================================= layout


@dataclass
class MimicLayout:
    """Where everything was found (absolute paths)."""

    roots: list[Path]
    csv: dict[str, Path | None]
    image_root: Path | None
    image_format: str | None
    report_roots: list[Path]
    reports_archive: Path | None

    def describe(self) -> dict[str, Any]:
        return {
            "roots": [str(r) for r in self.roots],
            "csv": {k: (str(v) if v else None) for k, v in self.csv.items()},
            "image_root": str(self.image_root) if self.image_root else None,
            "image_format": self.image_format,
            "report_roots": [str(r) for r in self.report_roots],
            "reports_archive": str(self.reports_archive) if self.reports_archive else None,
        }


def _version_dirs(folder: Path) -> list[Path]:
    """Version sub-folders (`2.1.0`, ...) newest first, then the folder itself."""
    if not folder.is_dir():
        return []
    subs = [p for p in folder.iterdir() if p.is_dir() and re.fullmatch(r"\d+(\.\d+)*", p.name)]
    subs.sort(key=lambda p: tuple(int(x) for x in p.name.split(".")), reverse=True)
    return subs + [folder]


def candidate_roots(data_dir: str | os.PathLike) -> list[Path]:
    """`data_dir` and the MIMIC-CXR(-JPG) release folders below it (also under `physionet.org/files/`)."""
    base = Path(data_dir).expanduser().resolve()
    roots = [base]
    for parent in (base, base / "physionet.org" / "files", base / "files"):
        for name in ("mimic-cxr-jpg", "mimic-cxr"):
            roots += _version_dirs(parent / name)
    seen, out = set(), []
    for root in roots:
        if root.is_dir() and root not in seen:
            seen.add(root)
            out.append(root)
    return out


def _find_csv(roots: Sequence[Path], stem: str) -> Path | None:
    for root in roots:
        for suffix in (".csv.gz", ".csv"):
            path = root / f"{stem}{suffix}"
            if path.is_file():
                return path
    return None


def image_relpath(subject_id: str, study_id: str, dicom_id: str, ext: str) -> str:
    """`files/pXX/p<subject>/s<study>/<dicom_id>.<ext>` (pXX = first 3 characters of the patient folder)."""
    return f"files/p{subject_id[:2]}/p{subject_id}/s{study_id}/{dicom_id}.{ext}"


def report_relpath(subject_id: str, study_id: str) -> str:
    return f"files/p{subject_id[:2]}/p{subject_id}/s{study_id}.txt"


def _detect_format(root: Path, probes: Sequence[tuple[str, str, str]]) -> str | None:
    """"dicom"/"jpg" when `root/files` holds images of the metadata (probed), else None."""
    files = root / "files"
    if not files.is_dir():
        return None
    for ext, fmt in (("dcm", "dicom"), ("jpg", "jpg")):
        if any((root / image_relpath(s, st, d, ext)).is_file() for s, st, d in probes):
            return fmt
    for ext, fmt in (("dcm", "dicom"), ("jpg", "jpg")):
        if next(files.glob(f"p*/p*/s*/*.{ext}"), None) is not None:
            return fmt
    return None


def find_layout(data_dir: str | os.PathLike, image_format: str = "auto",
                probes: Sequence[tuple[str, str, str]] = ()) -> MimicLayout:
    """Locate the CSVs, the image tree of `image_format` and the reports under `data_dir`.

    `probes`: a few (subject_id, study_id, dicom_id) of the metadata used to tell a DICOM tree from a JPG tree.
    Raises `MIMICDataError` when the requested image tree is absent.
    """
    roots = candidate_roots(data_dir)
    if not roots:
        raise FileNotFoundError(f"MIMIC-CXR data_dir {data_dir} does not exist")
    csv = {key: _find_csv(roots, stem) for key, stem in CSV_NAMES.items()}
    formats = {root: _detect_format(root, probes) for root in roots}
    image_root, found_format = None, None
    wanted = ("dicom", "jpg") if image_format == "auto" else (image_format,)
    for fmt in wanted:
        for root in roots:
            if formats[root] == fmt:
                image_root, found_format = root, fmt
                break
        if image_root is not None:
            break
    report_roots = [r for r in roots if (r / "files").is_dir()]
    archive = None
    for root in roots:
        for name in REPORTS_ARCHIVES:
            if (root / name).is_file():
                archive = root / name
                break
        if archive:
            break
    return MimicLayout(roots, csv, image_root, found_format, report_roots, archive)


class ReportStore:
    """Report texts by (subject_id, study_id): loose `files/pXX/pS/sST.txt` in any root, else the zip archive."""

    def __init__(self, layout: MimicLayout):
        self.layout = layout
        self._zip: zipfile.ZipFile | None = None
        self._members: dict[tuple[str, str], str] = {}
        # roots that hold loose reports first (the MIMIC-CXR tree): missing reports are named there
        self._roots = sorted(layout.report_roots,
                             key=lambda r: next((r / "files").glob("p*/p*/s*.txt"), None) is None)
        if layout.reports_archive is not None:
            self._zip = zipfile.ZipFile(layout.reports_archive)
            for name in self._zip.namelist():
                match = _REPORT_PATH_RE.search(name)
                if match:
                    self._members[(match.group(1), match.group(2))] = name

    def locate(self, subject_id: str, study_id: str) -> str:
        """A printable location of the report (first existing, else the expected loose path)."""
        rel = report_relpath(subject_id, study_id)
        for root in self._roots:
            if (root / rel).is_file():
                return str(root / rel)
        member = self._members.get((subject_id, study_id))
        if member is not None:
            return f"{self.layout.reports_archive}:{member}"
        if self._roots:
            return str(self._roots[0] / rel)
        if self.layout.reports_archive is not None:
            return f"{self.layout.reports_archive}:{rel}"
        return str(self.layout.roots[0] / rel)

    def read(self, subject_id: str, study_id: str) -> tuple[str | None, str]:
        """(text or None when missing, location). Unreadable files raise MIMICDataError naming them."""
        rel = report_relpath(subject_id, study_id)
        for root in self._roots:
            path = root / rel
            if path.is_file():
                try:
                    return path.read_text(encoding="utf-8"), str(path)
                except (OSError, UnicodeDecodeError) as err:
                    raise MIMICDataError(f"cannot read report {path}: {type(err).__name__}: {err}") from err
        member = self._members.get((subject_id, study_id))
        if member is not None and self._zip is not None:
            where = f"{self.layout.reports_archive}:{member}"
            try:
                return self._zip.read(member).decode("utf-8"), where
            except (OSError, UnicodeDecodeError, zipfile.BadZipFile) as err:
                raise MIMICDataError(f"cannot read report {where}: {type(err).__name__}: {err}") from err
        return None, self.locate(subject_id, study_id)

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
            self._zip = None


# ======================================================================================================= CSVs


def _read_csv(path: Path):
    import pandas as pd

    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    except Exception as err:
        raise MIMICDataError(f"cannot parse {path}: {type(err).__name__}: {err}") from err
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def _require_columns(frame, path: Path, names: Sequence[str]) -> None:
    missing = [n for n in names if n not in frame.columns]
    if missing:
        raise MIMICDataError(f"{path}: missing column(s) {missing}; found {list(frame.columns)}")


def _digits(value: str, path: Path, line: int, column: str) -> str:
    text = str(value).strip()
    if text.endswith(".0") and text[:-2].isdigit():  # ids written as floats by some tools
        text = text[:-2]
    if not text.isdigit():
        raise MIMICDataError(f"{path}:{line}: column {column!r} must be a number, got {value!r}")
    return str(int(text))


def _int_or_none(value: str, path: Path, line: int, column: str) -> int | None:
    text = str(value).strip()
    if not text:
        return None
    try:
        return int(float(text))
    except ValueError:
        raise MIMICDataError(f"{path}:{line}: column {column!r} must be a number, got {value!r}") from None


@dataclass
class _Image:
    dicom_id: str
    subject_id: str
    study_id: str
    view: str
    rows: int | None
    columns: int | None
    line: int
    extra: dict[str, str] = field(default_factory=dict)
    split: str | None = None


def read_metadata(path: Path) -> list[_Image]:
    frame = _read_csv(path)
    _require_columns(frame, path, ["dicom_id", "subject_id", "study_id", "ViewPosition"])
    images = []
    seen: dict[str, int] = {}
    has = {c: c in frame.columns for c in ("Rows", "Columns", *_METADATA_OPTIONAL)}
    for line, record in _frame_records(frame):
        dicom_id = str(record["dicom_id"]).strip()
        if not dicom_id:
            raise MIMICDataError(f"{path}:{line}: empty dicom_id")
        if dicom_id in seen:
            raise MIMICDataError(f"{path}:{line}: duplicate dicom_id {dicom_id} (first on line {seen[dicom_id]})")
        seen[dicom_id] = line
        images.append(_Image(
            dicom_id=dicom_id,
            subject_id=_digits(record["subject_id"], path, line, "subject_id"),
            study_id=_digits(record["study_id"], path, line, "study_id"),
            view=str(record["ViewPosition"]).strip().upper(),
            rows=_int_or_none(record["Rows"], path, line, "Rows") if has["Rows"] else None,
            columns=_int_or_none(record["Columns"], path, line, "Columns") if has["Columns"] else None,
            line=line,
            extra={c: str(record[c]) for c in _METADATA_OPTIONAL if has[c]},
        ))
    return images


def _frame_records(frame):
    columns = list(frame.columns)
    for index, values in enumerate(frame.itertuples(index=False, name=None)):
        yield index + 2, dict(zip(columns, values))


def read_split(path: Path) -> dict[str, tuple[str, int]]:
    """dicom_id -> (official split, line)."""
    frame = _read_csv(path)
    _require_columns(frame, path, ["dicom_id", "split"])
    out: dict[str, tuple[str, int]] = {}
    for line, record in _frame_records(frame):
        split = str(record["split"]).strip()
        if split not in SPLIT_NAMES:
            raise MIMICDataError(f"{path}:{line}: split must be one of {tuple(SPLIT_NAMES)}, got {split!r}")
        out[str(record["dicom_id"]).strip()] = (split, line)
    return out


def read_labels(path: Path) -> dict[tuple[str, str], dict[str, int | None]]:
    """CheXpert/NegBio CSV -> {(subject_id, study_id): {label: 1 | 0 | -1 | None}} (blank -> None)."""
    frame = _read_csv(path)
    _require_columns(frame, path, ["subject_id", "study_id", *CHEXPERT_LABELS])
    out: dict[tuple[str, str], dict[str, int | None]] = {}
    for line, record in _frame_records(frame):
        key = (_digits(record["subject_id"], path, line, "subject_id"),
               _digits(record["study_id"], path, line, "study_id"))
        values = {}
        for label in CHEXPERT_LABELS:
            try:
                values[label] = chexpert_value(record[label])
            except ValueError as err:
                raise MIMICDataError(f"{path}:{line}: column {label!r}: {err}") from None
        if key in out:
            raise MIMICDataError(f"{path}:{line}: duplicate row for subject {key[0]}, study {key[1]}")
        out[key] = values
    return out


# ======================================================================================================= images


def _read_jpg(path: str) -> np.ndarray:
    from PIL import Image

    if not os.path.isfile(path):
        raise FileNotFoundError(f"missing image file {path}")
    with Image.open(path) as image:
        image.load()
        if image.mode in ("L", "RGB"):
            return np.asarray(image)
        if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            return minmax_to_uint8(np.asarray(image))
        return np.asarray(image.convert("L"))


def convert_image(path: str, image_format: str, windowing: str = "window", max_side: int | None = None,
                  compress_level: int = 1) -> tuple[bytes, int, int]:
    """Source image -> (PNG bytes, source width, source height). Raises `MIMICImageError` naming the file."""
    try:
        if image_format == "dicom":
            if not os.path.isfile(path):
                raise FileNotFoundError(f"missing DICOM file {path}")
            array = dicom_to_uint8(read_dicom(path), windowing=windowing)
        else:
            array = _read_jpg(path)
        if array.ndim not in (2, 3) or array.shape[0] == 0 or array.shape[1] == 0:
            raise ValueError(f"unexpected pixel array shape {array.shape}")
        png, _ = encode_png(array, max_side, compress_level)
    except MIMICImageError:
        raise
    except Exception as err:  # DicomReadError, OSError (missing/truncated), PIL errors...
        message = str(err) if str(path) in str(err) else f"{path}: {type(err).__name__}: {err}"
        reason = "image_missing" if isinstance(err, FileNotFoundError) else "image_unreadable"
        raise MIMICImageError(message, reason) from err
    return png, int(array.shape[1]), int(array.shape[0])


# ======================================================================================================= selection


def view_rank(view: str, views: tuple | None) -> int:
    order = _DEFAULT_VIEW_ORDER if views is None or views == (ALL_VIEWS,) else views
    return order.index(view) if view in order else len(order)


def select_images(images: Sequence[_Image], views: tuple | None, one_per_study: bool) -> tuple[list[_Image], list[_Image]]:
    """(kept, filtered by view) of one study's images; `one_per_study` keeps the first by (view rank, dicom_id)."""
    all_views = views is None or views == (ALL_VIEWS,)
    kept = [im for im in images if all_views or im.view in views]
    filtered = [im for im in images if not (all_views or im.view in views)]
    kept.sort(key=lambda im: (view_rank(im.view, views), im.dicom_id))
    if one_per_study and kept:
        kept = kept[:1]
    return kept, filtered


# ======================================================================================================= features

_MESSAGES = List({"role": Value("string"), "content": List({"type": Value("string"), "text": Value("string")})})
_LABELS14 = {label: Value("int8") for label in CHEXPERT_LABELS}
_TRIPLET = {"entity": Value("string"), "position": List(Value("string")), "existence": Value("int8"),
            "cue": Value("string"), "sentence": Value("string")}


def _features(config: MIMICCXRConfig) -> Features:
    ids = {
        "subject_id": Value("int64"),
        "study_id": Value("int64"),
        "dicom_id": Value("string"),
        "view": Value("string"),
        "width": Value("int32"),
        "height": Value("int32"),
    }
    if config.name == "raw":
        spec = {
            **ids,
            "split": Value("string"),
            "image_path": Value("string"),
            "report_path": Value("string"),
            "study_date": Value("string"),
            "study_time": Value("string"),
            "procedure": Value("string"),
            "view_code_meaning": Value("string"),
            "patient_orientation": Value("string"),
            "report": Value("string"),
            "findings": Value("string"),
            "impression": Value("string"),
            "last_paragraph": Value("string"),
            "sections": List({"name": Value("string"), "text": Value("string")}),
            "chexpert": _LABELS14,
            "negbio": _LABELS14,
            "rules": {entity: Value("int8") for entity in ENTITIES},
            "triplets": List(_TRIPLET),
        }
    elif config.name == "report":
        spec = {
            **ids,
            "target_section": Value("string"),
            "findings": Value("string"),
            "impression": Value("string"),
            "prompt": _MESSAGES,
            "completion": _MESSAGES,
        }
    else:
        spec = {
            **ids,
            "entity": Value("string"),
            "label": Value("int8"),
            "label_source": Value("string"),
            "rules_label": Value("int8"),
            "chexpert_label": Value("int8"),
            "negbio_label": Value("int8"),
            "position": List(Value("string")),
            "prompt": _MESSAGES,
            "completion": _MESSAGES,
        }
    if config.with_image:
        spec["images"] = List(ImageFeature())
    return Features(spec)


# ======================================================================================================= plan


_ANSWER = "_answer"


def _task_tokens(config: MIMICCXRConfig, task: str) -> dict[str, str]:
    tokens = dict(DEFAULT_TASK_TOKENS)
    if config.task_token is not None:
        tokens[task] = config.task_token
    return tokens


def finish_row(config: MIMICCXRConfig, row: dict[str, Any]) -> dict[str, Any]:
    """A planned row -> the stored row: `prompt`/`completion` from the processor's templates (`prompt_messages`,
    `completion_messages`) for `report` and `existence` (entity in lower case)."""
    if _ANSWER not in row:
        return row
    row = dict(row)
    answer = row.pop(_ANSWER)
    if config.name == "report":
        prompt = prompt_messages("report", task_tokens=_task_tokens(config, "report"))
    else:
        prompt = prompt_messages("existence", entity=row["entity"].lower(),
                                 task_tokens=_task_tokens(config, "existence"))
    row["prompt"] = prompt
    row["completion"] = completion_messages(answer)
    return row


def _label_counter() -> dict[str, int]:
    return {"1": 0, "0": 0, "-1": 0, "missing": 0}


def _label_key(value: int | None) -> str:
    return "missing" if value is None else str(int(value))


def _agreement(pairs: dict[str, Counter]) -> dict[str, Any]:
    """Per entity: pairs (rules, other) -> counts, and agreement where both are known answers (0/1)."""
    out = {}
    for entity, counter in pairs.items():
        both = {k: v for k, v in counter.items() if all(p in ("0", "1") for p in k.split("|"))}
        total = sum(both.values())
        agree = sum(v for k, v in both.items() if k.split("|")[0] == k.split("|")[1])
        out[entity] = {
            "both_known": total,
            "agree": agree,
            "rate": round(agree / total, 6) if total else None,
            "pairs": {f"rules={k.split('|')[0]},other={k.split('|')[1]}": v for k, v in sorted(counter.items())},
        }
    return out


def build_plan(data_dir: str | os.PathLike, config: MIMICCXRConfig) -> tuple[dict[str, list[dict]], dict[str, Any]]:
    """Read the CSVs and reports, select images and make every row except the pixels.

    Returns ({split: [item]}, log) where an item is one image with its finished rows (`rows`, without `images`),
    and log = {"settings", "layout", "counts", "skipped"}.
    """
    skips = SkipLog(name="mimic")
    roots = candidate_roots(data_dir)
    if not roots:
        raise FileNotFoundError(f"MIMIC-CXR data_dir {data_dir} does not exist")
    metadata_path = _find_csv(roots, CSV_NAMES["metadata"])
    split_path = _find_csv(roots, CSV_NAMES["split"])
    searched = ", ".join(str(r) for r in roots)
    for key, path in (("metadata", metadata_path), ("split", split_path)):
        if path is None:
            raise FileNotFoundError(
                f"missing {CSV_NAMES[key]}.csv(.gz) (part of MIMIC-CXR-JPG) under {data_dir}; searched {searched}"
            )
    images = read_metadata(metadata_path)
    probes = [(im.subject_id, im.study_id, im.dicom_id) for im in images[:50]]
    layout = find_layout(data_dir, config.image_format, probes)
    if config.with_image and layout.image_root is None:
        wanted = "DICOM (.dcm) or JPG (.jpg)" if config.image_format == "auto" else f"{config.image_format} image"
        raise FileNotFoundError(f"no {wanted} tree files/pXX/p<subject>/s<study>/ found under {data_dir}; "
                                f"searched {searched}")
    ext = "dcm" if layout.image_format == "dicom" else "jpg"
    splits = read_split(split_path)
    labels: dict[str, dict | None] = {}
    for source in ("chexpert", "negbio"):
        path = layout.csv[source]
        if path is None and config.label_source == source:
            raise FileNotFoundError(
                f"label_source={source!r} needs {CSV_NAMES[source]}.csv(.gz) (MIMIC-CXR-JPG); searched {searched}"
            )
        labels[source] = read_labels(path) if path is not None else None

    counts: dict[str, Any] = {
        "metadata_images": len(images),
        "studies": 0,
        "images_by_view": dict(sorted(Counter(im.view or "<empty>" for im in images).items())),
        "images_view_filtered": {},
        "images_without_split": 0,
        "images_not_selected_one_per_study": 0,
        "images_selected": 0,
        "studies_without_selected_image": 0,
        "studies_selected": 0,
        "studies_in_rows": 0,
        "reports_missing": 0,
        "reports_without_sections": 0,
        "studies_dropped_report": 0,
        "report_sections_used": Counter(),
        "chexpert_rows_missing": 0,
        "negbio_rows_missing": 0,
        "labels": {"rules": {e: _label_counter() for e in ENTITIES}},
        "rows_planned": Counter(),
    }
    for source in ("chexpert", "negbio"):
        if labels[source] is not None:
            counts["labels"][source] = {e: _label_counter() for e in ENTITIES}
    if config.name == "existence":
        counts["existence_answers"] = {e: {"Yes": 0, "No": 0} for e in config.entities}
        counts["existence_not_trained"] = {e: {"uncertain": 0, "not_mentioned": 0} for e in config.entities}
    agreement_pairs = {s: {e: Counter() for e in ENTITIES} for s in ("chexpert", "negbio") if labels[s] is not None}

    by_study: dict[tuple[str, str], list[_Image]] = defaultdict(list)
    for im in images:
        entry = splits.get(im.dicom_id)
        if entry is None:
            counts["images_without_split"] += 1
            skips.skip(f"{metadata_path}:{im.line} dicom_id {im.dicom_id}", "image_without_split_row")
            continue
        im.split = SPLIT_NAMES[entry[0]]
        by_study[(im.subject_id, im.study_id)].append(im)
    counts["studies"] = len(by_study)

    reports = ReportStore(layout)
    plan: dict[str, list[dict]] = {split: [] for split in SPLIT_ORDER}
    view_filtered: Counter = Counter()
    index = 0
    try:
        for (subject_id, study_id) in sorted(by_study, key=lambda k: (int(k[0]), int(k[1]))):
            study_images = by_study[(subject_id, study_id)]
            kept, filtered = select_images(study_images, config.views, False)
            view_filtered.update(im.view or "<empty>" for im in filtered)
            if config.one_per_study and len(kept) > 1:
                counts["images_not_selected_one_per_study"] += len(kept) - 1
                kept = kept[:1]
            if not kept:
                counts["studies_without_selected_image"] += 1
                continue
            counts["studies_selected"] += 1

            # ---- report
            text, where = reports.read(subject_id, study_id)
            sections = parse_sections(text) if text is not None else None
            problem = None
            if text is None:
                counts["reports_missing"] += 1
                problem = ("report_missing", f"missing report {where} (subject {subject_id}, study {study_id})")
            elif not (sections.findings or sections.impression
                      or (config.fallback_last_paragraph and sections.last_paragraph)):
                counts["reports_without_sections"] += 1
                problem = ("report_without_sections",
                           f"report {where} has no FINDINGS or IMPRESSION section"
                           + (" and no last paragraph" if config.fallback_last_paragraph else ""))
            if problem is not None and config.needs_report:
                if config.on_bad_report == "raise":
                    raise MIMICDataError(
                        f"{problem[1]}\nBuild with on_bad_report='skip' to skip such studies (counted and listed)."
                    )
                skips.skip(problem[1], problem[0])
                counts["studies_dropped_report"] += 1
                continue

            rules_text = None
            if sections is not None:
                rules_text = labeling_text(sections) if config.fallback_last_paragraph else (
                    " ".join(p for p in (sections.findings, sections.impression) if p) or None)
            triplets = extract_triplets(rules_text) if rules_text else []
            rules = study_labels(triplets)
            study_sources = {"rules": rules}
            for source in ("chexpert", "negbio"):
                if labels[source] is None:
                    study_sources[source] = None
                    continue
                row = labels[source].get((subject_id, study_id))
                if row is None:
                    counts[f"{source}_rows_missing"] += 1
                study_sources[source] = row
            for entity in ENTITIES:
                counts["labels"]["rules"][entity][_label_key(rules[entity])] += 1
                for source in ("chexpert", "negbio"):
                    if source in counts["labels"]:
                        row = study_sources[source]
                        value = None if row is None else row[ENTITY_CHEXPERT_COLUMN[entity]]
                        counts["labels"][source][entity][_label_key(value)] += 1
                        agreement_pairs[source][entity][f"{_label_key(rules[entity])}|{_label_key(value)}"] += 1

            def source_label(source: str, entity: str, sources: dict = study_sources) -> int | None:
                row = sources.get(source)
                if source == "rules":
                    return row[entity]
                return None if row is None else row[ENTITY_CHEXPERT_COLUMN[entity]]

            # ---- rows
            study_rows: dict[str, list[dict]] = {}
            if config.name == "raw":
                for im in kept:
                    study_rows[im.dicom_id] = [_raw_row(im, ext, layout, text, sections, study_sources, triplets)]
            elif config.name == "report":
                target = report_target(sections, config.report_section, config.fallback_last_paragraph)
                answer, source_section = target
                counts["report_sections_used"][source_section] += 1
                for im in kept:
                    study_rows[im.dicom_id] = [{
                        **_ids(im),
                        "target_section": source_section,
                        "findings": sections.findings,
                        "impression": sections.impression,
                        _ANSWER: answer,  # prompt/completion are made in _generate_examples (smaller plan)
                    }]
            else:
                entity_rows = []
                for entity in config.entities:
                    label = source_label(config.label_source, entity)
                    if label not in (PRESENT, ABSENT):
                        key = "uncertain" if label == UNCERTAIN else "not_mentioned"
                        counts["existence_not_trained"][entity][key] += 1
                        continue
                    answer = "Yes" if label == PRESENT else "No"
                    counts["existence_answers"][entity][answer] += 1
                    positions: list[str] = []
                    for t in triplets:
                        if t.entity == entity and t.existence == rules[entity]:
                            positions += [p for p in t.position if p not in positions]
                    entity_rows.append({
                        "entity": entity,
                        "label": int(label),
                        "label_source": config.label_source,
                        "rules_label": rules[entity],
                        "chexpert_label": source_label("chexpert", entity),
                        "negbio_label": source_label("negbio", entity),
                        "position": positions,
                        _ANSWER: answer,
                    })
                for im in kept:
                    study_rows[im.dicom_id] = [{**_ids(im), **row} for row in entity_rows]
            if any(study_rows.values()):
                counts["studies_in_rows"] += 1
            for im in kept:
                rows = study_rows.get(im.dicom_id, [])
                if not rows:
                    continue
                counts["images_selected"] += 1
                counts["rows_planned"][im.split] += len(rows)
                image_path = str(layout.image_root / image_relpath(im.subject_id, im.study_id, im.dicom_id, ext)) \
                    if layout.image_root is not None else None
                plan[im.split].append({"index": index, "dicom_id": im.dicom_id, "path": image_path, "rows": rows})
                index += 1
    finally:
        reports.close()

    counts["images_view_filtered"] = dict(sorted(view_filtered.items()))
    counts["report_sections_used"] = dict(sorted(counts["report_sections_used"].items()))
    counts["rows_planned"] = {s: counts["rows_planned"].get(s, 0) for s in SPLIT_ORDER}
    counts["agreement"] = {source: _agreement(pairs) for source, pairs in agreement_pairs.items()}
    log = {
        "settings": config.settings(),
        "layout": layout.describe(),
        "counts": counts,
        "skipped": skips.summary(),
    }
    logger.info("MIMIC-CXR %s plan: %s images in rows, %s skipped (%s)", config.name, counts["images_selected"],
                len(skips), skips.counts())
    return plan, log


def _ids(im: _Image) -> dict[str, Any]:
    return {
        "subject_id": int(im.subject_id),
        "study_id": int(im.study_id),
        "dicom_id": im.dicom_id,
        "view": im.view,
        "width": im.columns,
        "height": im.rows,
    }


def _raw_row(im: _Image, ext: str, layout: MimicLayout, text: str | None, sections, sources: dict,
             triplets) -> dict[str, Any]:
    def labels14(row):
        return {label: (None if row is None else row[label]) for label in CHEXPERT_LABELS}

    return {
        **_ids(im),
        "split": im.split,
        "image_path": image_relpath(im.subject_id, im.study_id, im.dicom_id, ext) if layout.image_format else None,
        "report_path": report_relpath(im.subject_id, im.study_id),  # relative: no local path in exports
        "study_date": im.extra.get("StudyDate"),
        "study_time": im.extra.get("StudyTime"),
        "procedure": im.extra.get("PerformedProcedureStepDescription"),
        "view_code_meaning": im.extra.get("ViewCodeSequence_CodeMeaning"),
        "patient_orientation": im.extra.get("PatientOrientationCodeSequence_CodeMeaning"),
        "report": text,
        "findings": sections.findings if sections else None,
        "impression": sections.impression if sections else None,
        "last_paragraph": sections.last_paragraph if sections else None,
        "sections": [{"name": n, "text": t} for n, t in sections.parts] if sections else [],
        "chexpert": labels14(sources.get("chexpert")),
        "negbio": labels14(sources.get("negbio")),
        "rules": dict(sources["rules"]),
        "triplets": [
            {"entity": t.entity, "position": list(t.position), "existence": t.existence, "cue": t.cue,
             "sentence": t.sentence}
            for t in triplets
        ],
    }


# ======================================================================================================= builder


def _source_fingerprint(data_dir: str | None) -> str:
    """Cache key part: code of this builder, the report rules, the shared module and the codec, plus the size/mtime
    of the CSVs and reports archive found under `data_dir` (edited loose reports need
    `download_mode="force_redownload"`)."""
    digest = hashlib.sha1()
    here = Path(__file__).resolve()
    import processing_litegpt

    for path in (here, here.with_name("mimic_reports.py"), here.with_name("common.py"),
                 Path(processing_litegpt.__file__)):
        try:
            digest.update(path.read_bytes())
        except OSError:
            digest.update(str(path).encode())
    if data_dir:
        for root in candidate_roots(data_dir):
            for name in sorted(os.listdir(root)):
                if name.startswith("mimic-cxr-2.0.0-") or name in REPORTS_ARCHIVES:
                    stat = (root / name).stat()
                    digest.update(f"{root / name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


class MIMICCXR(PreparationLogMixin, datasets.GeneratorBasedBuilder):
    """MIMIC-CXR / MIMIC-CXR-JPG builder (see the module docstring and `MIMICCXRConfig` for every setting)."""

    VERSION = datasets.Version("1.0.0")
    BUILDER_CONFIG_CLASS = MIMICCXRConfig
    BUILDER_CONFIGS = [
        MIMICCXRConfig(name="raw", version=VERSION,
                       description="Images' metadata, reports, sections, CheXpert/NegBio and rules labels."),
        MIMICCXRConfig(name="report", version=VERSION, description="Findings (else impression) generation."),
        MIMICCXRConfig(name="existence", version=VERSION, description="Yes/no existence of six entities."),
    ]
    preprocessing_log_name = PREPROCESSING_LOG
    worker_skips_dirname = "_mimic_skips"
    DEFAULT_CONFIG_NAME = "report"
    CARD_TITLE = "MIMIC-CXR for LiteGPT-CXR"
    DEFAULT_WRITER_BATCH_SIZE = 100  # rows carry PNGs

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("hash", _source_fingerprint(kwargs.get("data_dir")))
        super().__init__(*args, **kwargs)
        self.config.validate()
        self._log: dict[str, Any] | None = None

    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(
            description=f"MIMIC-CXR ({self.config.name}) for LiteGPT-CXR",
            features=_features(self.config),
            homepage="https://physionet.org/content/mimic-cxr/2.0.0/",
            license="PhysioNet Credentialed Health Data License 1.5.0 (credentialed access; do not redistribute)",
            citation=(
                "Johnson, A. E. W. et al. MIMIC-CXR, a de-identified publicly available database of chest radiographs "
                "with free-text reports. Scientific Data 6, 317 (2019). Johnson, A. E. W. et al. MIMIC-CXR-JPG, a "
                "large publicly available database of labeled chest radiographs. arXiv:1901.07042 (2019)."
            ),
        )

    # ----------------------------------------------------------------------------------------------- prepare
    def download_and_prepare(self, *args, **kwargs):
        """`datasets`' download_and_prepare (atomic: `.incomplete` folder renamed on success) with the input error
        of a failed conversion surfaced (it names the file) instead of datasets' generic wrapper."""
        try:
            return super().download_and_prepare(*args, **kwargs)
        except DatasetGenerationError as err:
            cause = input_error_cause(err, (MIMICDataError, FileNotFoundError))
            if cause is None:
                raise
            if isinstance(cause, MIMICImageError):
                raise MIMICImageError(f"{cause} (nothing was written to the cache)", cause.reason) from err
            raise type(cause)(f"{cause} (nothing was written to the cache)") from err

    def _split_generators(self, dl_manager):
        if not self.config.data_dir:
            raise ValueError("MIMICCXR needs data_dir=<folder with mimic-cxr / mimic-cxr-jpg> (credentialed PhysioNet "
                             "download)")
        plan, log = build_plan(self.config.data_dir, self.config)
        self._log = log
        self._plan_skips = log["skipped"]
        # datasets cannot read back a split without examples: an empty split is left out (listed in the counts)
        log["counts"]["empty_splits"] = [split for split in SPLIT_ORDER if not plan[split]]
        for split in log["counts"]["empty_splits"]:
            logger.warning("[mimic] %s: no rows for split %r (left out of the dataset)", self.config.name, split)
        return [
            datasets.SplitGenerator(name=split, gen_kwargs={"items": plan[split], "split": split})
            for split in SPLIT_ORDER
            if plan[split]
        ]

    def _download_and_prepare(self, dl_manager, verification_mode, **prepare_splits_kwargs):
        super()._download_and_prepare(dl_manager, verification_mode, **prepare_splits_kwargs)
        skips = SkipLog.from_summary(self._plan_skips, name="mimic")
        image_skips = self._collect_worker_skips(SPLIT_ORDER)
        extra_counts = {
            "images_skipped_unreadable": len(image_skips),
            "rows_dropped_with_skipped_images": sum(e.get("rows", 0) for e in image_skips),
        }
        log = self._finish_preprocessing_log(skips, image_skips, extra_counts, f"MIMIC-CXR ({self.config.name})")
        logger.info("MIMIC-CXR %s rows: %s; skipped: %s", self.config.name, log["rows"], skips.counts())

    def _generate_examples(self, items: list[dict], split: str) -> Iterator[tuple[str, dict]]:
        config = self.config
        for item in items:
            rows = item["rows"]
            if config.with_image:
                try:
                    png, width, height = convert_image(
                        item["path"], "dicom" if item["path"].endswith(".dcm") else "jpg", config.windowing,
                        config.max_side or None, config.png_compress_level,
                    )
                except MIMICImageError as err:
                    if config.on_bad_image == "raise":
                        raise MIMICImageError(
                            f"{err}\nBuild with on_bad_image='skip' to skip such images (counted and listed).",
                            err.reason,
                        ) from err
                    self._record_image_skip(split, item, str(err), err.reason)
                    continue
                image = [{"bytes": png, "path": f"{item['dicom_id']}.png"}]
                rows = [{**row, "width": width, "height": height, "images": image} for row in rows]
            for k, row in enumerate(rows):
                yield f"{item['dicom_id']}/{k}", finish_row(config, row)

    def _record_image_skip(self, split: str, item: dict, message: str, reason: str) -> None:
        logger.warning("[mimic] skipped %s: %s (%s)", item["path"], reason, message)
        self._record_worker_skip(
            {"split": split, "index": item["index"], "item": message, "reason": reason, "rows": len(item["rows"])}
        )


# ======================================================================================================= CLI


def main(argv: list[str] | None = None) -> int:
    run_builder_cli(MIMICCXR, "Build MIMIC-CXR (raw, report, existence) for LiteGPT-CXR.", argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
