"""Stage 2 (VinDr diagnosis): global-label classification and Finding vs No finding (the paper's Table 1 comes from
these `[vqa]` answers) under the three protocols, label AUCs, the validation-thresholds protocol, text metrics (the
paper's Table 5)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from codec_litegpt import (
    NO_FINDING,
    VINDR_GLOBAL_LABELS,
    format_diagnosis_answer,
    parse_diagnosis_answer,
)

from ..bootstrap import (
    BatchStatFn,
)
from ..classification import (
    label_vector,
    paper_global_vector,
    strict_diagnosis_labels,
)
from ..records import PredictionsError
from ..text_metrics import remove_boxes_paper
from .common import (
    canonical_list,
    classification_protocols,
    classification_statistics,
    failure_rate_statistic,
    finding_protocols,
    finding_statistics,
    label_auc,
    parse_summary,
    text_variant,
    thresholded_classification,
)


def diagnosis_reference(record: dict[str, Any]) -> dict[str, Any]:
    ref = record["reference"]
    rid = record["id"]
    if ref.get("global_labels") is None:
        raise PredictionsError(f"record {rid!r}: a diagnosis reference needs `global_labels`")
    labels = canonical_list(ref["global_labels"], VINDR_GLOBAL_LABELS, rid, "global_labels")
    no_finding = bool(ref["no_finding"]) if ref.get("no_finding") is not None else NO_FINDING in labels
    if no_finding and NO_FINDING not in labels:
        labels.append(NO_FINDING)
    text = ref.get("text") if ref.get("text") is not None else format_diagnosis_answer(labels)
    return {"global_labels": labels, "no_finding": no_finding, "text": text}


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
    out: dict[str, Any] = {"n": len(rows), "parse": parse_summary("diagnosis", rows, max_listed)}
    y_true = np.array([label_vector(r["ref"]["global_labels"], labels) for r in rows], dtype=np.int64).reshape(-1, len(labels))
    strict = np.array([label_vector([] if r["failed"] else r["positive"], labels) for r in rows], dtype=np.int64).reshape(-1, len(labels))
    paper = np.array([paper_global_vector(r["text"])[0] for r in rows], dtype=np.int64).reshape(-1, len(labels))
    ok = np.array([not r["failed"] for r in rows], dtype=bool)
    has = np.array([not r["missing"] for r in rows], dtype=bool)
    out["classification"] = classification_protocols(y_true, strict, paper, ok, has, labels)
    nf = labels.index(NO_FINDING)
    pred_finding = np.array([int(not r["failed"] and (any(l != NO_FINDING for l in r["positive"]) or r["none_listed"])) for r in rows], dtype=np.int64)
    m = {"true_nf": y_true[:, nf], "pred_finding": pred_finding, "pred_nf": strict[:, nf], "ok": ok, "has_pred": has,
         "paper_finding": np.array([paper_global_vector(r["text"])[1] for r in rows], dtype=np.int64)}  # fmt: skip
    out["finding"] = finding_protocols(m)
    stats: list[BatchStatFn] = [failure_rate_statistic(rows)]
    stats += classification_statistics("classification", y_true, strict, paper, ok, has, labels)
    stats += finding_statistics(m)

    out["auc"], auc_stats, scores = label_auc(rows, labels, y_true)
    stats += auc_stats
    entry, thr_stats = thresholded_classification(scores, labels, y_true, (thresholds or {}).get("diagnosis"))
    if entry is not None:
        out["thresholded"] = entry
        stats += thr_stats
    if text_metrics:
        out["text"], text_stat = text_variant("paper", [r["text"] for r in rows], [r["ref"]["text"] for r in rows],
                                               remove_boxes_paper, coco_meteor)  # fmt: skip
        stats.append(text_stat)
    extras: dict[str, Any] = {"rows": rows}
    if scores is not None:
        extras.update({"scores": scores, "y_true": y_true})
    return out, stats, extras
