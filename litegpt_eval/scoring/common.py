"""Pieces every task's scoring shares: parse bookkeeping, the three classification protocols and their bootstrap
statistics, text metrics with their statistics, label AUCs and the validation-thresholds protocol."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from codec_litegpt import (
    NO_FINDING,
    canonical_label,
)

from ..bootstrap import (
    BatchStatFn,
    auc_batch,
    binary_statistic,
    multilabel_statistic,
    safe_div,
    weighted_mean_statistic,
)
from ..classification import (
    FINDING,
    finding_report,
    multilabel_report,
)
from ..records import PredictionsError
from ..text_metrics import bleu_from_stats, compute_text_metrics
from .protocols import PROTOCOLS


def threshold_key(t: float) -> str:
    return f"{t:g}"


def canonical_list(labels: Sequence[str] | None, vocabulary: Sequence[str], record_id: str, field: str) -> list[str]:
    out = []
    for label in labels or []:
        try:
            out.append(canonical_label(label, vocabulary))
        except ValueError as err:
            raise PredictionsError(f"record {record_id!r}: reference {field} holds a label outside the label list: {err}") from err
    return list(dict.fromkeys(out))


def parse_summary(task: str, rows: list[dict[str, Any]], max_listed: int | None = None) -> dict[str, Any]:
    failed = [r for r in rows if r["failed"]]
    out = {
        "n": len(rows),
        "failures": len(failed),
        "failure_rate": len(failed) / len(rows) if rows else float("nan"),
        "failed_ids": [r["id"] for r in failed][:max_listed],
        "failure_messages": {r["id"]: r["failures"] for r in failed[:max_listed]},
        "missing_predictions": sum(1 for r in rows if r.get("missing")),
        "truncated": sum(1 for r in rows if r.get("truncated")),
        "contradictions": sum(1 for r in rows if r.get("contradiction")),
        "contradiction_ids": [r["id"] for r in rows if r.get("contradiction")][:max_listed],
    }
    return out


def classification_protocols(y_true, strict, paper, ok, has_pred, labels) -> dict[str, Any]:
    return {
        "strict": multilabel_report(y_true, strict, labels),
        "failures_excluded": multilabel_report(y_true[ok], strict[ok], labels),
        "paper": multilabel_report(y_true[has_pred], paper[has_pred], labels),
    }


def finding_protocols(m: dict[str, Any]) -> dict[str, Any]:
    ok, has = m["ok"], m["has_pred"]
    return {
        "strict": finding_report(m["true_nf"], m["pred_finding"], m["pred_nf"]),
        "failures_excluded": finding_report(m["true_nf"][ok], m["pred_finding"][ok], m["pred_nf"][ok]),
        "paper": finding_report(m["true_nf"][has], m["paper_finding"][has], 1 - m["paper_finding"][has]),
    }


def prf_counts(tp: float, fp: float, fn: float) -> dict[str, float]:
    return {
        "precision": float(tp / (tp + fp)) if tp + fp else 0.0,
        "recall": float(tp / (tp + fn)) if tp + fn else 0.0,
        "f1": float(2 * tp / (2 * tp + fp + fn)) if tp + fp + fn else 0.0,
        "tp": round(tp), "fp": round(fp), "fn": round(fn),
    }  # fmt: skip


def classification_statistics(prefix: str, y_true, strict, paper, ok, has_pred, labels) -> list[BatchStatFn]:
    return [
        multilabel_statistic(f"{prefix}.strict", labels, y_true, strict),
        multilabel_statistic(f"{prefix}.failures_excluded", labels, y_true, strict, rows=ok),
        multilabel_statistic(f"{prefix}.paper", labels, y_true, paper, rows=has_pred),
    ]


def finding_statistics(m: dict[str, Any]) -> list[BatchStatFn]:
    stats = []
    for protocol, rows, finding, no_finding in (
        ("strict", None, m["pred_finding"], m["pred_nf"]),
        ("failures_excluded", m["ok"], m["pred_finding"], m["pred_nf"]),
        ("paper", m["has_pred"], m["paper_finding"], 1 - m["paper_finding"]),
    ):
        stats.append(binary_statistic(f"finding.{protocol}.{FINDING}", 1 - m["true_nf"], finding, rows))
        stats.append(binary_statistic(f"finding.{protocol}.{NO_FINDING}", m["true_nf"], no_finding, rows))
    return stats


def failure_rate_statistic(rows: list[dict[str, Any]]) -> BatchStatFn:
    return weighted_mean_statistic("parse.failure_rate", np.array([float(r["failed"]) for r in rows]))


def text_statistic(prefix: str, raw: Mapping[str, Any]) -> BatchStatFn:
    """Every text metric of `raw` except METEOR 1.5 on resamples (see `BOOTSTRAP_NOTES`)."""
    names = [name for name in raw if name != "meteor_coco"]

    def fn(w: np.ndarray) -> dict[str, np.ndarray]:
        out = {}
        for name in names:
            result = raw[name]
            if name.startswith("bleu"):
                totals = w @ result["stats"]
                out[f"{prefix}.{name}"] = np.array([bleu_from_stats(row, result["max_order"]) for row in totals])
            else:
                out[f"{prefix}.{name}"] = safe_div(w @ result["per_sample"], w.sum(axis=1), np.nan)
        return out

    return fn


def text_variant(
    variant: str, predictions: list[str], references: list[str], clean: Any, coco_meteor: bool
) -> tuple[dict[str, Any], BatchStatFn]:
    """`{variant: {"values", "unavailable"}}` of the text metrics of `clean`ed answers, and its bootstrap statistic.

    METEOR 1.5 (Java) runs only when `coco_meteor`, and only the `paper` variant reports it (or why it is missing).
    """
    result = compute_text_metrics([clean(t) for t in predictions], [clean(t) for t in references], coco_meteor=coco_meteor)
    if variant != "paper":
        result["unavailable"].pop("meteor_coco", None)
    entry = {variant: {"values": result["values"], "unavailable": result["unavailable"]}}
    return entry, text_statistic(f"text.{variant}.values", result["raw"])


def nanmean_rows(stacked: np.ndarray) -> np.ndarray:
    """Column-wise mean of the non-NaN entries of `(k, B)` (NaN where all are NaN), without warnings."""
    valid = ~np.isnan(stacked)
    return safe_div(np.where(valid, stacked, 0.0).sum(axis=0), valid.sum(axis=0), np.nan)


def float_or_nan(value: Any) -> float:
    try:
        return float(value) if value is not None else float("nan")
    except (TypeError, ValueError):
        return float("nan")


def roc_auc(y: np.ndarray, score: np.ndarray, weights: np.ndarray | None = None) -> float:
    from sklearn.metrics import roc_auc_score

    if weights is not None:
        keep = weights > 0
        y, score, weights = y[keep], score[keep], weights[keep]
    if len(np.unique(y)) < 2:
        return float("nan")
    return float(roc_auc_score(y, score, sample_weight=weights))


def label_score_matrix(rows: list[dict[str, Any]], labels: Sequence[str]) -> np.ndarray | None:
    """(n, labels) confidences from `row["label_scores"]` (NaN where a label is missing); None when a row has none."""
    if not rows or any(r.get("label_scores") is None for r in rows):
        return None
    return np.array([[float_or_nan(r["label_scores"].get(label)) for label in labels] for r in rows], dtype=np.float64)


def label_auc(rows: list[dict[str, Any]], labels: Sequence[str], y_true: np.ndarray) -> tuple[dict[str, Any], list[BatchStatFn], np.ndarray | None]:
    """Per-label ROC AUC of the rows' label confidences (`auc` entry of `metrics.json`) and its bootstrap statistic.

    A label without a positive (or without a negative) reference has no AUC: `null`, excluded from the macro mean,
    listed in `no_positive_labels` / `no_negative_labels` and under `unavailable` with the reason.
    """
    auc: dict[str, Any] = {"labels": {}, "unavailable": {}, "no_positive_labels": [], "no_negative_labels": []}
    scores = label_score_matrix(rows, labels)
    if scores is None:
        missing = sum(1 for r in rows if r.get("label_scores") is None)
        auc.update({"macro": None, "n_labels": 0})
        auc["unavailable"] = {"all": f"{missing} of {len(rows)} predictions have no label confidences (scores.labels)"}
        return auc, [], None
    valid_k = []
    for k, label in enumerate(labels):
        positives = int(y_true[:, k].sum())
        if np.isnan(scores[:, k]).any():
            auc["labels"][label] = None
            auc["unavailable"][label] = "some predictions lack this label's confidence"
        elif positives == 0:
            auc["labels"][label] = None
            auc["no_positive_labels"].append(label)
            auc["unavailable"][label] = "no positive reference for this label (AUC undefined; excluded from the macro mean)"
        elif positives == len(rows):
            auc["labels"][label] = None
            auc["no_negative_labels"].append(label)
            auc["unavailable"][label] = "no negative reference for this label (AUC undefined; excluded from the macro mean)"
        else:
            auc["labels"][label] = roc_auc(y_true[:, k], scores[:, k])
            valid_k.append(k)
    valid = [auc["labels"][labels[k]] for k in valid_k]
    auc["macro"] = float(np.mean(valid)) if valid else None
    auc["n_labels"] = len(valid)

    def fn(w: np.ndarray) -> dict[str, np.ndarray]:
        out = {f"auc.labels.{labels[k]}": auc_batch(y_true[:, k], scores[:, k], w) for k in valid_k}
        if valid_k:
            out["auc.macro"] = nanmean_rows(np.stack([out[f"auc.labels.{labels[k]}"] for k in valid_k]))
        return out

    return auc, ([fn] if valid_k else []), scores


def thresholded_entry(fitted: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "protocol": PROTOCOLS["thresholded"],
        "source": fitted.get("source"),
        "n_validation": fitted.get("n"),
        "thresholds": dict(fitted.get("thresholds") or {}),
        "validation_f1": dict(fitted.get("validation_f1") or {}),
        "no_validation_positives": list(fitted.get("no_validation_positives") or []),
    }


def apply_thresholds(scores: np.ndarray, labels: Sequence[str], thresholds: Mapping[str, float | None]) -> np.ndarray:
    """0/1 predictions `score >= threshold` per label; a label without threshold (or a NaN score) predicts 0."""
    out = np.zeros(scores.shape, dtype=np.int64)
    for k, label in enumerate(labels):
        thr = thresholds.get(label)
        if thr is None:
            continue
        with np.errstate(invalid="ignore"):
            out[:, k] = (scores[:, k] >= float(thr)).astype(np.int64)
    return out


def thresholded_classification(
    scores: np.ndarray | None, labels: Sequence[str], y_true: np.ndarray, fitted: Mapping[str, Any] | None
) -> tuple[dict[str, Any] | None, list[BatchStatFn]]:
    """The `thresholded` protocol of a multi-label task: validation thresholds applied to the test confidences."""
    if fitted is None:
        return None, []
    entry = thresholded_entry(fitted)
    if fitted.get("unavailable"):
        entry["unavailable"] = {"all": f"no validation thresholds: {fitted['unavailable']}"}
        return entry, []
    if scores is None:
        entry["unavailable"] = {"all": "the test predictions have no label confidences (scores.labels)"}
        return entry, []
    pred = apply_thresholds(scores, labels, entry["thresholds"])
    entry["classification"] = multilabel_report(y_true, pred, labels)
    return entry, [multilabel_statistic("thresholded.classification", labels, y_true, pred)]
