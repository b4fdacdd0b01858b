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
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import datasets
from datasets import Features, List, Value
from datasets import Image as ImageFeature

from codec_litegpt import (
    VINDR_GLOBAL_LABELS,
    VINDR_LOCAL_LABELS,
    box_iou,
)
from datasets_scripts.common import (
    PreparationLogMixin,
    SkipLog,
    check_choices,
    codec_source_files,
    encode_png,
    update_with_code,
)
from datasets_scripts.export import run_builder_cli
from datasets_scripts.vindr_csv import VinDrDataError
from datasets_scripts.vindr_plan import (
    BAD_IMAGE_POLICIES,
    BAD_ROW_POLICIES,
    CONFLICT_POLICIES,
    DEDUP_METHODS,
    FUSION_RULES,
    KAGGLE14_LOCAL_LABELS,
    SPLITS,
    STAGE1_IMAGES,
    STAGE1_TARGETS,
    TAXONOMIES,
    build_plan,
    dedup_boxes,
    fuse_labels,
    is_validation_image,
    resolve_no_finding,
)
from image_processing_litegpt import WINDOWING_MODES, DicomReadError, dicom_to_uint8, read_dicom

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
PREPROCESSING_LOG = "vindr_preprocessing.json"

# Kaggle VinBigData's 14 classes in VinDr's canonical order (the codec's KAGGLE14_LABELS is in Kaggle's id order).


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


# ======================================================================================================= DICOM


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
    update_with_code(digest, [here, here.with_name("common.py"), *codec_source_files()])
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
    BUILDER_CONFIGS: ClassVar[list[VinDrCXRConfig]] = [
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
    input_errors = (DicomReadError, VinDrDataError, FileNotFoundError)

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


# ======================================================================================================= CLI


def main(argv: list[str] | None = None) -> int:
    run_builder_cli(VinDrCXR, "Build VinDr-CXR (raw, labels, grounding, diagnosis) for LiteGPT-CXR.", argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
