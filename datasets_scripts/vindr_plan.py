"""The VinDr-CXR preprocessing: from the validated CSVs and DICOM sizes to the rows of every config.

Reader conflicts (`conflict_policy`), fusion of the readers' labels (`global_fusion`), the taxonomy, same-label box
deduplication (`dedup`), the validation hold-out, stage 1's image selection and the deterministic target order; every
count is logged and every dropped image named. `build_plan` runs it all in the main process, before any image is
decoded; the builder (`vindr_cxr.py`) then converts the images of the plan."""

from __future__ import annotations

import hashlib
import logging
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from codec_litegpt import (
    KAGGLE14_LABELS,
    NO_FINDING,
    VINDR_GLOBAL_LABELS,
    VINDR_LOCAL_LABELS,
    box_iou,
    box_to_grid,
    completion_messages,
    format_diagnosis_answer,
    format_grounding_answer,
    prompt_messages,
)
from datasets_scripts.common import SkipLog, task_tokens_of
from datasets_scripts.vindr_csv import (
    GLOBAL_DISEASES,
    AnnotationRow,
    BadRows,
    ReaderLabels,
    dicom_path,
    read_annotations,
    read_dicom_size,
    read_image_labels,
)
from image_processing_litegpt import DicomReadError

if TYPE_CHECKING:  # the config class lives with the builder, which imports this module
    from datasets_scripts.vindr_cxr import VinDrCXRConfig

logger = logging.getLogger("datasets_scripts.vindr_cxr")

SPLITS = ("train", "test")


KAGGLE14_LOCAL_LABELS = tuple(label for label in VINDR_LOCAL_LABELS if label in KAGGLE14_LABELS)




DEDUP_METHODS = ("keep_first", "mean", "wbf", "none")


CONFLICT_POLICIES = ("drop", "majority", "union")


FUSION_RULES = ("union", "majority")


TAXONOMIES = ("vindr22", "kaggle14")


STAGE1_TARGETS = ("local", "global+local")


STAGE1_IMAGES = ("all", "with_boxes")


BAD_ROW_POLICIES = ("raise", "skip_row", "skip_image")


BAD_IMAGE_POLICIES = ("raise", "skip")


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
        "prompt": prompt_messages(task, task_tokens=task_tokens_of(config, task)),
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
    bad = BadRows(config.on_bad_row, skips)
    counts: dict[str, Any] = {split: _empty_counts() for split in SPLITS}
    dropped: dict[str, list[str]] = {"conflict": [], "stage1_without_boxes": []}
    tables = _read_tables(data_dir, bad, counts)
    by_image = {split: _rows_by_image(split, *tables[split], bad, skips, config) for split in SPLITS}
    bad.check()  # raise policy: every bad row at once, before touching a DICOM
    sizes, paths = _probe_dicom_sizes(data_dir, tables, bad, skips, config, num_threads, counts)
    for split in SPLITS:
        _drop_boxes_outside_image(split, tables[split][2], by_image[split], sizes, bad)
    bad.check()
    plan = _assemble_plan(config, tables, by_image, sizes, paths, bad, counts, dropped)
    counts["output_images"] = {split: len(items) for split, items in plan.items()}
    counts["output_rows"] = {split: sum(len(i["rows"]) for i in items) for split, items in plan.items()}
    for split in SPLITS:
        logger.info("VinDr %s/%s counts: %s", config.name, split, counts[split])
    logger.info("VinDr %s output: images %s, rows %s", config.name, counts["output_images"], counts["output_rows"])
    log = {"settings": config.settings(), "counts": counts, "skipped": skips.summary(), "dropped": dropped}
    return plan, log


def _read_tables(data_dir: Path, bad: BadRows, counts: dict[str, Any]) -> dict[str, tuple]:
    """Per split: the readers of every image (image-labels CSV), the annotation rows and the annotation CSV's path."""
    tables = {}
    for split in SPLITS:
        labels_path = data_dir / "annotations" / f"image_labels_{split}.csv"
        ann_path = data_dir / "annotations" / f"annotations_{split}.csv"
        readers = read_image_labels(labels_path, split, bad)
        rows = read_annotations(ann_path, split, bad)
        counts[split]["labels_csv_rows"] = sum(len(r) for r in readers.values())
        counts[split]["annotation_rows"] = len(rows)
        tables[split] = (readers, rows, ann_path)
    return tables


def _where(file: str, line: int, image_id: str, rad_id: str | None, split: str) -> str:
    """`file line N (image_id=..., rad_id=...)`: where a bad row is (test rows have no reader)."""
    return f"{file} line {line} (image_id={image_id!r}" + (f", rad_id={rad_id!r})" if split == "train" else ")")


def _rows_by_image(split: str, readers, rows, ann_path: Path, bad: BadRows, skips: SkipLog, config: VinDrCXRConfig):
    """The annotation rows of each image, after the cross-file checks: a row needs a labels row for its image and
    reader, and a reader with `No finding`=1 must not report findings (with `skip_row`, such a reader is dropped)."""
    by_image: dict[str, list[AnnotationRow]] = defaultdict(list)
    for row in rows:
        where = _where(ann_path.name, row.line, row.image_id, row.rad_id, split)
        if row.image_id not in readers:
            bad.add(split, row.image_id, where, "image_not_in_labels_csv", f"image not in image_labels_{split}.csv")
            continue
        if row.rad_id not in readers[row.image_id]:
            bad.add(split, row.image_id, where, "reader_not_in_labels_csv",
                    f"reader {row.rad_id!r} has no row for this image in image_labels_{split}.csv")  # fmt: skip
            continue
        by_image[row.image_id].append(row)
    contradictions: list[tuple[str, str | None]] = []
    for image_id, image_readers in readers.items():
        for reader in image_readers.values():
            if not reader.no_finding:
                continue
            own_boxes = [r for r in by_image.get(image_id, []) if r.rad_id == reader.rad_id and r.box]
            labelled = sorted(reader.local() | reader.global_())
            if own_boxes or labelled:
                where = _where(f"image_labels_{split}.csv", reader.line, image_id, reader.rad_id, split)
                detail = f"'No finding'=1 together with findings {labelled or sorted({r.class_name for r in own_boxes})}"
                bad.add(split, image_id, where, "reader_contradiction", detail)
                contradictions.append((image_id, reader.rad_id))
    if config.on_bad_row == "skip_row":  # drop the contradicting reader: its labels row and its annotation rows
        for image_id, rad_id in contradictions:
            readers[image_id].pop(rad_id, None)
            by_image[image_id] = [r for r in by_image.get(image_id, []) if r.rad_id != rad_id]
            if not readers[image_id]:
                del readers[image_id]
                skips.skip(f"{split}/{image_id}", "no_valid_reader")
    return by_image


def _probe_dicom_sizes(data_dir: Path, tables, bad: BadRows, skips: SkipLog, config: VinDrCXRConfig, num_threads: int,
                       counts: dict[str, Any]):  # fmt: skip
    """The `(width, height)` of every image's DICOM header, read in threads, and the DICOM paths; a missing or
    unreadable file follows `on_bad_image`."""
    for split in SPLITS:
        readers = tables[split][0]
        present = {p.stem for p in (data_dir / split).glob("*.dicom")} if (data_dir / split).is_dir() else set()
        counts[split]["dicom_files_without_labels"] = len(present - set(readers))
    jobs = [(split, image_id) for split in SPLITS for image_id in tables[split][0] if (split, image_id) not in bad.bad_images]
    paths = {job: dicom_path(data_dir, *job) for job in jobs}

    def probe(job):
        try:
            return job, read_dicom_size(paths[job]), None
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
    return sizes, paths


def _drop_boxes_outside_image(split: str, ann_path: Path, by_image, sizes, bad: BadRows) -> None:
    """Boxes outside their image (needs the DICOM size) are bad rows."""
    for image_id, rows in by_image.items():
        size = sizes.get((split, image_id))
        if size is None:
            continue
        width, height = size
        kept = []
        for row in rows:
            if row.box is not None:
                x1, y1, x2, y2 = row.box
                if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
                    where = (f"{ann_path.name} line {row.line} (image_id={image_id!r}"
                             + (f", rad_id={row.rad_id!r}" if split == "train" else "")
                             + f", class_name={row.class_name_raw!r})")  # fmt: skip
                    bad.add(split, image_id, where, "box_outside_image",
                            f"box {list(row.box)} outside the {width}x{height} image")  # fmt: skip
                    continue
            kept.append(row)
        by_image[image_id] = kept


def _assemble_plan(config: VinDrCXRConfig, tables, by_image, sizes, paths, bad: BadRows, counts, dropped):
    """The plan's items, split by split: every image that passed the checks with its finished rows (validation
    hold-out and stage 1's image selection applied)."""
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
            plan[out_split].append({"index": index, "image_id": image_id, "path": str(paths[key]), "width": width,
                                    "height": height, "rows": built})  # fmt: skip
            index += 1
        c["readers_per_image"] = {str(k): v for k, v in sorted(c["readers_per_image"].items())}
    return plan


def _dropped_from_stage1(config: VinDrCXRConfig, rows: list[dict]) -> bool:
    """`stage1_images="with_boxes"`: a stage-1 training image whose target lists no box is left out."""
    return config.name == "grounding" and config.stage1_images == "with_boxes" and not any(row["boxes"] for row in rows)


def _image_rows(
    config: VinDrCXRConfig,
    split: str,
    image_id: str,
    width: int,
    height: int,
    readers: dict[str | None, ReaderLabels],
    rows: list[AnnotationRow],
    c: dict,
    dropped: dict,
) -> list[dict]:
    """The finished rows of one image for the configured view (empty when the image is dropped)."""
    c["readers_per_image"][len(readers)] = c["readers_per_image"].get(len(readers), 0) + 1
    if config.name == "raw":
        return _raw_rows(split, image_id, width, height, rows)
    if config.name == "labels":
        return _reader_rows(config, image_id, width, height, readers, rows, c)
    return _fused_rows(config, split, image_id, width, height, readers, rows, c, dropped)


def _raw_rows(split: str, image_id: str, width: int, height: int, rows: list[AnnotationRow]) -> list[dict]:
    """`raw`: one row per annotation CSV row, in CSV order, every reader kept."""
    return [
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
        for row in sorted(rows, key=lambda r: r.line)
    ]


def _reader_rows(config: VinDrCXRConfig, image_id: str, width: int, height: int, readers, rows, c: dict) -> list[dict]:
    """`labels`: one row per reader, the labels CSV by column name and the reader's own boxes (taxonomy applied)."""
    local_allowed = set(config.local_labels)
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


def _fused_rows(config: VinDrCXRConfig, split: str, image_id: str, width: int, height: int, readers, rows, c: dict,
                dropped: dict) -> list[dict]:  # fmt: skip
    """`grounding` / `diagnosis`: the readers fused (train: conflicts, label fusion, taxonomy, dedup) or the test
    consensus taken as given; one training row."""
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
    local_taxonomy = local & set(config.local_labels)
    findings = _kept_findings(config, split, boxes, local_taxonomy, c)
    c["abnormal_images"] += 1
    if not findings:
        c["abnormal_images_without_boxes"] += 1
    return [_training_row(config, image_id, width, height, False, local_taxonomy, global_, findings)]


def _kept_findings(config: VinDrCXRConfig, split: str, boxes, local_taxonomy: set[str], c: dict) -> list[tuple]:
    """The `(label, box)` findings of an abnormal image in canonical label order: boxes of labels outside the taxonomy
    or the fused labels dropped (counted), train boxes deduplicated per label."""
    local_allowed = set(config.local_labels)
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
    return findings
