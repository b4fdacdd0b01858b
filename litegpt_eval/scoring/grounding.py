"""Stage 1 (VinDr grounded findings): local-label classification and Finding vs No finding under the three
protocols; localisation (Acc@IoU of the released code and of the paper's reading, one-to-one matching, mAP for the
vindr22 and kaggle14 taxonomies); label AUCs; the validation-thresholds protocol; text metrics with the boxes removed
(the paper's Table 4)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from codec_litegpt import (
    NO_FINDING,
    VINDR_GLOBAL_LABELS,
    VINDR_LOCAL_LABELS,
    canonical_label,
    format_grounding_answer,
    parse_grounding_answer,
)

from ..bootstrap import (
    BatchStatFn,
    average_precision_batch,
    prf_from_counts,
    safe_div,
)
from ..box_formats import to_litegpt_answer
from ..classification import (
    label_vector,
    paper_global_vector,
    paper_local_vector,
    strict_grounding_labels,
)
from ..localization import (
    THRESHOLDS,
    ImageBoxes,
    matched_image_counts,
    mean_average_precision,
    paper_image_hits,
    taxonomy_classes,
    to_taxonomy,
)
from ..records import PredictionsError
from ..text_metrics import remove_boxes_and_tags, remove_boxes_paper
from .common import (
    canonical_list,
    classification_protocols,
    classification_statistics,
    failure_rate_statistic,
    finding_protocols,
    finding_statistics,
    label_auc,
    nanmean_rows,
    parse_summary,
    prf_counts,
    text_variant,
    threshold_key,
    thresholded_classification,
)
from .protocols import MAP_THRESHOLDS


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
    local = canonical_list(local, VINDR_LOCAL_LABELS, rid, "local_labels") if local is not None else list(dict.fromkeys(box_labels))
    global_labels = canonical_list(ref.get("global_labels"), VINDR_GLOBAL_LABELS, rid, "global_labels")
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


def _scores_by_phrase(record: dict[str, Any]) -> list[tuple[tuple[str, tuple[int, ...]], float | None]]:
    parsed = record.get("parsed") or {}
    return [((f.get("label"), tuple(f.get("grid_box") or ())), f.get("score")) for f in parsed.get("findings", [])]


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


def _image_boxes(rows: list[dict[str, Any]]) -> tuple[dict[str, ImageBoxes], dict[str, ImageBoxes]]:
    preds, gts = {}, {}
    for r in rows:
        preds[r["id"]] = ImageBoxes([f["label"] for f in r["findings"]], [f["box"] for f in r["findings"]],
                                    [f["score"] for f in r["findings"]])  # fmt: skip
        gts[r["id"]] = ImageBoxes(list(r["ref"]["box_labels"]), list(r["ref"]["boxes"]))
    return preds, gts


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
        return {f"localization.acc_iou.{protocol}.{threshold_key(t)}": acc[:, j] for j, t in enumerate(THRESHOLDS)}

    return fn


def _map_statistic(detections: Mapping[str, Any], prefix: str) -> BatchStatFn:
    """Per-class AP and mAP (mean over classes with reference boxes in the resample)."""

    def fn(w: np.ndarray) -> dict[str, np.ndarray]:
        out = {f"{prefix}.ap.{cls}": average_precision_batch(d.scores, d.tp, d.image_index, d.gt_per_image, w)
               for cls, d in detections.items()}  # fmt: skip
        out[f"{prefix}.map"] = nanmean_rows(np.stack(list(out.values())) if out else np.full((1, len(w)), np.nan))
        return out

    return fn


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
    out: dict[str, Any] = {"n": len(rows), "parse": parse_summary("grounding", rows, max_listed)}
    out["parse"]["no_finding_answers"] = sum(1 for r in rows if r["no_finding"])
    out["parse"]["none_answers"] = sum(1 for r in rows if r["none_listed"])
    m = _grounding_matrices(rows)
    out["classification"] = classification_protocols(m["y_true"], m["strict"], m["paper"], m["ok"], m["has_pred"],
                                                     VINDR_LOCAL_LABELS)  # fmt: skip
    out["finding"] = finding_protocols(m)
    stats: list[BatchStatFn] = [failure_rate_statistic(rows)]
    stats += classification_statistics("classification", m["y_true"], m["strict"], m["paper"], m["ok"], m["has_pred"],
                                       VINDR_LOCAL_LABELS)  # fmt: skip
    stats += finding_statistics(m)
    out["localization"], localization_stats, pr_curves = grounding_localization(rows)
    stats += localization_stats

    out["auc"], auc_stats, scores = label_auc(rows, VINDR_LOCAL_LABELS, m["y_true"])
    stats += auc_stats
    entry, thr_stats = thresholded_classification(scores, VINDR_LOCAL_LABELS, m["y_true"], (thresholds or {}).get("grounding"))
    if entry is not None:
        out["thresholded"] = entry
        stats += thr_stats

    if text_metrics:
        out["text"] = {}
        predictions, references = [r["text"] for r in rows], [r["ref"]["text"] for r in rows]
        for variant, clean in (("paper", remove_boxes_paper), ("tag_free", remove_boxes_and_tags)):
            entry, text_stat = text_variant(variant, predictions, references, clean, coco_meteor and variant == "paper")
            out["text"].update(entry)
            stats.append(text_stat)
    extras = {"rows": rows, "pr_detections": pr_curves}
    if scores is not None:
        extras.update({"scores": scores, "y_true": m["y_true"]})
    return out, stats, extras


def grounding_localization(rows: list[dict[str, Any]]) -> tuple[dict[str, Any], list[BatchStatFn], dict[str, Any]]:
    """The `localization` entry (Acc@IoU under the two paper readings and one-to-one matching, mAP), its bootstrap
    statistics and the vindr22 detections behind the PR curves."""
    acc_iou, stats = paper_acc_iou(rows)
    matched, matched_stats = matched_localization(rows)
    maps, map_stats, pr_curves = detection_maps(rows)
    has_scores = any(f["score"] is not None for r in rows for f in r["findings"])
    confidence = "model (exp mean token log-prob of the phrase)" if has_scores else "constant 1.0 (no scores in the predictions)"
    localization = {"acc_iou": {**acc_iou, "matched": matched}, "box_confidence": confidence, "map": maps}
    return localization, stats + matched_stats + map_stats, pr_curves


def paper_acc_iou(rows: list[dict[str, Any]]) -> tuple[dict[str, Any], list[BatchStatFn]]:
    """Acc@IoU of the released code (every reference box in the denominator) and of the paper's reading (the
    reference boxes whose label the answer names)."""
    hits = [paper_image_hits(r["text"], r["ref"]["text"], THRESHOLDS) for r in rows]
    hit_matrix = np.array([[h["hits"][t] for t in THRESHOLDS] for h in hits], dtype=np.float64).reshape(-1, len(THRESHOLDS))
    acc_iou: dict[str, Any] = {}
    stats: list[BatchStatFn] = []
    for protocol, count_key in (("paper", "gt_boxes"), ("paper_conditional", "gt_boxes_label_predicted")):
        denominator = np.array([h[count_key] for h in hits], dtype=np.float64)
        entry = {count_key: int(denominator.sum()), "images_with_gt_boxes": int(sum(1 for h in hits if h["gt_boxes"]))}
        for j, t in enumerate(THRESHOLDS):
            entry[threshold_key(t)] = 100.0 * hit_matrix[:, j].sum() / denominator.sum() if denominator.sum() else float("nan")
            entry[f"hits_{threshold_key(t)}"] = int(hit_matrix[:, j].sum())
        acc_iou[protocol] = entry
        stats.append(_acc_iou_statistic(protocol, hit_matrix, denominator))
    return acc_iou, stats


def matched_localization(rows: list[dict[str, Any]]) -> tuple[dict[str, Any], list[BatchStatFn]]:
    """One-to-one matched precision / recall / F1 of the boxes at every IoU threshold, overall and per label."""
    preds, gts = _image_boxes(rows)
    matched: dict[str, Any] = {}
    stats: list[BatchStatFn] = []
    for t in THRESHOLDS:
        per_image = [matched_image_counts(preds[r["id"]], gts[r["id"]], t) for r in rows]
        seen = {label for counts in per_image for label in counts}
        order = sorted(seen, key=lambda l: (VINDR_LOCAL_LABELS.index(l) if l in VINDR_LOCAL_LABELS else 99, l))
        counts = np.zeros((len(rows), len(order), 3), dtype=np.float64)
        for i, image_counts in enumerate(per_image):
            for label, c in image_counts.items():
                counts[i, order.index(label)] = (c["tp"], c["fp"], c["fn"])
        totals = counts.sum(axis=0)
        matched[threshold_key(t)] = {"overall": prf_counts(*totals.sum(axis=0)),
                                     "labels": {label: prf_counts(*totals[k]) for k, label in enumerate(order)}}  # fmt: skip
        stats.append(_matched_statistic(counts, tuple(order), threshold_key(t)))
    return matched, stats


def detection_maps(rows: list[dict[str, Any]]) -> tuple[dict[str, Any], list[BatchStatFn], dict[str, Any]]:
    """mAP at IoU 0.4 and 0.5 for the vindr22 and kaggle14 taxonomies (with the `No finding` pseudo-box), their
    statistics, and the vindr22 detections per threshold (PR curves)."""
    preds, gts = _image_boxes(rows)
    ids = [r["id"] for r in rows]
    maps: dict[str, Any] = {}
    stats: list[BatchStatFn] = []
    pr_curves: dict[str, Any] = {}
    for t in MAP_THRESHOLDS:
        maps[threshold_key(t)] = {}
        for taxonomy, with_nf in (("vindr22", False), ("kaggle14", True)):
            tp_preds = {r["id"]: to_taxonomy(preds[r["id"]], taxonomy, r["no_finding"] and not r["failed"],
                                             r["no_finding_score"], with_nf) for r in rows}  # fmt: skip
            tp_gts = {r["id"]: to_taxonomy(gts[r["id"]], taxonomy, r["ref"]["no_finding"], None, with_nf) for r in rows}
            result = mean_average_precision(tp_preds, tp_gts, t, taxonomy_classes(taxonomy, with_nf), images=ids)
            detections = result.pop("detections")
            maps[threshold_key(t)][taxonomy] = result
            stats.append(_map_statistic(detections, f"localization.map.{threshold_key(t)}.{taxonomy}"))
            if taxonomy == "vindr22":
                pr_curves[threshold_key(t)] = detections
    return maps, stats, pr_curves
