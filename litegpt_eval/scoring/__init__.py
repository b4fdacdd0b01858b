"""Predictions -> metrics (the content of `metrics.json`).

`score_records(records)` groups records by task and computes, per task:

* `grounding` (VinDr stage 1): parse statistics; local-label classification (22 labels) and Finding vs No finding
  under three protocols - `strict` (headline: exact, negation-aware parsing; a failed answer predicts nothing),
  `failures_excluded` (failed answers removed, [C]-like) and `paper` ([C]'s substring matching); localisation:
  `acc_iou.paper` ([C]), `acc_iou.paper_conditional` (the paper's: only reference boxes whose label the answer
  names), `acc_iou.matched` (one-to-one), `map` at IoU 0.4 / 0.5 for `vindr22` and `kaggle14`;
  per-label AUC of the 22 local labels from the label-slot probabilities; text metrics on the answers with boxes
  removed (`paper`: tags kept, `tag_free`; the paper's Table 4).
* `diagnosis` (VinDr stage 2): parse statistics; global-label classification (6 labels) under the three protocols,
  Finding vs No finding (the paper's Table 1 is computed from these `[vqa]` answers), per-label AUC from the
  label-slot probabilities; text metrics of the answers (`paper`, the paper's Table 5).
* `existence` (MIMIC): per-entity AUC (from P(Yes)), accuracy, P/R/F1 of the greedy answers (MedKLIP-style table).
* `report` (MIMIC): text metrics.

With `thresholds` (fitted on **validation** predictions by `litegpt_eval.thresholds.fit_thresholds`), each task with
label confidences also gets `thresholded`: test P/R/F1 with the label confidences cut at the validation thresholds
(an extra protocol; the greedy-text numbers stay the headline).

Bootstrap 95 % intervals (B=1000, seed 0 by default) of every metric value (not of counts) go to
`confidence_intervals`, keyed by the dotted path of the value in `metrics.json`; images are the resampled unit.
Metrics that cannot be computed are listed under `unavailable` with the reason and never replaced by a number.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from .. import SCHEMA_VERSION
from ..bootstrap import DEFAULT_RESAMPLES, DEFAULT_SEED, bootstrap_values, intervals_from_values
from ..records import PredictionsError
from .common import apply_thresholds, label_auc, label_score_matrix, thresholded_classification
from .diagnosis import diagnosis_reference, score_diagnosis
from .existence import score_existence
from .grounding import grounding_reference, score_grounding
from .protocols import BOOTSTRAP_NOTES, COUNT_KEYS, MAP_THRESHOLDS, NOT_RESAMPLED, PROTOCOLS
from .report_generation import score_report


def _collect_unavailable(tree: Any, prefix: str, out: dict[str, str]) -> None:
    if isinstance(tree, dict):
        for key, value in tree.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            if key in ("unavailable",) and isinstance(value, dict):
                for name, reason in value.items():
                    out[f"{prefix}.{name}" if prefix else name] = reason
            elif key == "auc_unavailable":
                out[f"{prefix}.auc"] = value
            else:
                _collect_unavailable(value, path, out)


_SKIP_SUBTREES = ("thresholds", "validation_f1", "source", "failure_messages", "unavailable")


def numeric_metric_paths(tree: Any, prefix: str = "") -> list[str]:
    """Dotted paths of the finite numeric leaves of `tree` that are metric values (counts, settings and the
    validation-fixed thresholds excluded, see `COUNT_KEYS` / `NOT_RESAMPLED`)."""
    out: list[str] = []
    if isinstance(tree, dict):
        for key, value in tree.items():
            key = str(key)
            if key in _SKIP_SUBTREES or key in COUNT_KEYS or key.startswith("hits_"):
                continue
            out += numeric_metric_paths(value, f"{prefix}.{key}" if prefix else key)
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool) and math.isfinite(float(tree)):
        out.append(prefix)
    return out


def score_records(
    records: list[dict[str, Any]],
    box_format: str | None = None,
    bootstrap: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    coco_meteor: bool = True,
    text_metrics: bool = True,
    progress: bool = False,
    skipped: dict[str, Any] | None = None,
    max_listed: int | None = None,
    thresholds: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """All metrics of a list of prediction records (see the module docstring).

    Records without a `reference` are skipped, counted and listed (`counts.skipped.missing_reference`).
    `thresholds`: `litegpt_eval.thresholds.fit_thresholds(validation_records)` for the `thresholded` protocol.
    Returns `(metrics, extras)`; `extras` holds per-task rows and curves for figures (not JSON).
    """
    skipped = {"items": [], **(skipped or {})}
    by_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        if not isinstance(record.get("reference"), dict):
            skipped["missing_reference"] = skipped.get("missing_reference", 0) + 1
            skipped["items"].append({"id": record.get("id"), "task": record.get("task"), "reason": "missing_reference"})
            continue
        by_task[record["task"]].append(record)
    if not by_task:
        raise PredictionsError("no record has a reference: nothing can be scored (pass --references?)")

    metrics: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "protocols": PROTOCOLS,
        "counts": {
            "records": len(records),
            "scored": {task: len(rs) for task, rs in sorted(by_task.items())},
            "skipped": {k: v for k, v in skipped.items() if k != "items"},
            "skipped_items": skipped["items"][:max_listed],
        },
        "tasks": {},
        "confidence_intervals": {},
        "bootstrap": {
            "resamples": int(bootstrap),
            "seed": int(seed),
            "confidence": 0.95,
            "method": "percentile",
            "unit": "image (records sharing an image_id are resampled together)",
            "not_resampled": dict(NOT_RESAMPLED),
            "notes": dict(BOOTSTRAP_NOTES),
        },
        "unavailable": {},
    }
    extras: dict[str, Any] = {}
    for task, task_records in sorted(by_task.items(), key=lambda kv: ("grounding", "diagnosis", "existence", "report").index(kv[0])):
        if task == "grounding":
            out, stats, extra = score_grounding(task_records, box_format, coco_meteor, text_metrics, max_listed, thresholds)
        elif task == "diagnosis":
            out, stats, extra = score_diagnosis(task_records, max_listed, thresholds, coco_meteor, text_metrics)
        elif task == "existence":
            out, stats, extra = score_existence(task_records, max_listed, thresholds)
        else:
            out, stats, extra = score_report(task_records, coco_meteor, max_listed)
        metrics["tasks"][task] = out
        extras[task] = extra
        if bootstrap:
            _add_intervals(metrics, task, task_records, stats, extra, bootstrap, seed, progress)
    if not bootstrap:
        metrics["bootstrap"]["not_resampled"] = {"all": "no intervals requested (--bootstrap 0)"}
    _collect_unavailable(metrics["tasks"], "tasks", metrics["unavailable"])
    return metrics, extras


def _add_intervals(
    metrics: dict[str, Any], task: str, records: list[dict[str, Any]], stats: list, extra: dict[str, Any],
    resamples: int, seed: int, progress: bool,
) -> None:  # fmt: skip
    """The bootstrap intervals of a task's metric values into `metrics["confidence_intervals"]` (images resampled,
    the records of one image together), and the reason for every value left without one. The per-resample values
    are kept in `extra["bootstrap"]` for paired comparisons with another system scored on the same images."""
    image_ids = [str(r.get("image_id") or r["id"]) for r in records]
    units = {image: k for k, image in enumerate(dict.fromkeys(image_ids))}
    if len(units) < 2:
        metrics["bootstrap"]["not_resampled"][f"tasks.{task}"] = f"{len(units)} image(s): nothing to resample"
        return
    values = bootstrap_values(len(units), resamples=resamples, seed=seed, progress=progress,
                              batch_statistics=stats, cluster_index=[units[i] for i in image_ids])  # fmt: skip
    extra["bootstrap"] = {"units": list(units), "values": values}
    for name, interval in intervals_from_values(values, resamples, seed).items():
        path = f"tasks.{task}.{name}"
        try:
            value = lookup(metrics, path)
        except KeyError:
            continue  # a statistic of a value the point estimate does not report (e.g. an undefined AUC)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value)):
            metrics["confidence_intervals"][path] = interval
    for path in numeric_metric_paths(metrics["tasks"][task], f"tasks.{task}"):
        if path in metrics["confidence_intervals"]:
            continue
        if path.endswith(".meteor_coco"):
            reason = "METEOR 1.5 is a corpus score computed inside the Java program; rerunning it per resample is too slow"
        else:
            reason = "no bootstrap statistic for this value (point estimate only)"
        metrics["bootstrap"]["not_resampled"][path] = reason


def lookup(metrics: dict[str, Any], dotted: str) -> Any:
    """Value at a dotted path of the metrics dictionary (keys such as "0.4" contain a dot: longest key first)."""
    node: Any = metrics
    parts = dotted.split(".")
    k = 0
    while k < len(parts):
        for j in range(len(parts), k, -1):
            key = ".".join(parts[k:j])
            if isinstance(node, dict) and key in node:
                node = node[key]
                k = j
                break
        else:
            raise KeyError(dotted)
    return node


__all__ = [
    "COUNT_KEYS",
    "MAP_THRESHOLDS",
    "PROTOCOLS",
    "apply_thresholds",
    "diagnosis_reference",
    "grounding_reference",
    "label_auc",
    "label_score_matrix",
    "lookup",
    "numeric_metric_paths",
    "score_diagnosis",
    "score_existence",
    "score_grounding",
    "score_records",
    "score_report",
    "thresholded_classification",
]
