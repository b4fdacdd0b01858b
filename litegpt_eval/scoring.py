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
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from processing_litegpt import (
    NO_FINDING,
    VINDR_GLOBAL_LABELS,
    VINDR_LOCAL_LABELS,
    canonical_label,
    format_diagnosis_answer,
    format_grounding_answer,
    parse_diagnosis_answer,
    parse_grounding_answer,
    parse_yes_no,
)

from . import SCHEMA_VERSION
from .bootstrap import (
    DEFAULT_RESAMPLES,
    DEFAULT_SEED,
    BatchStatFn,
    auc_batch,
    average_precision_batch,
    binary_statistic,
    bootstrap_values,
    intervals_from_values,
    multilabel_statistic,
    prf_from_counts,
    safe_div,
    weighted_mean_statistic,
)
from .box_formats import to_litegpt_answer
from .classification import (
    FINDING,
    binary_report,
    finding_report,
    label_vector,
    multilabel_report,
    paper_global_vector,
    paper_local_vector,
    strict_diagnosis_labels,
    strict_grounding_labels,
)
from .localization import (
    THRESHOLDS,
    ImageBoxes,
    matched_image_counts,
    mean_average_precision,
    paper_image_hits,
    taxonomy_classes,
    to_taxonomy,
)
from .records import PredictionsError
from .text_metrics import bleu_from_stats, compute_text_metrics, remove_boxes_and_tags, remove_boxes_paper

MAP_THRESHOLDS = (0.4, 0.5)
PROTOCOLS = {
    "strict": "exact whole-label parsing (processing_litegpt), negation-aware; a parse failure predicts nothing "
    "(all-negative) and stays in the denominator",
    "failures_excluded": "as strict, but answers with a parse failure are removed ([C]-like)",
    "paper": "the reference code: lower-case, <...> removed, substring test per class; Finding = 'no finding' absent",
    "acc_iou.paper": "[C] compute_accuracy: [C] regex on prediction and reference text, a reference box is hit when "
    "any same-label prediction of the image has grid IoU (+1 convention) > t; hits / reference boxes x 100",
    "acc_iou.paper_conditional": "the paper's reading (section 4.5: only correctly classified findings are "
    "included): the hits of acc_iou.paper divided by the reference boxes whose label the answer names in a phrase "
    "([C]'s regex and exact label string) x 100",
    "acc_iou.matched": "continuous IoU of predicted boxes (decoded from the 0-100 grid to pixels) and reference boxes "
    "(original pixels), one-to-one greedy matching per (image, label) by descending IoU > t; precision / recall / F1 "
    "over boxes; every syntactically valid phrase is a box, also in an answer with another failed fragment",
    "map": "VOC-2010 all-point AP per class, detections ranked by box confidence (exp mean token log-prob) over the "
    "set, IoU > t, mean over classes with reference boxes; vindr22 = 22 local labels, kaggle14 = the VinBigData 14 "
    "classes + No finding pseudo-box (0,0,1,1)",
    "auc": "ROC AUC of label confidences: max over the greedy answer's list slots (after the prefix, after each "
    "separator, one appended after the last item) of the teacher-forced probability of the label's full token "
    "string (stage 1: '<p>label</p>', stage 2: the label); P(Yes)/(P(Yes)+P(No)) (existence); labels without a "
    "positive (or negative) reference are undefined, excluded from the macro mean and listed",
    "thresholded": "extra protocol, not the headline: per-label thresholds on the label confidences chosen on the "
    "VALIDATION predictions (each maximising that label's F1 there; ties -> the highest threshold; a label without "
    "validation positives is never predicted) and applied unchanged to the test predictions; never tuned on test",
    "text.paper": "boxes removed with [C]'s regex, <p> tags kept",
    "text.tag_free": "boxes and <p> tags removed",
    "bootstrap": "95 % percentile bootstrap over images (the records of one image are resampled together); every "
    "metric value is recomputed on each resample, counts are not resampled",
}
# Leaves of `tasks` that are counts of the sample (or settings), not estimates: no interval.
COUNT_KEYS = frozenset({
    "n", "n_samples", "n_labels", "n_classes", "support", "tp", "fp", "fn", "failures", "missing_predictions",
    "truncated", "contradictions", "no_finding_answers", "none_answers", "gt_boxes", "images_with_gt_boxes",
    "positives", "n_validation", "gt_boxes_label_predicted",
})  # fmt: skip
NOT_RESAMPLED = {
    "counts": "counts of the test sample (n, support, tp/fp/fn, failures, reference boxes, hits_*...) are not "
    "estimates and get no interval",
    "tasks.*.thresholded.thresholds / validation_f1": "chosen / measured on the validation predictions: fixed "
    "parameters of the thresholded protocol, not test estimates",
}
BOOTSTRAP_NOTES = {
    "cider": "CIDEr-D (and cider_paper) resampled as the mean of per-image scores with the document frequencies of "
    "the full test set (not recomputed per resample)",
    "bleu": "BLEU recomputed from the resampled corpus n-gram statistics",
    "map": "detections keep the TP/FP flags of their image (matching is per image); AP recomputed from the "
    "resampled, re-weighted ranking",
}
def _key(t: float) -> str:
    return f"{t:g}"


# ======================================================================================= references


def _canonical_list(labels: Sequence[str] | None, vocabulary: Sequence[str], record_id: str, field: str) -> list[str]:
    out = []
    for label in labels or []:
        try:
            out.append(canonical_label(label, vocabulary))
        except ValueError as err:
            raise PredictionsError(f"record {record_id!r}: reference {field} holds a label outside the label list: {err}") from err
    return list(dict.fromkeys(out))


def grounding_reference(record: dict[str, Any]) -> dict[str, Any]:
    """Normalised stage-1 reference: canonical local labels, boxes, no_finding, width/height, reference text."""
    ref = record["reference"]
    rid = record["id"]
    width, height = ref.get("width"), ref.get("height")
    if not width or not height:
        raise PredictionsError(f"record {rid!r}: reference needs the original image `width` and `height`")
    raw_box_labels = ref.get("box_labels") or []
    boxes = [tuple(float(v) for v in box) for box in ref.get("boxes") or []]
    if len(raw_box_labels) != len(boxes):
        raise PredictionsError(f"record {rid!r}: {len(raw_box_labels)} box labels for {len(boxes)} reference boxes")
    box_labels = []
    for label in raw_box_labels:
        try:
            box_labels.append(canonical_label(label, VINDR_LOCAL_LABELS))
        except ValueError as err:
            raise PredictionsError(f"record {rid!r}: reference box label outside the label list: {err}") from err
    local = ref.get("local_labels")
    local = _canonical_list(local, VINDR_LOCAL_LABELS, rid, "local_labels") if local is not None else list(dict.fromkeys(box_labels))
    global_labels = _canonical_list(ref.get("global_labels"), VINDR_GLOBAL_LABELS, rid, "global_labels")
    if ref.get("no_finding") is not None:
        no_finding = bool(ref["no_finding"])
    elif ref.get("global_labels") is not None:
        no_finding = NO_FINDING in global_labels
    else:
        no_finding = not local and not boxes
    text = ref.get("text")
    if text is None:  # the codec's target for these boxes (what the builder writes as `completion`)
        text = format_grounding_answer(list(zip(box_labels, boxes)), width, height, no_finding=no_finding and not boxes)
    return {
        "width": float(width), "height": float(height), "local_labels": local, "no_finding": no_finding,
        "box_labels": box_labels, "boxes": boxes, "text": text,
    }  # fmt: skip


def diagnosis_reference(record: dict[str, Any]) -> dict[str, Any]:
    ref = record["reference"]
    rid = record["id"]
    if ref.get("global_labels") is None:
        raise PredictionsError(f"record {rid!r}: a diagnosis reference needs `global_labels`")
    labels = _canonical_list(ref["global_labels"], VINDR_GLOBAL_LABELS, rid, "global_labels")
    no_finding = bool(ref["no_finding"]) if ref.get("no_finding") is not None else NO_FINDING in labels
    if no_finding and NO_FINDING not in labels:
        labels.append(NO_FINDING)
    text = ref.get("text") if ref.get("text") is not None else format_diagnosis_answer(labels)
    return {"global_labels": labels, "no_finding": no_finding, "text": text}


# ======================================================================================= parse bookkeeping


def _parse_summary(task: str, rows: list[dict[str, Any]], max_listed: int | None = None) -> dict[str, Any]:
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


def _scores_by_phrase(record: dict[str, Any]) -> list[tuple[tuple[str, tuple[int, ...]], float | None]]:
    parsed = record.get("parsed") or {}
    return [((f.get("label"), tuple(f.get("grid_box") or ())), f.get("score")) for f in parsed.get("findings", [])]


# ======================================================================================= grounding


def _grounding_rows(records: list[dict[str, Any]], box_format: str | None) -> list[dict[str, Any]]:
    rows = []
    for record in records:
        ref = grounding_reference(record)
        text = record.get("text")
        missing = text is None
        if box_format and box_format != "litegpt" and text is not None:
            text = to_litegpt_answer(text, box_format, ref["width"], ref["height"])
        parsed = parse_grounding_answer(text or "", ref["width"], ref["height"])
        failures = (["missing prediction"] if missing else []) + list(parsed.failures)
        stored = _scores_by_phrase(record)
        current = [((f.label, tuple(f.grid_box)), None) for f in parsed.findings]
        reuse = len(stored) == len(current) and all(a[0] == b[0] for a, b in zip(stored, current))
        scores = [s for _, s in stored] if reuse else [None] * len(parsed.findings)
        findings = [
            {"label": f.label, "box": f.box, "grid_box": f.grid_box, "score": s} for f, s in zip(parsed.findings, scores)
        ]
        rows.append(
            {
                "id": record["id"], "image_id": record.get("image_id", record["id"]), "text": text or "",
                "raw_text": record.get("text"), "ref": ref, "missing": missing, "failures": failures,
                "failed": bool(failures), "findings": findings, "no_finding": parsed.no_finding,
                "none_listed": parsed.none_listed, "contradiction": parsed.contradiction,
                "truncated": bool(record.get("truncated")),
                "no_finding_score": (record.get("scores") or {}).get("no_finding"),
                "label_scores": (record.get("scores") or {}).get("labels"),
            }
        )  # fmt: skip
    return rows


def _grounding_matrices(rows: list[dict[str, Any]]) -> dict[str, Any]:
    y_true = np.array([label_vector(r["ref"]["local_labels"], VINDR_LOCAL_LABELS) for r in rows], dtype=np.int64).reshape(-1, 22)
    strict = np.zeros_like(y_true)
    pred_finding = np.zeros(len(rows), dtype=np.int64)
    pred_nf = np.zeros(len(rows), dtype=np.int64)
    for i, r in enumerate(rows):
        if r["failed"]:
            continue
        labels, finding, nf = strict_grounding_labels({"findings": r["findings"], "no_finding": r["no_finding"], "none_listed": r["none_listed"]})
        strict[i] = label_vector(labels, VINDR_LOCAL_LABELS)
        pred_finding[i], pred_nf[i] = int(finding), int(nf)
    paper = np.array([paper_local_vector(r["text"]) for r in rows], dtype=np.int64).reshape(-1, 22)
    paper_finding = np.array([paper_global_vector(r["text"])[1] for r in rows], dtype=np.int64)
    true_nf = np.array([int(r["ref"]["no_finding"]) for r in rows], dtype=np.int64)
    ok = np.array([not r["failed"] for r in rows], dtype=bool)
    has_pred = np.array([not r["missing"] for r in rows], dtype=bool)
    return {
        "y_true": y_true, "strict": strict, "paper": paper, "ok": ok, "has_pred": has_pred, "true_nf": true_nf,
        "pred_finding": pred_finding, "pred_nf": pred_nf, "paper_finding": paper_finding,
    }  # fmt: skip


def _classification_protocols(y_true, strict, paper, ok, has_pred, labels) -> dict[str, Any]:
    return {
        "strict": multilabel_report(y_true, strict, labels),
        "failures_excluded": multilabel_report(y_true[ok], strict[ok], labels),
        "paper": multilabel_report(y_true[has_pred], paper[has_pred], labels),
    }


def _finding_protocols(m: dict[str, Any]) -> dict[str, Any]:
    ok, has = m["ok"], m["has_pred"]
    return {
        "strict": finding_report(m["true_nf"], m["pred_finding"], m["pred_nf"]),
        "failures_excluded": finding_report(m["true_nf"][ok], m["pred_finding"][ok], m["pred_nf"][ok]),
        "paper": finding_report(m["true_nf"][has], m["paper_finding"][has], 1 - m["paper_finding"][has]),
    }


def _image_boxes(rows: list[dict[str, Any]]) -> tuple[dict[str, ImageBoxes], dict[str, ImageBoxes]]:
    preds, gts = {}, {}
    for r in rows:
        preds[r["id"]] = ImageBoxes([f["label"] for f in r["findings"]], [f["box"] for f in r["findings"]],
                                    [f["score"] for f in r["findings"]])  # fmt: skip
        gts[r["id"]] = ImageBoxes(list(r["ref"]["box_labels"]), list(r["ref"]["boxes"]))
    return preds, gts

def _prf(tp: float, fp: float, fn: float) -> dict[str, float]:
    return {
        "precision": float(tp / (tp + fp)) if tp + fp else 0.0,
        "recall": float(tp / (tp + fn)) if tp + fn else 0.0,
        "f1": float(2 * tp / (2 * tp + fp + fn)) if tp + fp + fn else 0.0,
        "tp": round(tp), "fp": round(fp), "fn": round(fn),
    }  # fmt: skip


# ======================================================================================= shared pieces


def _classification_statistics(prefix: str, y_true, strict, paper, ok, has_pred, labels) -> list[BatchStatFn]:
    return [
        multilabel_statistic(f"{prefix}.strict", labels, y_true, strict),
        multilabel_statistic(f"{prefix}.failures_excluded", labels, y_true, strict, rows=ok),
        multilabel_statistic(f"{prefix}.paper", labels, y_true, paper, rows=has_pred),
    ]


def _finding_statistics(m: dict[str, Any]) -> list[BatchStatFn]:
    stats = []
    for protocol, rows, finding, no_finding in (
        ("strict", None, m["pred_finding"], m["pred_nf"]),
        ("failures_excluded", m["ok"], m["pred_finding"], m["pred_nf"]),
        ("paper", m["has_pred"], m["paper_finding"], 1 - m["paper_finding"]),
    ):
        stats.append(binary_statistic(f"finding.{protocol}.{FINDING}", 1 - m["true_nf"], finding, rows))
        stats.append(binary_statistic(f"finding.{protocol}.{NO_FINDING}", m["true_nf"], no_finding, rows))
    return stats


def _failure_rate_statistic(rows: list[dict[str, Any]]) -> BatchStatFn:
    return weighted_mean_statistic("parse.failure_rate", np.array([float(r["failed"]) for r in rows]))


def _text_statistic(prefix: str, raw: Mapping[str, Any]) -> BatchStatFn:
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


def _text_variant(
    variant: str, predictions: list[str], references: list[str], clean: Any, coco_meteor: bool
) -> tuple[dict[str, Any], BatchStatFn]:
    """`{variant: {"values", "unavailable"}}` of the text metrics of `clean`ed answers, and its bootstrap statistic.

    METEOR 1.5 (Java) runs only when `coco_meteor`, and only the `paper` variant reports it (or why it is missing).
    """
    result = compute_text_metrics([clean(t) for t in predictions], [clean(t) for t in references], coco_meteor=coco_meteor)
    if variant != "paper":
        result["unavailable"].pop("meteor_coco", None)
    entry = {variant: {"values": result["values"], "unavailable": result["unavailable"]}}
    return entry, _text_statistic(f"text.{variant}.values", result["raw"])


def _nanmean_rows(stacked: np.ndarray) -> np.ndarray:
    """Column-wise mean of the non-NaN entries of `(k, B)` (NaN where all are NaN), without warnings."""
    valid = ~np.isnan(stacked)
    return safe_div(np.where(valid, stacked, 0.0).sum(axis=0), valid.sum(axis=0), np.nan)


def _float_or_nan(value: Any) -> float:
    try:
        return float(value) if value is not None else float("nan")
    except (TypeError, ValueError):
        return float("nan")


def _auc(y: np.ndarray, score: np.ndarray, weights: np.ndarray | None = None) -> float:
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
    return np.array([[_float_or_nan(r["label_scores"].get(label)) for label in labels] for r in rows], dtype=np.float64)


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
            auc["labels"][label] = _auc(y_true[:, k], scores[:, k])
            valid_k.append(k)
    valid = [auc["labels"][labels[k]] for k in valid_k]
    auc["macro"] = float(np.mean(valid)) if valid else None
    auc["n_labels"] = len(valid)

    def fn(w: np.ndarray) -> dict[str, np.ndarray]:
        out = {f"auc.labels.{labels[k]}": auc_batch(y_true[:, k], scores[:, k], w) for k in valid_k}
        if valid_k:
            out["auc.macro"] = _nanmean_rows(np.stack([out[f"auc.labels.{labels[k]}"] for k in valid_k]))
        return out

    return auc, ([fn] if valid_k else []), scores


def _thresholded_entry(fitted: Mapping[str, Any]) -> dict[str, Any]:
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
    entry = _thresholded_entry(fitted)
    if fitted.get("unavailable"):
        entry["unavailable"] = {"all": f"no validation thresholds: {fitted['unavailable']}"}
        return entry, []
    if scores is None:
        entry["unavailable"] = {"all": "the test predictions have no label confidences (scores.labels)"}
        return entry, []
    pred = apply_thresholds(scores, labels, entry["thresholds"])
    entry["classification"] = multilabel_report(y_true, pred, labels)
    return entry, [multilabel_statistic("thresholded.classification", labels, y_true, pred)]


def _matched_statistic(counts: np.ndarray, labels: tuple[str, ...], key: str) -> BatchStatFn:
    """Matched P/R/F1 (overall and per label) from per-image (tp, fp, fn) counts `(n, labels, 3)`."""
    flat = counts.reshape(len(counts), -1)

    def fn(w: np.ndarray) -> dict[str, np.ndarray]:
        agg = (w @ flat).reshape(len(w), len(labels), 3)
        out = {}
        for name, values in zip(("precision", "recall", "f1"), prf_from_counts(*agg.sum(axis=1).T)):
            out[f"localization.acc_iou.matched.{key}.overall.{name}"] = values
        per_label = prf_from_counts(agg[:, :, 0], agg[:, :, 1], agg[:, :, 2])
        for k, label in enumerate(labels):
            for name, values in zip(("precision", "recall", "f1"), per_label):
                out[f"localization.acc_iou.matched.{key}.labels.{label}.{name}"] = values[:, k]
        return out

    return fn


def _acc_iou_statistic(protocol: str, hit_matrix: np.ndarray, denominator: np.ndarray) -> BatchStatFn:
    """Acc@IoU of a protocol (hits / its reference-box count x 100) on resampled images."""

    def fn(w: np.ndarray) -> dict[str, np.ndarray]:
        acc = 100.0 * safe_div(w @ hit_matrix, (w @ denominator)[:, None], np.nan)
        return {f"localization.acc_iou.{protocol}.{_key(t)}": acc[:, j] for j, t in enumerate(THRESHOLDS)}

    return fn


def _map_statistic(detections: Mapping[str, Any], prefix: str) -> BatchStatFn:
    """Per-class AP and mAP (mean over classes with reference boxes in the resample)."""

    def fn(w: np.ndarray) -> dict[str, np.ndarray]:
        out = {f"{prefix}.ap.{cls}": average_precision_batch(d.scores, d.tp, d.image_index, d.gt_per_image, w)
               for cls, d in detections.items()}  # fmt: skip
        out[f"{prefix}.map"] = _nanmean_rows(np.stack(list(out.values())) if out else np.full((1, len(w)), np.nan))
        return out

    return fn


# ======================================================================================= grounding


def score_grounding(
    records: list[dict[str, Any]],
    box_format: str | None = None,
    coco_meteor: bool = True,
    text_metrics: bool = True,
    max_listed: int | None = None,
    thresholds: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], list[BatchStatFn], dict[str, Any]]:
    """Stage-1 metrics; returns `(metrics, bootstrap batch statistics, extras for figures)`."""
    rows = _grounding_rows(records, box_format)
    out: dict[str, Any] = {"n": len(rows), "parse": _parse_summary("grounding", rows, max_listed)}
    out["parse"]["no_finding_answers"] = sum(1 for r in rows if r["no_finding"])
    out["parse"]["none_answers"] = sum(1 for r in rows if r["none_listed"])
    m = _grounding_matrices(rows)
    out["classification"] = _classification_protocols(m["y_true"], m["strict"], m["paper"], m["ok"], m["has_pred"], VINDR_LOCAL_LABELS)
    out["finding"] = _finding_protocols(m)
    stats: list[BatchStatFn] = [_failure_rate_statistic(rows)]
    stats += _classification_statistics("classification", m["y_true"], m["strict"], m["paper"], m["ok"], m["has_pred"], VINDR_LOCAL_LABELS)
    stats += _finding_statistics(m)
    ids = [r["id"] for r in rows]

    # ---------------------------------------------------------------- localisation
    loc: dict[str, Any] = {}
    hits = [paper_image_hits(r["text"], r["ref"]["text"], THRESHOLDS) for r in rows]
    hit_matrix = np.array([[h["hits"][t] for t in THRESHOLDS] for h in hits], dtype=np.float64).reshape(-1, len(THRESHOLDS))
    acc_iou: dict[str, Any] = {}
    # [C]'s denominator (every reference box) and the paper's (reference boxes whose label the answer names).
    for protocol, count_key in (("paper", "gt_boxes"), ("paper_conditional", "gt_boxes_label_predicted")):
        denominator = np.array([h[count_key] for h in hits], dtype=np.float64)
        entry = {count_key: int(denominator.sum()), "images_with_gt_boxes": int(sum(1 for h in hits if h["gt_boxes"]))}
        for j, t in enumerate(THRESHOLDS):
            entry[_key(t)] = 100.0 * hit_matrix[:, j].sum() / denominator.sum() if denominator.sum() else float("nan")
            entry[f"hits_{_key(t)}"] = int(hit_matrix[:, j].sum())
        acc_iou[protocol] = entry
        stats.append(_acc_iou_statistic(protocol, hit_matrix, denominator))

    preds, gts = _image_boxes(rows)
    matched = {}
    for t in THRESHOLDS:
        per_image = [matched_image_counts(preds[i], gts[i], t) for i in ids]
        seen = {label for counts in per_image for label in counts}
        order = sorted(seen, key=lambda l: (VINDR_LOCAL_LABELS.index(l) if l in VINDR_LOCAL_LABELS else 99, l))
        counts = np.zeros((len(rows), len(order), 3), dtype=np.float64)
        for i, image_counts in enumerate(per_image):
            for label, c in image_counts.items():
                counts[i, order.index(label)] = (c["tp"], c["fp"], c["fn"])
        totals = counts.sum(axis=0)
        matched[_key(t)] = {"overall": _prf(*totals.sum(axis=0)), "labels": {label: _prf(*totals[k]) for k, label in enumerate(order)}}

        stats.append(_matched_statistic(counts, tuple(order), _key(t)))
    loc["acc_iou"] = {**acc_iou, "matched": matched}

    has_scores = any(f["score"] is not None for r in rows for f in r["findings"])
    loc["box_confidence"] = "model (exp mean token log-prob of the phrase)" if has_scores else "constant 1.0 (no scores in the predictions)"
    maps: dict[str, Any] = {}
    pr_curves: dict[str, Any] = {}
    for t in MAP_THRESHOLDS:
        maps[_key(t)] = {}
        for taxonomy, with_nf in (("vindr22", False), ("kaggle14", True)):
            tp_preds = {r["id"]: to_taxonomy(preds[r["id"]], taxonomy, r["no_finding"] and not r["failed"], r["no_finding_score"], with_nf) for r in rows}
            tp_gts = {r["id"]: to_taxonomy(gts[r["id"]], taxonomy, r["ref"]["no_finding"], None, with_nf) for r in rows}
            result = mean_average_precision(tp_preds, tp_gts, t, taxonomy_classes(taxonomy, with_nf), images=ids)
            detections = result.pop("detections")
            maps[_key(t)][taxonomy] = result

            stats.append(_map_statistic(detections, f"localization.map.{_key(t)}.{taxonomy}"))
            if taxonomy == "vindr22":
                pr_curves[_key(t)] = detections
    loc["map"] = maps
    out["localization"] = loc

    # ---------------------------------------------------------------- label AUC (label-slot confidences)
    out["auc"], auc_stats, scores = label_auc(rows, VINDR_LOCAL_LABELS, m["y_true"])
    stats += auc_stats
    entry, thr_stats = thresholded_classification(scores, VINDR_LOCAL_LABELS, m["y_true"], (thresholds or {}).get("grounding"))
    if entry is not None:
        out["thresholded"] = entry
        stats += thr_stats

    # ---------------------------------------------------------------- text
    if text_metrics:
        out["text"] = {}
        predictions, references = [r["text"] for r in rows], [r["ref"]["text"] for r in rows]
        for variant, clean in (("paper", remove_boxes_paper), ("tag_free", remove_boxes_and_tags)):
            entry, text_stat = _text_variant(variant, predictions, references, clean, coco_meteor and variant == "paper")
            out["text"].update(entry)
            stats.append(text_stat)
    extras = {"rows": rows, "pr_detections": pr_curves}
    if scores is not None:
        extras.update({"scores": scores, "y_true": m["y_true"]})
    return out, stats, extras


# ======================================================================================= diagnosis


def _diagnosis_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for record in records:
        ref = diagnosis_reference(record)
        text = record.get("text")
        parsed = parse_diagnosis_answer(text or "")
        failures = (["missing prediction"] if text is None else []) + list(parsed.failures)
        rows.append({
            "id": record["id"], "text": text or "", "ref": ref, "missing": text is None, "failures": failures,
            "failed": bool(failures), "positive": strict_diagnosis_labels({"positive": parsed.positive}),
            "none_listed": parsed.none_listed, "contradiction": parsed.contradiction,
            "truncated": bool(record.get("truncated")),
            "label_scores": (record.get("scores") or {}).get("labels"),
        })  # fmt: skip
    return rows


def score_diagnosis(
    records: list[dict[str, Any]],
    max_listed: int | None = None,
    thresholds: Mapping[str, Any] | None = None,
    coco_meteor: bool = True,
    text_metrics: bool = True,
):
    """Stage-2 metrics; returns `(metrics, bootstrap batch statistics, extras for figures)`."""
    rows = _diagnosis_rows(records)
    labels = VINDR_GLOBAL_LABELS
    out: dict[str, Any] = {"n": len(rows), "parse": _parse_summary("diagnosis", rows, max_listed)}
    y_true = np.array([label_vector(r["ref"]["global_labels"], labels) for r in rows], dtype=np.int64).reshape(-1, len(labels))
    strict = np.array([label_vector([] if r["failed"] else r["positive"], labels) for r in rows], dtype=np.int64).reshape(-1, len(labels))
    paper = np.array([paper_global_vector(r["text"])[0] for r in rows], dtype=np.int64).reshape(-1, len(labels))
    ok = np.array([not r["failed"] for r in rows], dtype=bool)
    has = np.array([not r["missing"] for r in rows], dtype=bool)
    out["classification"] = _classification_protocols(y_true, strict, paper, ok, has, labels)
    nf = labels.index(NO_FINDING)
    pred_finding = np.array([int(not r["failed"] and (any(l != NO_FINDING for l in r["positive"]) or r["none_listed"])) for r in rows], dtype=np.int64)
    m = {"true_nf": y_true[:, nf], "pred_finding": pred_finding, "pred_nf": strict[:, nf], "ok": ok, "has_pred": has,
         "paper_finding": np.array([paper_global_vector(r["text"])[1] for r in rows], dtype=np.int64)}  # fmt: skip
    out["finding"] = _finding_protocols(m)
    stats: list[BatchStatFn] = [_failure_rate_statistic(rows)]
    stats += _classification_statistics("classification", y_true, strict, paper, ok, has, labels)
    stats += _finding_statistics(m)

    out["auc"], auc_stats, scores = label_auc(rows, labels, y_true)
    stats += auc_stats
    entry, thr_stats = thresholded_classification(scores, labels, y_true, (thresholds or {}).get("diagnosis"))
    if entry is not None:
        out["thresholded"] = entry
        stats += thr_stats
    if text_metrics:
        out["text"], text_stat = _text_variant("paper", [r["text"] for r in rows], [r["ref"]["text"] for r in rows],
                                               remove_boxes_paper, coco_meteor)  # fmt: skip
        stats.append(text_stat)
    extras: dict[str, Any] = {"rows": rows}
    if scores is not None:
        extras.update({"scores": scores, "y_true": y_true})
    return out, stats, extras


# ======================================================================================= existence


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


def score_existence(records: list[dict[str, Any]], max_listed: int | None = None, thresholds: Mapping[str, Any] | None = None):
    rows = _existence_rows(records)
    out: dict[str, Any] = {"n": len(rows), "parse": _parse_summary("existence", rows, max_listed), "entities": {}}
    by_entity = defaultdict(list)
    for k, r in enumerate(rows):
        by_entity[r["entity"]].append(k)
    labels_all = np.array([r["label"] for r in rows], dtype=np.float64)
    pred_all = np.array([0 if r["answer"] is None else r["answer"] for r in rows], dtype=np.float64)
    yes_all = np.array([_float_or_nan(r["yes"]) for r in rows], dtype=np.float64)
    stats: list[BatchStatFn] = [_failure_rate_statistic(rows)]
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
            value = _auc(y, yes_all[ix])
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
            res["macro_auc"] = _nanmean_rows(np.stack(list(res.values())))
        return res

    if auc_entities:
        stats.append(auc_stat)

    fitted = (thresholds or {}).get("existence")
    if fitted is not None:
        entry = _thresholded_entry(fitted)
        if fitted.get("unavailable"):
            entry["unavailable"] = {"all": f"no validation thresholds: {fitted['unavailable']}"}
        elif np.isnan(yes_all).any():
            entry["unavailable"] = {"all": "the test predictions have no P(Yes) confidences (scores.yes)"}
        else:
            pred_thr = np.zeros(len(rows))
            for entity, idx in by_entity.items():
                thr = entry["thresholds"].get(entity)
                if thr is not None:
                    pred_thr[idx] = (yes_all[idx] >= float(thr)).astype(float)
            entry["entities"] = {}
            for entity, idx in sorted(by_entity.items()):
                report = binary_report(labels_all[idx], pred_thr[idx])
                entry["entities"][entity] = {**{k: report[k] for k in ("precision", "recall", "f1", "support")},
                                             "accuracy": float((labels_all[idx] == pred_thr[idx]).mean()),
                                             "threshold_known": entity in entry["thresholds"]}  # fmt: skip
                mask = np.zeros(len(rows))
                mask[idx] = 1.0
                stats.append(binary_statistic(f"thresholded.entities.{entity}", labels_all, pred_thr, mask))
                stats.append(weighted_mean_statistic(f"thresholded.entities.{entity}.accuracy", (labels_all == pred_thr).astype(float), mask))
            entry["accuracy"] = float((labels_all == pred_thr).mean()) if rows else float("nan")
            stats.append(weighted_mean_statistic("thresholded.accuracy", (labels_all == pred_thr).astype(float)))
        out["thresholded"] = entry
    return out, stats, {"rows": rows}


# ======================================================================================= report


def score_report(records: list[dict[str, Any]], coco_meteor: bool = True, max_listed: int | None = None):
    rows = []
    for record in records:
        ref_text = (record.get("reference") or {}).get("text")
        if ref_text is None:
            raise PredictionsError(f"record {record['id']!r}: a report reference needs `text`")
        text = record.get("text")
        rows.append({"id": record["id"], "text": text or "", "ref": ref_text, "missing": text is None,
                     "failures": ["missing prediction"] if text is None else [], "failed": text is None,
                     "truncated": bool(record.get("truncated"))})  # fmt: skip
    out: dict[str, Any] = {"n": len(rows), "parse": _parse_summary("report", rows, max_listed)}
    result = compute_text_metrics([r["text"] for r in rows], [r["ref"] for r in rows], coco_meteor=coco_meteor)
    out["text"] = {"raw": {"values": result["values"], "unavailable": result["unavailable"]}}
    stats = [_failure_rate_statistic(rows), _text_statistic("text.raw.values", result["raw"])]
    return out, stats, {"rows": rows}


# ======================================================================================= everything


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
        image_ids = [str(r.get("image_id") or r["id"]) for r in task_records]
        units = {image: k for k, image in enumerate(dict.fromkeys(image_ids))}
        if bootstrap and len(units) > 1:
            values = bootstrap_values(len(units), resamples=bootstrap, seed=seed, progress=progress,
                                      batch_statistics=stats, cluster_index=[units[i] for i in image_ids])  # fmt: skip
            # Kept for paired comparisons with another system scored on the same images (baselines).
            extra["bootstrap"] = {"units": list(units), "values": values}
            intervals = intervals_from_values(values, bootstrap, seed)
            for name, interval in intervals.items():
                path = f"tasks.{task}.{name}"
                try:
                    value = lookup(metrics, path)
                except KeyError:
                    continue  # a statistic of a value the point estimate does not report (e.g. an undefined AUC)
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value)):
                    metrics["confidence_intervals"][path] = interval
            for path in numeric_metric_paths(out, f"tasks.{task}"):
                if path in metrics["confidence_intervals"]:
                    continue
                if path.endswith(".meteor_coco"):
                    reason = "METEOR 1.5 is a corpus score computed inside the Java program; rerunning it per resample is too slow"
                else:
                    reason = "no bootstrap statistic for this value (point estimate only)"
                metrics["bootstrap"]["not_resampled"][path] = reason
        elif bootstrap:
            metrics["bootstrap"]["not_resampled"][f"tasks.{task}"] = f"{len(units)} image(s): nothing to resample"
    if not bootstrap:
        metrics["bootstrap"]["not_resampled"] = {"all": "no intervals requested (--bootstrap 0)"}
    _collect_unavailable(metrics["tasks"], "tasks", metrics["unavailable"])
    return metrics, extras


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
