"""Decision thresholds for the label confidences, chosen on the **validation** split.

The headline classification numbers come from the greedy answer text. When the predictions carry label
confidences (`scores.labels` of stage 1 / stage 2, `scores.yes` of MIMIC existence), an extra protocol cuts them at
per-label thresholds chosen on validation predictions and reports test P/R/F1 at those thresholds
(`tasks.<task>.thresholded` in `metrics.json`). MedKLIP tuned its thresholds on the test set; here they are never
tuned on test: `check_disjoint` refuses validation predictions that share an image with the scored ones.

Rule (`f1_optimal_threshold`): a label is predicted when `confidence >= threshold`; the candidates are the distinct
validation confidences of the label; the chosen one maximises the label's F1 on validation; ties go to the highest
threshold (fewest positive predictions). A label without a validation positive has F1 0 whatever the threshold:
it gets no threshold (`null`) and is never predicted (listed in `no_validation_positives`).
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from codec_litegpt import VINDR_GLOBAL_LABELS, VINDR_LOCAL_LABELS

from .classification import label_vector
from .records import PredictionsError, load_records

TASK_LABELS = {"grounding": VINDR_LOCAL_LABELS, "diagnosis": VINDR_GLOBAL_LABELS}
_TIE = 1e-12


def f1_optimal_threshold(y_true: Sequence[int], scores: Sequence[float]) -> tuple[float | None, float]:
    """`(threshold, F1)` maximising F1 of `score >= threshold` over the distinct scores (ties: highest threshold).

    `(None, 0.0)` when there is no positive (nothing to find: never predict). NaN scores raise.
    """
    y = np.asarray(y_true, dtype=np.int64).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(y) != len(s):
        raise ValueError(f"{len(y)} labels for {len(s)} scores")
    if np.isnan(s).any():
        raise ValueError("NaN confidence: every validation prediction needs a score for every label")
    positives = int(y.sum())
    if positives == 0:
        return None, 0.0
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    ends = np.concatenate((np.flatnonzero(np.diff(s_sorted) != 0), [len(s) - 1]))  # last index of each tie group
    tp = np.cumsum(y_sorted)[ends]
    predicted = ends + 1
    f1 = 2.0 * tp / (predicted + positives)
    best = int(np.flatnonzero(f1 >= f1.max() - _TIE)[0])  # descending scores: the first is the highest threshold
    return float(s_sorted[ends[best]]), float(f1[best])


def _fit_matrix(y: np.ndarray, scores: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    thresholds: dict[str, float | None] = {}
    f1s: dict[str, float] = {}
    missing = []
    for k, label in enumerate(labels):
        thr, f1 = f1_optimal_threshold(y[:, k], scores[:, k])
        thresholds[label] = thr
        f1s[label] = f1
        if thr is None:
            missing.append(label)
    return {"thresholds": thresholds, "validation_f1": f1s, "no_validation_positives": missing, "n": len(y)}


def fit_label_thresholds(y_true: np.ndarray, scores: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """Per-label thresholds of a multi-label validation set: `{"thresholds", "validation_f1",
    "no_validation_positives", "n"}`."""
    y = np.asarray(y_true, dtype=np.int64).reshape(-1, len(labels))
    s = np.asarray(scores, dtype=np.float64).reshape(-1, len(labels))
    return _fit_matrix(y, s, labels)


def _multilabel_task(task: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    from .scoring import diagnosis_reference, grounding_reference

    labels = TASK_LABELS[task]
    reference = grounding_reference if task == "grounding" else diagnosis_reference
    field = "local_labels" if task == "grounding" else "global_labels"
    missing = [r["id"] for r in records if not isinstance((r.get("scores") or {}).get("labels"), dict)]
    if missing:
        return {"unavailable": f"{len(missing)} of {len(records)} validation predictions have no label confidences "
                               f"(scores.labels), e.g. {missing[:3]}", "n": len(records)}  # fmt: skip
    y = np.array([label_vector(reference(r)[field], labels) for r in records], dtype=np.int64).reshape(-1, len(labels))
    scores = np.array([[r["scores"]["labels"].get(label, np.nan) for label in labels] for r in records], dtype=np.float64)
    lacking = [labels[k] for k in range(len(labels)) if np.isnan(scores[:, k]).any()]
    if lacking:
        return {"unavailable": f"validation predictions lack the confidence of {lacking}", "n": len(records)}
    return _fit_matrix(y, scores, labels)


def _existence_task(records: list[dict[str, Any]]) -> dict[str, Any]:
    by_entity: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for r in records:
        ref = r.get("reference") or {}
        yes = (r.get("scores") or {}).get("yes")
        if yes is None:
            return {"unavailable": f"validation prediction {r['id']!r} has no P(Yes) confidence (scores.yes)", "n": len(records)}
        if ref.get("entity") is None or ref.get("label") not in (0, 1):
            raise PredictionsError(f"validation record {r['id']!r}: an existence reference needs `entity` and `label` (0/1)")
        by_entity[str(ref["entity"])].append((int(ref["label"]), float(yes)))
    out: dict[str, Any] = {"thresholds": {}, "validation_f1": {}, "no_validation_positives": [], "n": len(records)}
    for entity, pairs in sorted(by_entity.items()):
        thr, f1 = f1_optimal_threshold([p[0] for p in pairs], [p[1] for p in pairs])
        out["thresholds"][entity] = thr
        out["validation_f1"][entity] = f1
        if thr is None:
            out["no_validation_positives"].append(entity)
    return out


def fit_thresholds(validation_records: Iterable[dict[str, Any]], source: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Thresholds per task from validation prediction records (with references and confidences).

    Returns `{task: {"thresholds": {label: t or None}, "validation_f1": {label: F1}, "no_validation_positives":
    [...], "n": n, "source": source}}` for grounding / diagnosis / existence (other tasks ignored); a task whose
    records lack confidences gets `{"unavailable": reason}` instead.
    """
    by_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in validation_records:
        if isinstance(record.get("reference"), dict):
            by_task[record["task"]].append(record)
    out: dict[str, Any] = {}
    for task, records in by_task.items():
        if task in TASK_LABELS:
            fitted = _multilabel_task(task, records)
        elif task == "existence":
            fitted = _existence_task(records)
        else:
            continue
        fitted["source"] = dict(source or {})
        out[task] = fitted
    return out


def check_disjoint(validation_records: Iterable[dict[str, Any]], test_records: Iterable[dict[str, Any]]) -> None:
    """Raise when the validation predictions share an image with the scored (test) predictions: thresholds must
    never be tuned on the images they are evaluated on."""
    val = {(r.get("task"), str(r.get("image_id") or r.get("id"))) for r in validation_records}
    test = {(r.get("task"), str(r.get("image_id") or r.get("id"))) for r in test_records}
    shared = sorted(val & test, key=str)
    if shared:
        listed = ", ".join(f"{task}:{image}" for task, image in shared[:5])
        raise PredictionsError(
            f"the threshold (validation) predictions share {len(shared)} image(s) with the scored predictions "
            f"({listed}...): thresholds must come from a split disjoint from the test split"
        )


def load_threshold_source(path: str | os.PathLike, test_records: Iterable[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Fit thresholds from a validation predictions JSONL (e.g. `eval.py --threshold_split validation` output).

    Refuses a file whose `generation_manifest.json` says it was generated on the test split, or that shares an
    image with `test_records`.
    """
    path = Path(path)
    records, _ = load_records(path)
    manifest_path = path.with_name("generation_manifest.json")
    split = None
    if manifest_path.exists():
        import json

        split = json.loads(manifest_path.read_text()).get("split")
        if split == "test":
            raise PredictionsError(f"{path} was generated on the test split ({manifest_path}): thresholds are never tuned on test")
    if test_records is not None:
        check_disjoint(records, test_records)
    source = {"file": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "split": split, "records": len(records)}
    return fit_thresholds(records, source)


__all__ = [
    "TASK_LABELS",
    "check_disjoint",
    "f1_optimal_threshold",
    "fit_label_thresholds",
    "fit_thresholds",
    "load_threshold_source",
]
