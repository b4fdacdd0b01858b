"""The MIMIC-CXR preprocessing: from the CSVs and reports to the rows of every config.

Images are selected by view (one frontal image per study for `report` and `existence`: PA before AP, then the
smallest `dicom_id`), each study's report is parsed into sections and labelled by the rules (and CheXpert / NegBio),
and every config's rows are made except the pixels. `build_plan` runs it all in the main process; the builder
(`mimic_cxr.py`) then converts the images of the plan. Every count is logged, every skipped study named."""

from __future__ import annotations

import logging
import os
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from codec_litegpt import CHEXPERT_LABELS, completion_messages, prompt_messages
from datasets_scripts.common import SkipLog, task_tokens_of
from datasets_scripts.mimic_inputs import (
    CSV_NAMES,
    SPLIT_NAMES,
    MIMICDataError,
    MimicImage,
    MimicLayout,
    ReportStore,
    candidate_roots,
    find_csv,
    find_layout,
    image_relpath,
    read_labels,
    read_metadata,
    read_split,
    report_relpath,
)
from datasets_scripts.mimic_reports import (
    ABSENT,
    ENTITIES,
    ENTITY_CHEXPERT_COLUMN,
    PRESENT,
    UNCERTAIN,
    extract_triplets,
    labeling_text,
    parse_sections,
    report_target,
    study_labels,
)

if TYPE_CHECKING:  # the config class lives with the builder, which imports this module
    from datasets_scripts.mimic_cxr import MIMICCXRConfig

logger = logging.getLogger("datasets_scripts.mimic_cxr")

FRONTAL_VIEWS = ("PA", "AP")


ALL_VIEWS = "all"


SPLIT_ORDER = ("train", "validation", "test")


_DEFAULT_VIEW_ORDER = ("PA", "AP", "LATERAL", "LL")


def view_rank(view: str, views: tuple | None) -> int:
    order = _DEFAULT_VIEW_ORDER if views is None or views == (ALL_VIEWS,) else views
    return order.index(view) if view in order else len(order)


def select_images(images: Sequence[MimicImage], views: tuple | None, one_per_study: bool) -> tuple[list[MimicImage], list[MimicImage]]:
    """(kept, filtered by view) of one study's images; `one_per_study` keeps the first by (view rank, dicom_id)."""
    all_views = views is None or views == (ALL_VIEWS,)
    kept = [im for im in images if all_views or im.view in views]
    filtered = [im for im in images if not (all_views or im.view in views)]
    kept.sort(key=lambda im: (view_rank(im.view, views), im.dicom_id))
    if one_per_study and kept:
        kept = kept[:1]
    return kept, filtered


_ANSWER = "_answer"


def finish_row(config: MIMICCXRConfig, row: dict[str, Any]) -> dict[str, Any]:
    """A planned row -> the stored row: `prompt`/`completion` from the processor's templates (`prompt_messages`,
    `completion_messages`) for `report` and `existence` (entity in lower case)."""
    if _ANSWER not in row:
        return row
    row = dict(row)
    answer = row.pop(_ANSWER)
    if config.name == "report":
        prompt = prompt_messages("report", task_tokens=task_tokens_of(config, "report"))
    else:
        prompt = prompt_messages("existence", entity=row["entity"].lower(),
                                 task_tokens=task_tokens_of(config, "existence"))
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


def _ids(im: MimicImage) -> dict[str, Any]:
    return {
        "subject_id": int(im.subject_id),
        "study_id": int(im.study_id),
        "dicom_id": im.dicom_id,
        "view": im.view,
        "width": im.columns,
        "height": im.rows,
    }


def _raw_row(im: MimicImage, ext: str, layout: MimicLayout, text: str | None, sections, sources: dict,
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


@dataclass
class MimicInputs:
    """What the plan reads before looking at any study: the CSVs, the layout and the split of every image."""

    metadata_path: Path
    images: list[MimicImage]
    layout: MimicLayout
    ext: str  # image file extension of the layout: dcm or jpg
    splits: dict[str, tuple[str, int]]
    labels: dict[str, dict | None]  # chexpert / negbio rows by (subject_id, study_id), None when absent


def build_plan(data_dir: str | os.PathLike, config: MIMICCXRConfig) -> tuple[dict[str, list[dict]], dict[str, Any]]:
    """Read the CSVs and reports, select images and make every row except the pixels.

    Returns ({split: [item]}, log) where an item is one image with its finished rows (`rows`, without `images`),
    and log = {"settings", "layout", "counts", "skipped"}.
    """
    skips = SkipLog(name="mimic")
    inputs = read_inputs(data_dir, config)
    counts = _new_counts(config, inputs)
    agreement_pairs = {s: {e: Counter() for e in ENTITIES} for s in ("chexpert", "negbio") if inputs.labels[s] is not None}
    by_study = _images_by_study(inputs, counts, skips)
    plan = _plan_studies(config, inputs, by_study, counts, agreement_pairs, skips)
    counts["report_sections_used"] = dict(sorted(counts["report_sections_used"].items()))
    counts["rows_planned"] = {s: counts["rows_planned"].get(s, 0) for s in SPLIT_ORDER}
    counts["agreement"] = {source: _agreement(pairs) for source, pairs in agreement_pairs.items()}
    log = {"settings": config.settings(), "layout": inputs.layout.describe(), "counts": counts, "skipped": skips.summary()}
    logger.info("MIMIC-CXR %s plan: %s images in rows, %s skipped (%s)", config.name, counts["images_selected"],
                len(skips), skips.counts())  # fmt: skip
    return plan, log


def read_inputs(data_dir: str | os.PathLike, config: MIMICCXRConfig) -> MimicInputs:
    """The metadata and split CSVs (required), the layout of the image and report trees, the label CSVs the config
    needs; a missing required file raises `FileNotFoundError` naming where it was searched."""
    roots = candidate_roots(data_dir)
    if not roots:
        raise FileNotFoundError(f"MIMIC-CXR data_dir {data_dir} does not exist")
    metadata_path = find_csv(roots, CSV_NAMES["metadata"])
    split_path = find_csv(roots, CSV_NAMES["split"])
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
                                f"searched {searched}")  # fmt: skip
    labels: dict[str, dict | None] = {}
    for source in ("chexpert", "negbio"):
        path = layout.csv[source]
        if path is None and config.label_source == source:
            raise FileNotFoundError(
                f"label_source={source!r} needs {CSV_NAMES[source]}.csv(.gz) (MIMIC-CXR-JPG); searched {searched}"
            )
        labels[source] = read_labels(path) if path is not None else None
    ext = "dcm" if layout.image_format == "dicom" else "jpg"
    return MimicInputs(metadata_path, images, layout, ext, read_split(split_path), labels)


def _new_counts(config: MIMICCXRConfig, inputs: MimicInputs) -> dict[str, Any]:
    """Every count of the preprocessing log, at zero."""
    counts: dict[str, Any] = {
        "metadata_images": len(inputs.images),
        "studies": 0,
        "images_by_view": dict(sorted(Counter(im.view or "<empty>" for im in inputs.images).items())),
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
        if inputs.labels[source] is not None:
            counts["labels"][source] = {e: _label_counter() for e in ENTITIES}
    if config.name == "existence":
        counts["existence_answers"] = {e: {"Yes": 0, "No": 0} for e in config.entities}
        counts["existence_not_trained"] = {e: {"uncertain": 0, "not_mentioned": 0} for e in config.entities}
        counts["studies_without_entity_answer"] = 0
    return counts


def _images_by_study(inputs: MimicInputs, counts: dict[str, Any], skips: SkipLog) -> dict[tuple[str, str], list]:
    """The images of every study, each with its split (`train` / `validation` / `test`); an image without a split row
    is skipped, counted and named."""
    by_study: dict[tuple[str, str], list[MimicImage]] = defaultdict(list)
    for im in inputs.images:
        entry = inputs.splits.get(im.dicom_id)
        if entry is None:
            counts["images_without_split"] += 1
            skips.skip(f"{inputs.metadata_path}:{im.line} dicom_id {im.dicom_id}", "image_without_split_row")
            continue
        im.split = SPLIT_NAMES[entry[0]]
        by_study[(im.subject_id, im.study_id)].append(im)
    counts["studies"] = len(by_study)
    return by_study


def _plan_studies(config: MIMICCXRConfig, inputs: MimicInputs, by_study, counts, agreement_pairs, skips: SkipLog):
    """Every study in (subject, study) order: its images selected by view, its report read and labelled, its rows
    made; returns the plan's items by split."""
    reports = ReportStore(inputs.layout)
    plan: dict[str, list[dict]] = {split: [] for split in SPLIT_ORDER}
    view_filtered: Counter = Counter()
    index = 0
    try:
        for subject_id, study_id in sorted(by_study, key=lambda k: (int(k[0]), int(k[1]))):
            study_images = by_study[(subject_id, study_id)]
            kept, filtered = select_images(study_images, config.views, False)
            view_filtered.update(im.view or "<empty>" for im in filtered)
            if config.one_per_study and len(kept) > 1:
                counts["images_not_selected_one_per_study"] += len(kept) - 1
                kept = kept[:1]
            if not kept:
                counts["studies_without_selected_image"] += 1
                views_found = ", ".join(sorted({im.view or "<empty>" for im in study_images}))
                skips.skip(f"study {study_id} (subject {subject_id}): no image with a view in {list(config.views)} "
                           f"(views: {views_found})", "study_without_selected_view")  # fmt: skip
                continue
            counts["studies_selected"] += 1
            report = _read_study_report(config, reports, subject_id, study_id, counts, skips)
            if report is None:
                continue
            text, sections, where = report
            triplets, sources = _study_labels(config, inputs, subject_id, study_id, sections, counts, agreement_pairs)
            study_rows = _study_rows(config, inputs, kept, text, sections, triplets, sources, counts)
            if config.name == "existence" and not any(study_rows.values()):
                _skip_unanswered_study(config, sources, f"study {study_id} (subject {subject_id}, report {where})",
                                       counts, skips)  # fmt: skip
            if any(study_rows.values()):
                counts["studies_in_rows"] += 1
            for im in kept:
                rows = study_rows.get(im.dicom_id, [])
                if not rows:
                    continue
                counts["images_selected"] += 1
                counts["rows_planned"][im.split] += len(rows)
                image_path = (str(inputs.layout.image_root / image_relpath(im.subject_id, im.study_id, im.dicom_id, inputs.ext))
                              if inputs.layout.image_root is not None else None)  # fmt: skip
                plan[im.split].append({"index": index, "dicom_id": im.dicom_id, "path": image_path, "rows": rows})
                index += 1
    finally:
        reports.close()
    counts["images_view_filtered"] = dict(sorted(view_filtered.items()))
    return plan


def _read_study_report(config: MIMICCXRConfig, reports: ReportStore, subject_id: str, study_id: str, counts, skips):
    """`(text, sections, where)` of the study's report (`where`: its path; text and sections None when it is missing
    and the config does not need it), or None when the study is dropped for its report (`on_bad_report="skip"`;
    `"raise"` raises)."""
    text, where = reports.read(subject_id, study_id)
    sections = parse_sections(text) if text is not None else None
    problem = None
    if text is None:
        counts["reports_missing"] += 1
        problem = ("report_missing", f"missing report {where} (subject {subject_id}, study {study_id})")
    elif not (sections.findings or sections.impression or (config.fallback_last_paragraph and sections.last_paragraph)):
        counts["reports_without_sections"] += 1
        problem = ("report_without_sections",
                   f"report {where} has no FINDINGS or IMPRESSION section"
                   + (" and no last paragraph" if config.fallback_last_paragraph else ""))  # fmt: skip
    if problem is not None and config.needs_report:
        if config.on_bad_report == "raise":
            raise MIMICDataError(f"{problem[1]}\nBuild with on_bad_report='skip' to skip such studies (counted and listed).")
        skips.skip(problem[1], problem[0])
        counts["studies_dropped_report"] += 1
        return None
    return text, sections, where


def _study_labels(config: MIMICCXRConfig, inputs: MimicInputs, subject_id, study_id, sections, counts, agreement_pairs):
    """The rules' triplets of the report and the study's labels by source (`rules`, and the CheXpert / NegBio CSV rows
    when present), counted and compared with the rules."""
    rules_text = None
    if sections is not None:
        rules_text = labeling_text(sections) if config.fallback_last_paragraph else (
            " ".join(p for p in (sections.findings, sections.impression) if p) or None)  # fmt: skip
    triplets = extract_triplets(rules_text) if rules_text else []
    rules = study_labels(triplets)
    sources: dict[str, Any] = {"rules": rules}
    for source in ("chexpert", "negbio"):
        if inputs.labels[source] is None:
            sources[source] = None
            continue
        row = inputs.labels[source].get((subject_id, study_id))
        if row is None:
            counts[f"{source}_rows_missing"] += 1
        sources[source] = row
    for entity in ENTITIES:
        counts["labels"]["rules"][entity][_label_key(rules[entity])] += 1
        for source in ("chexpert", "negbio"):
            if source in counts["labels"]:
                value = source_label(sources, source, entity)
                counts["labels"][source][entity][_label_key(value)] += 1
                agreement_pairs[source][entity][f"{_label_key(rules[entity])}|{_label_key(value)}"] += 1
    return triplets, sources


def source_label(sources: dict[str, Any], source: str, entity: str) -> int | None:
    """The label of `entity` from one source of a study (`rules`, `chexpert`, `negbio`); None when unknown."""
    row = sources.get(source)
    if source == "rules":
        return row[entity]
    return None if row is None else row[ENTITY_CHEXPERT_COLUMN[entity]]


def _study_rows(config: MIMICCXRConfig, inputs: MimicInputs, kept, text, sections, triplets, sources, counts):
    """The rows of the study's selected images (`dicom_id` -> rows) for the config."""
    if config.name == "raw":
        return {im.dicom_id: [_raw_row(im, inputs.ext, inputs.layout, text, sections, sources, triplets)] for im in kept}
    if config.name == "report":
        answer, source_section = report_target(sections, config.report_section, config.fallback_last_paragraph)
        counts["report_sections_used"][source_section] += 1
        # prompt / completion are made in _generate_examples (a smaller plan)
        row = {"target_section": source_section, "findings": sections.findings, "impression": sections.impression,
               _ANSWER: answer}  # fmt: skip
        return {im.dicom_id: [{**_ids(im), **row}] for im in kept}
    entity_rows = _existence_rows(config, triplets, sources, counts)
    return {im.dicom_id: [{**_ids(im), **row} for row in entity_rows] for im in kept}


def _skip_unanswered_study(config: MIMICCXRConfig, sources: dict[str, Any], study: str, counts, skips: SkipLog) -> None:
    """An existence study without any 1/0 answer from `label_source` (a report that mentions none of the entities, or
    only uncertainly): counted and listed with what its answers were."""
    counts["studies_without_entity_answer"] += 1
    unknown = Counter("uncertain" if source_label(sources, config.label_source, e) == UNCERTAIN else "not mentioned"
                      for e in config.entities)  # fmt: skip
    skips.skip(f"{study}: no {config.label_source} answer 1/0 for any of {list(config.entities)} "
               f"({dict(sorted(unknown.items()))})", "study_without_entity_answer")  # fmt: skip


def _existence_rows(config: MIMICCXRConfig, triplets, sources, counts) -> list[dict[str, Any]]:
    """One row per entity with a known answer (1 or 0) from `label_source`; uncertain and unmentioned answers are
    counted, never rows."""
    rules = sources["rules"]
    rows = []
    for entity in config.entities:
        label = source_label(sources, config.label_source, entity)
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
        rows.append({
            "entity": entity,
            "label": int(label),
            "label_source": config.label_source,
            "rules_label": rules[entity],
            "chexpert_label": source_label(sources, "chexpert", entity),
            "negbio_label": source_label(sources, "negbio", entity),
            "position": positions,
            _ANSWER: answer,
        })  # fmt: skip
    return rows
