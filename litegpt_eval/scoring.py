"""Predictions -> metrics (the content of `metrics.json`).

`score_records(records)` groups records by task and computes, per task:

* `grounding` (VinDr stage 1): parse statistics; local-label classification (22 labels) and Finding vs No finding
  under three protocols - `strict` (headline: exact, negation-aware parsing; a failed answer predicts nothing),
  `failures_excluded` (failed answers removed, [C]-like) and `paper` ([C]'s substring matching); localisation:
  `acc_iou.paper` ([C]), `acc_iou.matched` (one-to-one), `map` at IoU 0.4 / 0.5 for `vindr22` and `kaggle14`;
  text metrics on the answers with boxes removed (`paper`: tags kept, `tag_free`).
* `diagnosis` (VinDr stage 2): parse statistics; global-label classification (6 labels) under the three protocols,
  Finding vs No finding, per-label AUC from the label-slot probabilities.
* `existence` (MIMIC): per-entity AUC (from P(Yes)), accuracy, P/R/F1 of the greedy answers (MedKLIP-style table).
* `report` (MIMIC): text metrics.

Bootstrap 95 % intervals (B=1000, seed 0 by default) of the headline numbers go to `confidence_intervals`, keyed
by the dotted path of the value in `metrics.json`. Metrics that cannot be computed are listed under `unavailable`
with the reason and never replaced by a number.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
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
from .bootstrap import DEFAULT_RESAMPLES, DEFAULT_SEED, bootstrap_intervals, weighted_mean
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
    weighted_f1,
)
from .localization import (
    THRESHOLDS,
    ImageBoxes,
    map_from_detections,
    matched_image_counts,
    mean_average_precision,
    paper_image_hits,
    taxonomy_classes,
    to_taxonomy,
)
from .records import PredictionsError
from .text_metrics import compute_text_metrics, remove_boxes_and_tags, remove_boxes_paper, resample_text_metric

MAP_THRESHOLDS = (0.4, 0.5)
PROTOCOLS = {
    "strict": "exact whole-label parsing (processing_litegpt), negation-aware; a parse failure predicts nothing "
    "(all-negative) and stays in the denominator",
    "failures_excluded": "as strict, but answers with a parse failure are removed ([C]-like)",
    "paper": "the reference code: lower-case, <...> removed, substring test per class; Finding = 'no finding' absent",
    "acc_iou.paper": "[C] compute_accuracy: [C] regex on prediction and reference text, a reference box is hit when "
    "any same-label prediction of the image has grid IoU (+1 convention) > t; hits / reference boxes x 100",
    "acc_iou.matched": "continuous IoU of predicted boxes (decoded from the 0-100 grid to pixels) and reference boxes "
    "(original pixels), one-to-one greedy matching per (image, label) by descending IoU > t; precision / recall / F1 "
    "over boxes; every syntactically valid phrase is a box, also in an answer with another failed fragment",
    "map": "VOC-2010 all-point AP per class, detections ranked by box confidence (exp mean token log-prob) over the "
    "set, IoU > t, mean over classes with reference boxes; vindr22 = 22 local labels, kaggle14 = the VinBigData 14 "
    "classes + No finding pseudo-box (0,0,1,1)",
    "auc": "ROC AUC of label confidences: max over list slots of the teacher-forced label probability (stage 2), "
    "P(Yes)/(P(Yes)+P(No)) (existence)",
    "text.paper": "boxes removed with [C]'s regex, <p> tags kept",
    "text.tag_free": "boxes and <p> tags removed",
    "bootstrap": "95 % percentile bootstrap over images",
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


def score_grounding(
    records: list[dict[str, Any]],
    box_format: str | None = None,
    coco_meteor: bool = True,
    text_metrics: bool = True,
    max_listed: int | None = None,
) -> tuple[dict[str, Any], dict[str, Callable[[np.ndarray], float]], dict[str, Any]]:
    """Stage-1 metrics; returns `(metrics, bootstrap statistics, extras for figures)`."""
    rows = _grounding_rows(records, box_format)
    out: dict[str, Any] = {"n": len(rows), "parse": _parse_summary("grounding", rows, max_listed)}
    out["parse"]["no_finding_answers"] = sum(1 for r in rows if r["no_finding"])
    out["parse"]["none_answers"] = sum(1 for r in rows if r["none_listed"])
    m = _grounding_matrices(rows)
    out["classification"] = _classification_protocols(m["y_true"], m["strict"], m["paper"], m["ok"], m["has_pred"], VINDR_LOCAL_LABELS)
    out["finding"] = _finding_protocols(m)
    stats: dict[str, Callable[[np.ndarray], float]] = {}
    ids = [r["id"] for r in rows]

    for average in ("micro", "macro", "weighted", "samples"):
        stats[f"classification.strict.averages.{average}.f1"] = (
            lambda w, a=average: weighted_f1(m["y_true"], m["strict"], w, a)
        )
    for name, true_col, pred_col in (
        (FINDING, 1 - m["true_nf"], m["pred_finding"]),
        (NO_FINDING, m["true_nf"], m["pred_nf"]),
    ):
        stats[f"finding.strict.{name}.f1"] = lambda w, t=true_col, p=pred_col: weighted_f1(t[:, None], p[:, None], w, "micro")

    # ---------------------------------------------------------------- localisation
    loc: dict[str, Any] = {}
    hits = [paper_image_hits(r["text"], r["ref"]["text"], THRESHOLDS) for r in rows]
    gt_boxes = np.array([h["gt_boxes"] for h in hits], dtype=np.float64)
    paper = {"gt_boxes": int(gt_boxes.sum()), "images_with_gt_boxes": int((gt_boxes > 0).sum())}
    for t in THRESHOLDS:
        hit_t = np.array([h["hits"][t] for h in hits], dtype=np.float64)
        paper[_key(t)] = 100.0 * hit_t.sum() / gt_boxes.sum() if gt_boxes.sum() else float("nan")
        paper[f"hits_{_key(t)}"] = int(hit_t.sum())
        stats[f"localization.acc_iou.paper.{_key(t)}"] = (
            lambda w, h=hit_t: 100.0 * (h * w).sum() / (gt_boxes * w).sum() if (gt_boxes * w).sum() else float("nan")
        )
    preds, gts = _image_boxes(rows)
    matched = {}
    for t in THRESHOLDS:
        per_image = [matched_image_counts(preds[i], gts[i], t) for i in ids]
        totals = np.array([[sum(c[k] for c in counts.values()) for k in ("tp", "fp", "fn")] for counts in per_image], dtype=np.float64).reshape(-1, 3)
        by_label: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
        for counts in per_image:
            for label, c in counts.items():
                for j, k in enumerate(("tp", "fp", "fn")):
                    by_label[label][j] += c[k]
        matched[_key(t)] = {"overall": _prf(*totals.sum(axis=0)), "labels": {l: _prf(*v) for l, v in sorted(by_label.items(), key=lambda kv: VINDR_LOCAL_LABELS.index(kv[0]) if kv[0] in VINDR_LOCAL_LABELS else 99)}}
        stats[f"localization.acc_iou.matched.{_key(t)}.overall.f1"] = lambda w, c=totals: _prf(*(c * w[:, None]).sum(axis=0))["f1"]
        stats[f"localization.acc_iou.matched.{_key(t)}.overall.recall"] = lambda w, c=totals: _prf(*(c * w[:, None]).sum(axis=0))["recall"]
    loc["acc_iou"] = {"paper": paper, "matched": matched}

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
            stats[f"localization.map.{_key(t)}.{taxonomy}.map"] = lambda w, d=detections: map_from_detections(d, w)
            if taxonomy == "vindr22":
                pr_curves[_key(t)] = detections
    loc["map"] = maps
    out["localization"] = loc

    # ---------------------------------------------------------------- text
    if text_metrics:
        out["text"] = {}
        for variant, clean in (("paper", remove_boxes_paper), ("tag_free", remove_boxes_and_tags)):
            result = compute_text_metrics([clean(r["text"]) for r in rows], [clean(r["ref"]["text"]) for r in rows],
                                          coco_meteor=coco_meteor and variant == "paper")  # fmt: skip
            if variant != "paper":
                result["unavailable"].pop("meteor_coco", None)
            out["text"][variant] = {"values": result["values"], "unavailable": result["unavailable"]}
            for name in ("rouge1", "rougeL", "bleu4", "meteor", "cider"):
                if name in result["raw"]:
                    stats[f"text.{variant}.values.{name}"] = lambda w, n=name, raw=result["raw"][name]: resample_text_metric(n, raw, w)
    extras = {"rows": rows, "pr_detections": pr_curves}
    return out, stats, extras


def _prf(tp: float, fp: float, fn: float) -> dict[str, float]:
    return {
        "precision": float(tp / (tp + fp)) if tp + fp else 0.0,
        "recall": float(tp / (tp + fn)) if tp + fn else 0.0,
        "f1": float(2 * tp / (2 * tp + fp + fn)) if tp + fp + fn else 0.0,
        "tp": round(tp), "fp": round(fp), "fn": round(fn),
    }  # fmt: skip


# ======================================================================================= diagnosis


def _nan_mean(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return float(np.mean(kept)) if kept else float("nan")


def _auc(y: np.ndarray, score: np.ndarray, weights: np.ndarray | None = None) -> float:
    from sklearn.metrics import roc_auc_score

    if weights is not None:
        keep = weights > 0
        y, score, weights = y[keep], score[keep], weights[keep]
    if len(np.unique(y)) < 2:
        return float("nan")
    return float(roc_auc_score(y, score, sample_weight=weights))


def score_diagnosis(records: list[dict[str, Any]], max_listed: int | None = None):
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
    stats = {}
    for average in ("micro", "macro", "weighted", "samples"):
        stats[f"classification.strict.averages.{average}.f1"] = lambda w, a=average: weighted_f1(y_true, strict, w, a)
    for name, true_col, pred_col in ((FINDING, 1 - m["true_nf"], m["pred_finding"]), (NO_FINDING, m["true_nf"], m["pred_nf"])):
        stats[f"finding.strict.{name}.f1"] = lambda w, t=true_col, p=pred_col: weighted_f1(t[:, None], p[:, None], w, "micro")

    # AUC from label-slot probabilities
    have = [r["label_scores"] is not None for r in rows]
    auc: dict[str, Any] = {"labels": {}, "unavailable": {}}
    if rows and all(have):
        scores = np.array([[float(r["label_scores"].get(l, np.nan)) for l in labels] for r in rows])
        for k, label in enumerate(labels):
            if np.isnan(scores[:, k]).any():
                auc["labels"][label] = None
                auc["unavailable"][label] = "some predictions lack this label's confidence"
                continue
            value = _auc(y_true[:, k], scores[:, k])
            auc["labels"][label] = None if math.isnan(value) else value
            if math.isnan(value):
                auc["unavailable"][label] = "the reference has only one class for this label (AUC undefined)"
            else:
                stats[f"auc.labels.{label}"] = lambda w, k=k: _auc(y_true[:, k], scores[:, k], w)
        valid = [v for v in auc["labels"].values() if v is not None]
        auc["macro"] = float(np.mean(valid)) if valid else None
        auc["n_labels"] = len(valid)
        valid_k = [k for k, l in enumerate(labels) if auc["labels"][l] is not None]
        if valid_k:
            stats["auc.macro"] = lambda w: _nan_mean([_auc(y_true[:, k], scores[:, k], w) for k in valid_k])
        extras = {"scores": scores, "y_true": y_true}
    else:
        auc["macro"] = None
        reason = f"{len(have) - sum(have)} of {len(have)} predictions have no label confidences (scores.labels)"
        auc["unavailable"] = {"all": reason}
        extras = {}
    out["auc"] = auc
    extras["rows"] = rows
    return out, stats, extras


# ======================================================================================= existence


def score_existence(records: list[dict[str, Any]], max_listed: int | None = None):
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
    out: dict[str, Any] = {"n": len(rows), "parse": _parse_summary("existence", rows, max_listed), "entities": {}}

    by_entity = defaultdict(list)
    for k, r in enumerate(rows):
        by_entity[r["entity"]].append(k)
    aucs = []
    for entity, idx in sorted(by_entity.items()):
        y = np.array([rows[k]["label"] for k in idx])
        pred = np.array([0 if rows[k]["answer"] is None else rows[k]["answer"] for k in idx])
        entry = {"n": len(idx), "positives": int(y.sum()), "failures": sum(1 for k in idx if rows[k]["failed"])}
        entry.update({f"greedy_{k}": v for k, v in binary_report(y, pred).items() if k in ("precision", "recall", "f1")})
        entry["accuracy"] = float((y == pred).mean())
        scores = [rows[k]["yes"] for k in idx]
        if all(s is not None for s in scores):
            s = np.array(scores, dtype=np.float64)
            value = _auc(y, s)
            entry["auc"] = None if math.isnan(value) else value
            if not math.isnan(value):
                aucs.append(value)
        else:
            entry["auc"] = None
            entry["auc_unavailable"] = "no P(Yes) confidences in the predictions"
        out["entities"][entity] = entry
    out["macro_auc"] = float(np.mean(aucs)) if aucs else None
    labels_all = np.array([r["label"] for r in rows])
    pred_all = np.array([0 if r["answer"] is None else r["answer"] for r in rows])
    out["accuracy"] = float((labels_all == pred_all).mean()) if rows else float("nan")
    stats = {"accuracy": lambda w: weighted_mean((labels_all == pred_all).astype(float), w)}
    # per-entity AUC on the image-level resample
    for entity, idx in sorted(by_entity.items()):
        if out["entities"][entity].get("auc") is None:
            continue
        idx_arr = np.array(idx)
        y = labels_all[idx_arr]
        s = np.array([rows[k]["yes"] for k in idx], dtype=np.float64)
        stats[f"entities.{entity}.auc"] = lambda w, y=y, s=s, ix=idx_arr: _auc(y, s, w[ix])
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
    stats = {}
    for name in ("rouge1", "rougeL", "bleu4", "meteor", "cider"):
        if name in result["raw"]:
            stats[f"text.raw.values.{name}"] = lambda w, n=name, raw=result["raw"][name]: resample_text_metric(n, raw, w)
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
) -> tuple[dict[str, Any], dict[str, Any]]:
    """All metrics of a list of prediction records (see the module docstring).

    Records without a `reference` are skipped, counted and listed (`counts.skipped.missing_reference`).
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
        "unavailable": {},
    }
    extras: dict[str, Any] = {}
    for task, task_records in sorted(by_task.items(), key=lambda kv: ("grounding", "diagnosis", "existence", "report").index(kv[0])):
        if task == "grounding":
            out, stats, extra = score_grounding(task_records, box_format, coco_meteor, text_metrics, max_listed)
        elif task == "diagnosis":
            out, stats, extra = score_diagnosis(task_records, max_listed)
        elif task == "existence":
            out, stats, extra = score_existence(task_records, max_listed)
        else:
            out, stats, extra = score_report(task_records, coco_meteor, max_listed)
        metrics["tasks"][task] = out
        extras[task] = extra
        if bootstrap and len(task_records) > 1:
            intervals = bootstrap_intervals(len(task_records), stats, resamples=bootstrap, seed=seed, progress=progress)
            for name, interval in intervals.items():
                metrics["confidence_intervals"][f"tasks.{task}.{name}"] = interval
    _collect_unavailable(metrics["tasks"], "tasks", metrics["unavailable"])
    return metrics, extras


def lookup(metrics: dict[str, Any], dotted: str) -> Any:
    """Value at a dotted path of the metrics dictionary (labels may contain dots? they do not: VinDr names)."""
    node: Any = metrics
    parts = dotted.split(".")
    k = 0
    while k < len(parts):
        # keys such as "0.4" contain a dot: try the longest key first
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
    "MAP_THRESHOLDS",
    "PROTOCOLS",
    "diagnosis_reference",
    "grounding_reference",
    "lookup",
    "score_diagnosis",
    "score_existence",
    "score_grounding",
    "score_records",
    "score_report",
]
