"""Classification metrics of both stages (docs/design.md, "Metrics").

* `multilabel_report`: per-label precision / recall / F1 / support and the micro, macro, weighted and samples
  averages exactly as `sklearn.metrics.classification_report(..., zero_division=0)` computes them, plus
  `macro_present` (macro over labels with at least one positive reference).
* `binary_report` / `finding_report`: the paper's Table 1 (Finding vs No finding).
* `strict_*_labels`: label sets from the strict, negation-aware parses of `processing_litegpt`
  (`parse_grounding_answer`, `parse_diagnosis_answer`); a parse failure predicts nothing (all-negative) in the
  headline protocol and is excluded in the `failures_excluded` variant - never silently dropped.
* `paper_extract_labels`: the reference code's ([C]) protocol: lower-case, strip `<...>`, substring test per class,
  `Finding` = "no finding" absent. Kept only to reproduce the paper's numbers (it finds "ild" in "mild").
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from codec_litegpt import NO_FINDING, VINDR_GLOBAL_LABELS, VINDR_LOCAL_LABELS

FINDING = "Finding"
# [C]'s class names: "Other disease" (singular) as in its CSV; substring matching makes both spellings hit.
PAPER_CLASS_NAMES = (*VINDR_LOCAL_LABELS, "COPD", "Lung tumor", "Pneumonia", "Tuberculosis", "Other disease", NO_FINDING)
AVERAGES = ("micro", "macro", "weighted", "samples")


def _metrics_dict(precision: float, recall: float, f1: float, support: int) -> dict[str, float | int]:
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1), "support": int(support)}


def as_binary_matrix(rows: Sequence[Sequence[int]] | np.ndarray, n_labels: int | None = None) -> np.ndarray:
    """A 0/1 integer matrix (n_samples, n_labels); raises on anything but 0/1."""
    matrix = np.asarray(rows, dtype=np.int64)
    if matrix.ndim != 2 or (n_labels is not None and matrix.shape[1] != n_labels):
        raise ValueError(f"expected a (n_samples, {n_labels}) matrix, got shape {matrix.shape}")
    if matrix.size and not np.isin(matrix, (0, 1)).all():
        raise ValueError("label matrices must hold only 0 and 1")
    return matrix


def multilabel_report(
    y_true: Sequence[Sequence[int]] | np.ndarray,
    y_pred: Sequence[Sequence[int]] | np.ndarray,
    labels: Sequence[str],
    zero_division: float = 0.0,
) -> dict[str, Any]:
    """Per-label and averaged P/R/F1 of a multi-label problem.

    Returns `{"labels": {name: {precision, recall, f1, support}}, "averages": {micro, macro, weighted, samples,
    macro_present: {...}}, "n_samples": n}`; the first four averages are sklearn's (`precision_recall_fscore_support`
    with `zero_division`), support of an average = total positive references. `macro_present` averages only labels
    with support > 0 (NaN when none has).
    """
    from sklearn.metrics import precision_recall_fscore_support

    y_true = as_binary_matrix(y_true, len(labels))
    y_pred = as_binary_matrix(y_pred, len(labels))
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} differ")
    label_ids = list(range(len(labels)))
    out: dict[str, Any] = {"labels": {}, "averages": {}, "n_samples": int(y_true.shape[0])}
    if y_true.shape[0] == 0:
        nan = float("nan")
        out["labels"] = {name: _metrics_dict(nan, nan, nan, 0) for name in labels}
        out["averages"] = {avg: _metrics_dict(nan, nan, nan, 0) for avg in (*AVERAGES, "macro_present")}
        return out
    p, r, f, s = precision_recall_fscore_support(
        y_true, y_pred, labels=label_ids, average=None, zero_division=zero_division
    )
    for k, name in enumerate(labels):
        out["labels"][name] = _metrics_dict(p[k], r[k], f[k], s[k])
    total_support = int(s.sum())
    for average in AVERAGES:
        ap, ar, af, _ = precision_recall_fscore_support(
            y_true, y_pred, labels=label_ids, average=average, zero_division=zero_division
        )
        out["averages"][average] = _metrics_dict(ap, ar, af, total_support)
    present = s > 0
    if present.any():
        out["averages"]["macro_present"] = _metrics_dict(p[present].mean(), r[present].mean(), f[present].mean(), total_support)
    else:
        nan = float("nan")
        out["averages"]["macro_present"] = _metrics_dict(nan, nan, nan, 0)
    out["averages"]["macro_present"]["n_labels"] = int(present.sum())
    return out


def binary_report(y_true: Sequence[int], y_pred: Sequence[int], zero_division: float = 0.0) -> dict[str, float | int]:
    """P/R/F1 of the positive class of a 0/1 problem (support = number of positive references)."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    tp = int(((y_true == 1) & (y_pred == 1)).sum())
    fp = int(((y_true == 0) & (y_pred == 1)).sum())
    fn = int(((y_true == 1) & (y_pred == 0)).sum())
    precision = tp / (tp + fp) if tp + fp else zero_division
    recall = tp / (tp + fn) if tp + fn else zero_division
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else zero_division
    out = _metrics_dict(precision, recall, f1, tp + fn)
    out.update({"tp": tp, "fp": fp, "fn": fn})
    return out


def finding_report(
    true_no_finding: Sequence[int], pred_finding: Sequence[int], pred_no_finding: Sequence[int]
) -> dict[str, dict[str, float | int]]:
    """The paper's Table 1: `Finding` (= 1 - No finding) and `No finding`, each scored as its own binary class.

    The two predicted columns are separate so that a parse failure (neither asserted) is wrong for both and a
    contradiction (both asserted) is counted as what the text says.
    """
    true_no_finding = np.asarray(true_no_finding, dtype=np.int64)
    return {
        FINDING: binary_report(1 - true_no_finding, pred_finding),
        NO_FINDING: binary_report(true_no_finding, pred_no_finding),
    }


def weighted_f1(y_true: np.ndarray, y_pred: np.ndarray, weights: np.ndarray, average: str) -> float:
    """F1 of `average` (micro, macro, weighted, samples, macro_present) with rows repeated `weights[i]` times.

    Equals sklearn's value on the expanded matrices (zero_division=0); used by the bootstrap (no copies made).
    """
    w = np.asarray(weights, dtype=np.float64)[:, None]
    t, p = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
    tp = (w * t * p).sum(axis=0)
    fp = (w * (1 - t) * p).sum(axis=0)
    fn = (w * t * (1 - p)).sum(axis=0)
    if average == "micro":
        denom = 2 * tp.sum() + fp.sum() + fn.sum()
        return float(2 * tp.sum() / denom) if denom else 0.0
    denom = 2 * tp + fp + fn
    per_label = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    support = tp + fn
    if average == "macro":
        return float(per_label.mean()) if len(per_label) else float("nan")
    if average == "macro_present":
        present = support > 0
        return float(per_label[present].mean()) if present.any() else float("nan")
    if average == "weighted":
        return float((per_label * support).sum() / support.sum()) if support.sum() else 0.0
    if average == "samples":
        row_tp = (t * p).sum(axis=1)
        row_denom = t.sum(axis=1) + p.sum(axis=1)
        row_f1 = np.divide(2 * row_tp, row_denom, out=np.zeros_like(row_tp), where=row_denom > 0)
        total = w[:, 0].sum()
        return float((row_f1 * w[:, 0]).sum() / total) if total else float("nan")
    raise ValueError(f"unknown average {average!r}")


# ----------------------------------------------------------------------------------------- label vectors


def label_vector(labels: Sequence[str], vocabulary: Sequence[str]) -> list[int]:
    """0/1 vector of canonical `labels` over `vocabulary` (labels must already be canonical members)."""
    present = set(labels)
    unknown = present - set(vocabulary)
    if unknown:
        raise ValueError(f"labels outside the label list: {sorted(unknown)}; expected members of {list(vocabulary)}")
    return [1 if label in present else 0 for label in vocabulary]


def strict_grounding_labels(parsed: dict[str, Any]) -> tuple[list[str], bool, bool]:
    """(local labels with at least one box, asserts Finding, asserts No finding) of a parsed stage-1 answer.

    A stage-1 answer asserts `Finding` when it lists boxes or says "None" (abnormal, nothing to localise), and
    `No finding` when it says so; a contradiction asserts both. The caller decides what a failure means.
    """
    labels = list(dict.fromkeys(f["label"] for f in parsed.get("findings", [])))
    no_finding = bool(parsed.get("no_finding"))
    finding = bool(labels) or bool(parsed.get("none_listed"))
    return labels, finding, no_finding


def strict_diagnosis_labels(parsed: dict[str, Any]) -> list[str]:
    """Positive global labels (canonical, `No finding` included) of a parsed stage-2 answer."""
    return list(parsed.get("positive", []))


_PAPER_TAG_RE = re.compile(r"<.*?>")


def paper_extract_labels(text: str, class_names: Sequence[str]) -> list[int]:
    """[C]'s `extract_labels_*`: lower-case, remove `<...>`, one substring test per class name."""
    cleaned = _PAPER_TAG_RE.sub("", text.lower())
    return [1 if name.lower() in cleaned else 0 for name in class_names]


def paper_local_vector(text: str) -> list[int]:
    """[C]'s `extract_labels_local` over the 22 local labels."""
    return paper_extract_labels(text, VINDR_LOCAL_LABELS)


def paper_global_vector(text: str) -> tuple[list[int], int]:
    """[C]'s `extract_labels_global`: 6 global labels (substring) and `Finding` = "no finding" absent."""
    vector = paper_extract_labels(text, PAPER_CLASS_NAMES[22:])
    return vector, 0 if vector[-1] else 1


__all__ = [
    "AVERAGES",
    "FINDING",
    "PAPER_CLASS_NAMES",
    "VINDR_GLOBAL_LABELS",
    "VINDR_LOCAL_LABELS",
    "as_binary_matrix",
    "binary_report",
    "finding_report",
    "label_vector",
    "multilabel_report",
    "paper_extract_labels",
    "paper_global_vector",
    "paper_local_vector",
    "strict_diagnosis_labels",
    "strict_grounding_labels",
    "weighted_f1",
]
