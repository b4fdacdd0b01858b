"""MIMIC-CXR existence (MedKLIP-style): per-entity AUC from P(Yes), accuracy and P/R/F1 of the greedy yes/no answers,
and the validation-thresholds protocol."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import numpy as np

from codec_litegpt import (
    parse_yes_no,
)

from ..bootstrap import (
    BatchStatFn,
    auc_batch,
    binary_statistic,
    weighted_mean_statistic,
)
from ..classification import (
    binary_report,
)
from ..records import PredictionsError
from .common import failure_rate_statistic, float_or_nan, nanmean_rows, parse_summary, roc_auc, thresholded_entry


def _existence_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for record in records:
        ref = record["reference"]
        if ref.get("label") is None or ref.get("entity") is None:
            raise PredictionsError(f"record {record['id']!r}: an existence reference needs `entity` and `label` (0/1)")
        label = int(ref["label"])
        if label not in (0, 1):
            raise PredictionsError(f"record {record['id']!r}: existence label must be 0 or 1 (uncertain -1 is never scored), got {label}")
        text = record.get("text")
        answer = parse_yes_no(text or "")
        failures = (["missing prediction"] if text is None else []) + ([] if answer is not None else [f"not a yes/no answer: {text!r}"])
        rows.append({
            "id": record["id"], "entity": str(ref["entity"]), "label": label, "answer": answer, "missing": text is None,
            "failures": failures if text is None or answer is None else [], "failed": answer is None,
            "yes": (record.get("scores") or {}).get("yes"), "truncated": bool(record.get("truncated")),
        })  # fmt: skip
    return rows


def score_existence(
    records: list[dict[str, Any]], max_listed: int | None = None, thresholds: Mapping[str, Any] | None = None
) -> tuple[dict[str, Any], list[BatchStatFn], dict[str, Any]]:
    """MIMIC existence metrics; returns `(metrics, bootstrap batch statistics, extras for figures)`."""
    rows = _existence_rows(records)
    out: dict[str, Any] = {"n": len(rows), "parse": parse_summary("existence", rows, max_listed), "entities": {}}
    by_entity = defaultdict(list)
    for k, r in enumerate(rows):
        by_entity[r["entity"]].append(k)
    labels_all = np.array([r["label"] for r in rows], dtype=np.float64)
    pred_all = np.array([0 if r["answer"] is None else r["answer"] for r in rows], dtype=np.float64)
    yes_all = np.array([float_or_nan(r["yes"]) for r in rows], dtype=np.float64)
    stats: list[BatchStatFn] = [failure_rate_statistic(rows)]
    aucs, auc_entities = [], []
    for entity, idx in sorted(by_entity.items()):
        ix = np.array(idx)
        y, pred = labels_all[ix], pred_all[ix]
        entry = {"n": len(idx), "positives": int(y.sum()), "failures": sum(1 for k in idx if rows[k]["failed"])}
        entry.update({f"greedy_{k}": v for k, v in binary_report(y, pred).items() if k in ("precision", "recall", "f1")})
        entry["accuracy"] = float((y == pred).mean())
        mask = np.zeros(len(rows))
        mask[ix] = 1.0
        stats.append(weighted_mean_statistic(f"entities.{entity}.accuracy", (labels_all == pred_all).astype(float), mask))
        stats.append(binary_statistic(f"entities.{entity}", labels_all, pred_all, mask, template="{prefix}.greedy_{metric}"))
        if not np.isnan(yes_all[ix]).any():
            value = roc_auc(y, yes_all[ix])
            entry["auc"] = None if math.isnan(value) else value
            if not math.isnan(value):
                aucs.append(value)
                auc_entities.append((entity, ix))
            else:
                entry["auc_unavailable"] = "the reference has only one class for this entity (AUC undefined)"
        else:
            entry["auc"] = None
            entry["auc_unavailable"] = "no P(Yes) confidences in the predictions"
        out["entities"][entity] = entry
    out["macro_auc"] = float(np.mean(aucs)) if aucs else None
    out["accuracy"] = float((labels_all == pred_all).mean()) if rows else float("nan")
    stats.append(weighted_mean_statistic("accuracy", (labels_all == pred_all).astype(float)))

    def auc_stat(w: np.ndarray) -> dict[str, np.ndarray]:
        res = {f"entities.{e}.auc": auc_batch(labels_all[ix], yes_all[ix], w[:, ix]) for e, ix in auc_entities}
        if res:
            res["macro_auc"] = nanmean_rows(np.stack(list(res.values())))
        return res

    if auc_entities:
        stats.append(auc_stat)

    fitted = (thresholds or {}).get("existence")
    if fitted is not None:
        out["thresholded"], thresholded_stats = thresholded_existence(fitted, by_entity, labels_all, yes_all)
        stats += thresholded_stats
    return out, stats, {"rows": rows}


def thresholded_existence(
    fitted: Mapping[str, Any], by_entity: Mapping[str, list[int]], labels: np.ndarray, yes: np.ndarray
) -> tuple[dict[str, Any], list[BatchStatFn]]:
    """The `thresholded` protocol of existence: each entity's P(Yes) cut at its validation threshold (`fitted`);
    `by_entity` holds the row indices of each entity."""
    entry = thresholded_entry(fitted)
    if fitted.get("unavailable"):
        entry["unavailable"] = {"all": f"no validation thresholds: {fitted['unavailable']}"}
        return entry, []
    if np.isnan(yes).any():
        entry["unavailable"] = {"all": "the test predictions have no P(Yes) confidences (scores.yes)"}
        return entry, []
    predicted = np.zeros(len(labels))
    for entity, idx in by_entity.items():
        threshold = entry["thresholds"].get(entity)
        if threshold is not None:
            predicted[idx] = (yes[idx] >= float(threshold)).astype(float)
    correct = (labels == predicted).astype(float)
    stats: list[BatchStatFn] = []
    entry["entities"] = {}
    for entity, idx in sorted(by_entity.items()):
        report = binary_report(labels[idx], predicted[idx])
        entry["entities"][entity] = {**{k: report[k] for k in ("precision", "recall", "f1", "support")},
                                     "accuracy": float(correct[idx].mean()),
                                     "threshold_known": entity in entry["thresholds"]}  # fmt: skip
        mask = np.zeros(len(labels))
        mask[idx] = 1.0
        stats.append(binary_statistic(f"thresholded.entities.{entity}", labels, predicted, mask))
        stats.append(weighted_mean_statistic(f"thresholded.entities.{entity}.accuracy", correct, mask))
    entry["accuracy"] = float(correct.mean()) if len(labels) else float("nan")
    stats.append(weighted_mean_statistic("thresholded.accuracy", correct))
    return entry, stats
