"""Trivial baselines, fitted on the TRAINING split and scored by exactly the code that scores the model.

Every baseline writes, for each test item, an answer in the model's own answer format (`format_grounding_answer`,
`format_diagnosis_answer`, `Yes`/`No`) into prediction records; `scoring.score_records` then parses and scores
them like the model's predictions (same protocols, same parsing, same bootstrap). Definitions (`DEFINITIONS`):

* `no_finding` - every answer is "No finding": `Local/Global diseases of this chest radiograph are No finding.`
  (MIMIC existence: always `No`).
* `most_frequent` - the training split's most frequent label set: the `k` labels present on the most training
  images, `k` = the median number of labels per training image (rounded half up), or 1 when that median is 0
  (VinDr: most images are normal, so k = 1). Stage 1 counts the 22 local labels (an image's distinct
  `local_labels`), stage 2 the global diseases (`No finding` excluded: predicting it is the `no_finding`
  baseline). Ties go to the canonical label order. Stage-1 boxes: each label gets its **mean training box** -
  the mean of the normalised `(x1/W, y1/H, x2/W, y2/H)` of all training boxes of that label - scaled to the test
  image's size and written on the 0-100 grid by the codec. MIMIC existence: per entity the majority training
  answer; MIMIC report: the most frequent training report text. Existence baselines also carry a constant P(Yes)
  per entity (`no_finding` 0, `most_frequent` the training prevalence), so that their AUC is defined: 0.5 per entity.
* `oracle_labels_mean_box` - **not a trivial baseline**: an informational upper reference for position-agnostic
  localisation. Stage 1 only: the true local labels of the test image, each with its mean training box (a label
  without training boxes gets the mean of all training boxes); a normal test image gets "No finding", an abnormal
  one without local labels "None". It shows what knowing the labels but not the positions gives.

`score_baselines(train_rows, test_references, out_dir)` writes `out_dir/<name>/{predictions.jsonl, metrics.json,
report.md}` and returns the comparison summary (the `baselines` key of the model's `metrics.json`).
"""

from __future__ import annotations

import math
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from codec_litegpt import (
    NO_FINDING,
    VINDR_GLOBAL_LABELS,
    VINDR_LOCAL_LABELS,
    canonical_label,
    format_diagnosis_answer,
    format_grounding_answer,
    messages_text,
)

from .bootstrap import DEFAULT_SEED, paired_difference_interval
from .records import PredictionsError, dumps

BASELINE_NAMES = ("no_finding", "most_frequent", "oracle_labels_mean_box")
DEFINITIONS = {
    "no_finding": "trivial baseline: always 'No finding' (stage 1 and stage 2); MIMIC existence: always 'No'",
    "most_frequent": "trivial baseline: the k labels present on the most training images, k = median number of "
    "labels per training image rounded half up, or 1 when that median is 0 (stage 1: the 22 local labels, each "
    "with its mean training box; stage 2: the global diseases, 'No finding' excluded); MIMIC existence: the majority "
    "training answer per entity; MIMIC report: the most frequent training report",
    "oracle_labels_mean_box": "NOT a trivial baseline - informational upper reference for position-agnostic "
    "localisation: the TRUE test local labels, each with its mean training box (stage 1 only)",
}
# (task, dotted path under tasks.<task>, label) of the comparison table.
TABLE_KEYS = (
    ("grounding", "classification.strict.averages.micro.f1", "stage 1: local labels micro-F1 (strict)"),
    ("grounding", "finding.strict.Finding.f1", "stage 1: Finding F1 (strict)"),
    ("grounding", "localization.acc_iou.paper.0.3", "stage 1: Acc@IoU 0.3, paper protocol (%)"),
    ("grounding", "localization.acc_iou.matched.0.3.overall.f1", "stage 1: IoU 0.3 matched F1"),
    ("grounding", "localization.acc_iou.matched.0.3.overall.recall", "stage 1: IoU 0.3 matched recall"),
    ("grounding", "localization.map.0.4.vindr22.map", "stage 1: mAP@0.4 vindr22"),
    ("diagnosis", "classification.strict.averages.micro.f1", "stage 2: global labels micro-F1 (strict)"),
    ("diagnosis", "classification.strict.averages.macro.f1", "stage 2: global labels macro-F1 (strict)"),
    ("diagnosis", "finding.strict.Finding.f1", "stage 2: Finding F1 (strict; the paper's Table 1)"),
    ("existence", "accuracy", "MIMIC existence: accuracy"),
    ("report", "text.raw.values.rouge1", "MIMIC report: ROUGE-1"),
    ("report", "text.raw.values.bleu4", "MIMIC report: BLEU-4"),
)


def _round_half_up(value: float) -> int:
    return math.floor(value + 0.5)


@dataclass
class TrainingStatistics:
    """What the baselines know about the training split (JSON-ready through `summary()`)."""

    n_images: int = 0
    local_counts: dict[str, int] = field(default_factory=dict)
    global_counts: dict[str, int] = field(default_factory=dict)
    k_local: int = 1
    k_global: int = 1
    median_local: float | None = None
    median_global: float | None = None
    mean_boxes: dict[str, tuple[float, float, float, float]] = field(default_factory=dict)
    box_counts: dict[str, int] = field(default_factory=dict)
    all_boxes_mean: tuple[float, float, float, float] | None = None
    existence_majority: dict[str, int] = field(default_factory=dict)
    existence_prevalence: dict[str, float] = field(default_factory=dict)
    existence_overall: int | None = None
    existence_rows: int = 0
    report_text: str | None = None
    report_rows: int = 0

    def most_frequent(self, counts: Mapping[str, int], order: Sequence[str], k: int) -> list[str]:
        ranked = sorted((label for label in order if counts.get(label, 0) > 0), key=lambda l: (-counts[l], order.index(l)))
        return ranked[:k]

    @property
    def most_frequent_local(self) -> list[str]:
        return self.most_frequent(self.local_counts, VINDR_LOCAL_LABELS, self.k_local)

    @property
    def most_frequent_global(self) -> list[str]:
        diseases = [label for label in VINDR_GLOBAL_LABELS if label != NO_FINDING]
        return self.most_frequent(self.global_counts, diseases, self.k_global)

    def mean_box(self, label: str) -> tuple[float, float, float, float] | None:
        """Normalised mean training box of `label` (the mean of all boxes when the label has none)."""
        return self.mean_boxes.get(label, self.all_boxes_mean)

    def summary(self) -> dict[str, Any]:
        return {
            "images": self.n_images,
            "local_label_images": dict(self.local_counts),
            "global_label_images": dict(self.global_counts),
            "median_local_labels_per_image": self.median_local,
            "median_global_diseases_per_image": self.median_global,
            "k_local": self.k_local,
            "k_global": self.k_global,
            "most_frequent_local": self.most_frequent_local,
            "most_frequent_global": self.most_frequent_global,
            "mean_boxes_normalised": {label: list(box) for label, box in self.mean_boxes.items()},
            "boxes_per_label": dict(self.box_counts),
            "mean_box_all_labels": list(self.all_boxes_mean) if self.all_boxes_mean else None,
            "existence_rows": self.existence_rows,
            "existence_majority": dict(self.existence_majority),
            "existence_prevalence": dict(self.existence_prevalence),
            "report_rows": self.report_rows,
        }


def fit_training_statistics(train_rows: Iterable[Mapping[str, Any]]) -> TrainingStatistics:
    """Label frequencies, the k rule, mean boxes per label, existence majorities and the most frequent report of
    the training rows (builder columns: `local_labels`, `global_labels`, `no_finding`, `box_labels`, `boxes`,
    `width`, `height`; MIMIC `entity` + `label`, or `completion`). Rows of one image must be merged already (the
    builders' `grounding` / `diagnosis` configs hold one row per image)."""
    stats = TrainingStatistics()
    local_counter: Counter = Counter()
    global_counter: Counter = Counter()
    n_local, n_global = [], []
    boxes: dict[str, list[tuple[float, float, float, float]]] = defaultdict(list)
    existence: dict[str, Counter] = defaultdict(Counter)
    reports: Counter = Counter()
    for row in train_rows:
        if row.get("entity") is not None and row.get("label") is not None:
            label = int(row["label"])
            if label in (0, 1):
                existence[str(row["entity"])][label] += 1
                stats.existence_rows += 1
            continue
        has_vindr = any(row.get(key) is not None for key in ("local_labels", "global_labels", "box_labels"))
        if not has_vindr:
            completion = row.get("completion")
            text = messages_text(completion) if completion is not None else row.get("answer") or row.get("text")
            if text:
                reports[text] += 1
                stats.report_rows += 1
            continue
        stats.n_images += 1
        box_labels = [canonical_label(label, VINDR_LOCAL_LABELS) for label in row.get("box_labels") or []]
        local = row.get("local_labels")
        local = [canonical_label(label, VINDR_LOCAL_LABELS) for label in local] if local is not None else box_labels
        local = list(dict.fromkeys(local))
        local_counter.update(local)
        n_local.append(len(local))
        global_labels = list(dict.fromkeys(canonical_label(label, VINDR_GLOBAL_LABELS) for label in row.get("global_labels") or []))
        diseases = [label for label in global_labels if label != NO_FINDING]
        global_counter.update(diseases)
        n_global.append(len(diseases))
        width, height = row.get("width"), row.get("height")
        row_boxes = row.get("boxes") or []
        if row_boxes and (not width or not height):
            raise PredictionsError(f"training row {row.get('image_id')!r} has boxes but no width/height")
        for label, box in zip(box_labels, row_boxes):
            x1, y1, x2, y2 = (float(v) for v in box)
            boxes[label].append((x1 / width, y1 / height, x2 / width, y2 / height))
    stats.local_counts = {label: local_counter[label] for label in VINDR_LOCAL_LABELS if local_counter[label]}
    stats.global_counts = {label: global_counter[label] for label in VINDR_GLOBAL_LABELS if global_counter[label]}
    if n_local:
        stats.median_local = float(np.median(n_local))
        stats.k_local = max(1, _round_half_up(stats.median_local))
    if n_global:
        stats.median_global = float(np.median(n_global))
        stats.k_global = max(1, _round_half_up(stats.median_global))
    everything = []
    for label in VINDR_LOCAL_LABELS:
        if boxes.get(label):
            array = np.asarray(boxes[label], dtype=np.float64)
            stats.mean_boxes[label] = tuple(float(v) for v in array.mean(axis=0))
            stats.box_counts[label] = len(array)
            everything.append(array)
    if everything:
        stats.all_boxes_mean = tuple(float(v) for v in np.concatenate(everything).mean(axis=0))
    total = Counter()
    for entity, counts in existence.items():
        stats.existence_majority[entity] = 1 if counts[1] > counts[0] else 0  # a tie answers No
        stats.existence_prevalence[entity] = counts[1] / (counts[0] + counts[1])
        total.update(counts)
    if total:
        stats.existence_overall = 1 if total[1] > total[0] else 0
    if reports:
        best = max(reports.values())
        stats.report_text = min(text for text, count in reports.items() if count == best)
    return stats


# ======================================================================================= predictions


def _pixel_box(normalised: Sequence[float], width: float, height: float) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = normalised
    return (x1 * width, y1 * height, x2 * width, y2 * height)


def _grounding_text(labels: Sequence[str], stats: TrainingStatistics, width: float, height: float,
                    no_finding: bool = False) -> str:  # fmt: skip
    if no_finding:
        return format_grounding_answer([], width, height, no_finding=True)
    findings = []
    for label in labels:
        box = stats.mean_box(label)
        if box is None:
            raise PredictionsError("the training rows hold no boxes at all: stage-1 box baselines need training boxes")
        findings.append((label, _pixel_box(box, width, height)))
    return format_grounding_answer(findings, width, height)


def baseline_answer(name: str, record: Mapping[str, Any], stats: TrainingStatistics) -> str | None:
    """The answer text of baseline `name` for one test record (its task and reference); None = not defined."""
    from .scoring import grounding_reference

    task = record["task"]
    if task == "grounding":
        ref = grounding_reference(dict(record))
        w, h = ref["width"], ref["height"]
        if name == "no_finding":
            return _grounding_text([], stats, w, h, no_finding=True)
        if name == "most_frequent":
            return _grounding_text(stats.most_frequent_local, stats, w, h)
        if name == "oracle_labels_mean_box":
            if not ref["local_labels"]:
                return format_grounding_answer([], w, h, no_finding=ref["no_finding"])
            return _grounding_text(ref["local_labels"], stats, w, h)
    elif task == "diagnosis":
        if name == "no_finding":
            return format_diagnosis_answer([NO_FINDING])
        if name == "most_frequent":
            return format_diagnosis_answer(stats.most_frequent_global)
    elif task == "existence":
        entity = str((record.get("reference") or {}).get("entity"))
        if name == "no_finding":
            return "No"
        if name == "most_frequent" and stats.existence_rows:
            answer = stats.existence_majority.get(entity, stats.existence_overall)
            return "Yes" if answer == 1 else "No"
    elif task == "report" and name == "most_frequent" and stats.report_text is not None:
        return stats.report_text
    return None


def baseline_existence_score(name: str, record: Mapping[str, Any], stats: TrainingStatistics) -> float | None:
    """P(Yes) of an existence baseline, so that its AUC is defined (a constant per entity: AUC 0.5 by construction):
    `no_finding` 0; `most_frequent` the entity's training prevalence. None for other tasks."""
    if record["task"] != "existence":
        return None
    if name == "no_finding":
        return 0.0
    entity = str((record.get("reference") or {}).get("entity"))
    if name == "most_frequent" and stats.existence_rows:
        overall = stats.existence_overall if stats.existence_overall is not None else 0
        return stats.existence_prevalence.get(entity, float(overall))
    return None


def build_baseline_records(
    name: str, test_references: Iterable[Mapping[str, Any]], stats: TrainingStatistics
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Prediction records of baseline `name` (`text` = its answer, the test reference attached); also the number
    of test items per task it does not define (`oracle_labels_mean_box` outside stage 1, ...)."""
    records, undefined = [], Counter()
    for ref in test_references:
        if not isinstance(ref.get("reference"), dict):
            continue
        text = baseline_answer(name, ref, stats)
        if text is None:
            undefined[ref["task"]] += 1
            continue
        record = {"id": str(ref["id"]), "image_id": str(ref.get("image_id") or ref["id"]), "task": ref["task"],
                  "text": text, "reference": ref["reference"], "baseline": name}  # fmt: skip
        score = baseline_existence_score(name, ref, stats)
        if score is not None:
            record["scores"] = {"yes": score}
        records.append(record)
    return records, dict(undefined)


# ======================================================================================= scoring


def _value(metrics: Mapping[str, Any], task: str, path: str) -> dict[str, Any] | None:
    from .scoring import lookup

    full = f"tasks.{task}.{path}"
    try:
        value = lookup(dict(metrics), full)
    except KeyError:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(float(value)):
        return {"value": None}
    out: dict[str, Any] = {"value": float(value)}
    interval = (metrics.get("confidence_intervals") or {}).get(full)
    if interval and interval.get("low") is not None:
        out["ci"] = [interval["low"], interval["high"]]
    return out


def headline_table(
    metrics_by_name: Mapping[str, Mapping[str, Any]],
    bootstrap_by_name: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """One row per `TABLE_KEYS` entry present in any of the metrics: `{task, key, label, values: {name: {value,
    ci}}}` (the model first when given).

    With `bootstrap_by_name` (`{name: {task: extras["bootstrap"] of score_records}}`, the model's under `model`),
    each row also gets `differences: {baseline: {difference, low, high, excludes_zero, ...}}`: model minus
    baseline, with the percentile interval of that difference over the paired resamples (the same test images
    drawn for both), which is narrower and more honest than comparing two separate intervals.
    """
    rows = []
    for task, path, label in TABLE_KEYS:
        values = {name: _value(metrics, task, path) for name, metrics in metrics_by_name.items()}
        values = {name: v for name, v in values.items() if v is not None}
        if values:
            row = {"task": task, "key": f"tasks.{task}.{path}", "label": label, "values": values}
            if bootstrap_by_name and "model" in bootstrap_by_name:
                row["differences"] = paired_differences(bootstrap_by_name, task, path, values)
            rows.append(row)
    return rows


def paired_differences(
    bootstrap_by_name: Mapping[str, Mapping[str, Any]], task: str, path: str, values: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    """Model minus each other system on one metric, with the paired-bootstrap interval of the difference."""
    model = (bootstrap_by_name.get("model") or {}).get(task)
    model_value = (values.get("model") or {}).get("value")
    out: dict[str, dict[str, Any]] = {}
    if not model or path not in model["values"] or model_value is None:
        return out
    for name, by_task in bootstrap_by_name.items():
        other = (by_task or {}).get(task)
        other_value = (values.get(name) or {}).get("value")
        if name == "model" or not other or path not in other["values"] or other_value is None:
            continue
        if other["units"] != model["units"]:
            out[name] = {"unavailable": "not scored on the model's test images in the same order: no pairing"}
            continue
        interval = paired_difference_interval(model["values"][path], other["values"][path])
        out[name] = {"difference": model_value - other_value, **interval}
    return out


def score_baselines(
    train_rows: Iterable[Mapping[str, Any]],
    test_references: Iterable[Mapping[str, Any]],
    out_dir: str | os.PathLike | None = None,
    model_metrics: Mapping[str, Any] | None = None,
    names: Sequence[str] = BASELINE_NAMES,
    bootstrap: int = 0,
    seed: int = DEFAULT_SEED,
    text_metrics: bool = True,
    coco_meteor: bool = False,
    training_source: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Fit the baselines on `train_rows`, answer every test item, score with `scoring.score_records`.

    `test_references`: records with `id`, `task`, `reference` (a predictions file's records or the lines of
    `references.jsonl`). With `out_dir`, each baseline's `predictions.jsonl`, `metrics.json` and `report.md` go to
    `out_dir/<name>/`. Returns `{"protocol", "definitions", "training", "metrics" {name: metrics},
    "table" [...], "undefined" {name: {task: n}}, "files" {name: folder}}`; `table` compares the headline numbers
    (`TABLE_KEYS`) of `model_metrics` (when given, as `model`) and of each baseline.
    """
    from .report import render_report, write_metrics_json
    from .scoring import score_records

    references = [dict(r) for r in test_references]
    stats = fit_training_statistics(train_rows)
    if not stats.n_images and not stats.existence_rows and not stats.report_rows:
        raise PredictionsError("the training rows hold no labels: cannot fit the baselines")
    summary: dict[str, Any] = {
        "protocol": "answers rendered in the model's answer format from TRAINING statistics, scored by the same "
        "code and protocols as the model (same test items); `oracle_labels_mean_box` uses the test labels and is an "
        "informational reference, not a baseline",
        "definitions": {name: DEFINITIONS[name] for name in names},
        "training": {**dict(training_source or {}), **stats.summary()},
        "metrics": {},
        "undefined": {},
        "files": {},
        "bootstrap_values": {},  # per-resample values for paired differences; not written to JSON
    }
    for name in names:
        if name not in DEFINITIONS:
            raise ValueError(f"unknown baseline {name!r}; expected one of {BASELINE_NAMES}")
        records, undefined = build_baseline_records(name, references, stats)
        summary["undefined"][name] = undefined
        if not records:
            continue
        metrics, extras = score_records(records, bootstrap=bootstrap, seed=seed, text_metrics=text_metrics,
                                        coco_meteor=coco_meteor)
        summary["bootstrap_values"][name] = {task: e["bootstrap"] for task, e in extras.items() if "bootstrap" in e}
        metrics = {"schema": metrics.pop("schema"), "baseline": {"name": name, "definition": DEFINITIONS[name],
                   "training": summary["training"]}, **metrics}  # fmt: skip
        summary["metrics"][name] = metrics
        if out_dir is not None:
            folder = Path(out_dir) / name
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "predictions.jsonl").write_text("".join(dumps(record) + "\n" for record in records), encoding="utf-8")
            write_metrics_json(metrics, folder / "metrics.json")
            (folder / "report.md").write_text(render_report(metrics, {"baseline": name, "definition": DEFINITIONS[name]}))
            summary["files"][name] = str(folder)
    compared = {"model": model_metrics} if model_metrics is not None else {}
    compared.update(summary["metrics"])
    summary["table"] = headline_table(compared)
    return summary


def baselines_json(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The `baselines` entry of the model's `metrics.json`: everything but the full per-baseline metrics (those are
    in `baselines/<name>/metrics.json`)."""
    return {key: value for key, value in summary.items() if key not in ("metrics", "bootstrap_values")}


__all__ = [
    "BASELINE_NAMES",
    "DEFINITIONS",
    "TABLE_KEYS",
    "TrainingStatistics",
    "baseline_answer",
    "baseline_existence_score",
    "baselines_json",
    "build_baseline_records",
    "fit_training_statistics",
    "headline_table",
    "paired_differences",
    "score_baselines",
]
