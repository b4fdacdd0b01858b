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
  `counts["existence_not_trained"]`; trained answers in `counts["existence_answers"]`). A study without any 1/0
  answer (a report that mentions none of the entities, or only uncertainly) has no row: it is skipped, counted and
  listed (`study_without_entity_answer`).

A study without an image of a selected view (with the default `views`, a lateral-only study) has no row in any
config: it is skipped, counted and listed (`study_without_selected_view`).

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
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import datasets
import numpy as np
from datasets import Features, List, Value
from datasets import Image as ImageFeature

from codec_litegpt import CHEXPERT_LABELS
from datasets_scripts.common import (
    PreparationLogMixin,
    SkipLog,
    check_choices,
    codec_source_files,
    encode_png,
    update_with_code,
)
from datasets_scripts.export import run_builder_cli
from datasets_scripts.mimic_inputs import (
    IMAGE_FORMATS,
    REPORTS_ARCHIVES,
    MIMICDataError,
    MimicLayout,
    candidate_roots,
    find_layout,
)
from datasets_scripts.mimic_plan import ALL_VIEWS, FRONTAL_VIEWS, SPLIT_ORDER, build_plan, finish_row, select_images
from datasets_scripts.mimic_reports import (
    ENTITIES,
    REPORT_SECTION_CHOICES,
)
from image_processing_litegpt import WINDOWING_MODES, dicom_to_uint8, minmax_to_uint8, read_dicom

__all__ = [
    "CHEXPERT_LABELS",
    "CONFIG_NAMES",
    "MIMICCXR",
    "MIMICCXRConfig",
    "MIMICDataError",
    "MIMICImageError",
    "MimicLayout",
    "convert_image",
    "find_layout",
    "main",
    "select_images",
]

logger = logging.getLogger(__name__)

CONFIG_NAMES = ("raw", "report", "existence")
LABEL_SOURCES = ("rules", "chexpert", "negbio")
BAD_IMAGE_POLICIES = ("raise", "skip")
BAD_REPORT_POLICIES = ("raise", "skip")
# official split value -> datasets split name
# view preference when `views` is "all" (otherwise the order of `views`): frontal first, PA before AP

PREPROCESSING_LOG = "mimic_preprocessing.json"


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


# ======================================================================================================= CSVs


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


# ======================================================================================================= builder


def _source_fingerprint(data_dir: str | None) -> str:
    """Cache key part: code of this builder, the report rules, the shared module and the codec, plus the size/mtime
    of the CSVs and reports archive found under `data_dir` (edited loose reports need
    `download_mode="force_redownload"`)."""
    digest = hashlib.sha1()
    here = Path(__file__).resolve()
    sources = [here, here.with_name("mimic_reports.py"), here.with_name("common.py"), *codec_source_files()]
    update_with_code(digest, sources)
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
    BUILDER_CONFIGS: ClassVar[list[MIMICCXRConfig]] = [
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
    input_errors = (MIMICDataError, FileNotFoundError)

    def _surfaced_error(self, cause: Exception, message: str) -> Exception:
        if isinstance(cause, MIMICImageError):
            return MIMICImageError(message, cause.reason)  # the skip reason travels with the message
        return type(cause)(message)

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
