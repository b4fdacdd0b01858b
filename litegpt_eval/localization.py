"""Localisation metrics.

Four protocols, always labelled:

* `paper` - the reference code's Acc@IoU ([C] `compute_accuracy`): the regex
  `<p>([^<]+)</p> \\{<(\\d+)><(\\d+)><(\\d+)><(\\d+)>\\}` is run on the prediction **and** on the reference text;
  a reference box is a hit if **any** prediction of the same image with the same label string (exact, case
  sensitive) has `IoU > t` (strict), IoU computed on the 0-100 grid with the `+1` pixel-area convention
  (MiniGPT-v2's `computeIoU`); score = hits / reference boxes x 100 (a recall: no one-to-one matching, no false
  positive penalty; images without predicted phrases contribute misses).
* `paper_conditional` - the same hits divided by the reference boxes whose label the prediction names (the paper's
  section 4.5: "Only correctly classified findings are included in the evaluation metrics"; the released code
  divides by all reference boxes instead).
* `matched` - continuous IoU on pixel boxes, one-to-one greedy matching per (image, label) in descending IoU order,
  pairs with `IoU > t`; precision, recall and F1 over all boxes.
* `ap` - VOC-2010 all-point interpolated average precision per class: detections of a class sorted by descending
  confidence over the whole set; each is a true positive when its highest-IoU reference box of the same image and
  class has `IoU > t` and is not already taken, else a false positive (VOC's rule, kept as is); mAP = mean over the
  classes with at least one reference box. Taxonomies `vindr22` and `kaggle14` (the VinBigData 14 classes, the 8
  other labels dropped; optional `No finding` pseudo-box (0, 0, 1, 1) scored by its phrase confidence).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from codec_litegpt import KAGGLE14_LABELS, NO_FINDING, VINDR_LOCAL_LABELS
from codec_litegpt import box_iou as iou  # the one continuous IoU; `iou_matrix` is its pairwise, vectorised form

Box = Sequence[float]

PAPER_PHRASE_RE = re.compile(r"<p>([^<]+)</p> \{<(\d+)><(\d+)><(\d+)><(\d+)>\}")
THRESHOLDS = (0.3, 0.4, 0.5)

NO_FINDING_BOX = (0.0, 0.0, 1.0, 1.0)


# ======================================================================================= IoU


def iou_plus_one(a: Box, b: Box) -> float:
    """MiniGPT-v2's `computeIoU` (used by [C]): integer-pixel convention, width = x2 - x1 + 1.

    [C]'s regex accepts inverted boxes (`x2 < x1` or `y2 < y1`), which a model can emit. Such a box never overlaps
    anything under this convention (its `min(x2) - max(x1) + 1` is <= 0), but its negative "area" can cancel the
    other box's and leave a union <= 0, where the formula divides by zero or flips sign. The IoU is then 0: the
    value [C]'s formula gives for every inverted box whose union stays positive.
    """
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
    inter = ix * iy
    area_a = (a[2] - a[0] + 1) * (a[3] - a[1] + 1)
    area_b = (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
    union = area_a + area_b - inter
    return float(inter / union) if union > 0 else 0.0


def iou_matrix(boxes_a: Sequence[Box], boxes_b: Sequence[Box]) -> np.ndarray:
    """Pairwise continuous IoU (`codec_litegpt.box_iou` of every pair, vectorised), shape (len(a), len(b))."""
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    ix = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    iy = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = ix * iy
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


# ======================================================================================= [C] Acc@IoU


def paper_phrases(text: str) -> list[tuple[str, tuple[int, int, int, int]]]:
    """`(label string, grid box)` of every phrase [C]'s regex finds (no normalisation, no validation)."""
    return [(m[0], (int(m[1]), int(m[2]), int(m[3]), int(m[4]))) for m in PAPER_PHRASE_RE.findall(text or "")]


def paper_image_hits(pred_text: str, gt_text: str, thresholds: Sequence[float] = THRESHOLDS) -> dict[str, Any]:
    """Per-image counts of [C]'s Acc@IoU: `{"gt_boxes": n, "gt_boxes_label_predicted": m, "hits": {t: k}}`.

    `gt_boxes_label_predicted` counts the reference boxes whose label string the prediction names in a phrase
    (the paper's "correctly classified findings", the denominator of the conditional variant); a hit needs such a
    phrase, so `hits <= gt_boxes_label_predicted <= gt_boxes`.
    """
    gts = paper_phrases(gt_text)
    preds = defaultdict(list)
    for label, box in paper_phrases(pred_text):
        preds[label].append(box)
    hits = {}
    for t in thresholds:
        count = 0
        for label, gt_box in gts:
            if any(iou_plus_one(pred_box, gt_box) > t for pred_box in preds.get(label, ())):
                count += 1
        hits[t] = count
    predicted = sum(1 for label, _ in gts if label in preds)
    return {"gt_boxes": len(gts), "gt_boxes_label_predicted": predicted, "hits": hits}


def paper_acc_at_iou(
    pairs: Iterable[tuple[str, str]], thresholds: Sequence[float] = THRESHOLDS
) -> dict[str, Any]:
    """[C]'s Acc@IoU over `(prediction text, reference text)` pairs, and the paper's conditional reading.

    `acc`: [C]'s `compute_accuracy`, hits / reference boxes x 100. `acc_conditional`: hits / reference boxes whose
    label the prediction names x 100 (paper section 4.5: "Only correctly classified findings are included").
    Returns `{"acc": {t: %}, "acc_conditional": {t: %}, "gt_boxes", "gt_boxes_label_predicted", "hits"}`; a
    percentage is NaN when its denominator is 0.
    """
    total = predicted = 0
    hits = dict.fromkeys(thresholds, 0)
    for pred_text, gt_text in pairs:
        image = paper_image_hits(pred_text, gt_text, thresholds)
        total += image["gt_boxes"]
        predicted += image["gt_boxes_label_predicted"]
        for t in thresholds:
            hits[t] += image["hits"][t]
    acc = {t: (100.0 * hits[t] / total if total else float("nan")) for t in thresholds}
    conditional = {t: (100.0 * hits[t] / predicted if predicted else float("nan")) for t in thresholds}
    return {"acc": acc, "acc_conditional": conditional, "gt_boxes": total, "gt_boxes_label_predicted": predicted,
            "hits": hits}  # fmt: skip


# ======================================================================================= matched detection


@dataclass
class ImageBoxes:
    """Boxes of one image: `labels[k]` names `boxes[k]` (pixel xyxy); `scores[k]` for predictions (or None)."""

    labels: list[str] = field(default_factory=list)
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)
    scores: list[float | None] = field(default_factory=list)

    def __post_init__(self):
        if len(self.labels) != len(self.boxes):
            raise ValueError(f"{len(self.labels)} labels for {len(self.boxes)} boxes")
        if not self.scores:
            self.scores = [None] * len(self.boxes)
        elif len(self.scores) != len(self.boxes):
            raise ValueError(f"{len(self.scores)} scores for {len(self.boxes)} boxes")
        self.boxes = [tuple(float(v) for v in box) for box in self.boxes]

    def of_label(self, label: str) -> list[int]:
        return [k for k, name in enumerate(self.labels) if name == label]


def greedy_match(pred_boxes: Sequence[Box], gt_boxes: Sequence[Box], threshold: float) -> list[tuple[int, int, float]]:
    """One-to-one matching: pairs `(pred, gt, iou)` taken in descending IoU order while `IoU > threshold`.

    Ties are broken by (pred index, gt index), so the result is deterministic.
    """
    matrix = iou_matrix(pred_boxes, gt_boxes)
    candidates = [(-matrix[i, j], i, j) for i in range(matrix.shape[0]) for j in range(matrix.shape[1]) if matrix[i, j] > threshold]
    candidates.sort()
    used_p, used_g, pairs = set(), set(), []
    for neg_iou, i, j in candidates:
        if i in used_p or j in used_g:
            continue
        used_p.add(i)
        used_g.add(j)
        pairs.append((i, j, -neg_iou))
    return pairs


def matched_image_counts(pred: ImageBoxes, gt: ImageBoxes, threshold: float) -> dict[str, dict[str, int]]:
    """Per-label `{label: {"tp", "fp", "fn"}}` of one image under one-to-one matching at `IoU > threshold`."""
    out = {}
    for label in dict.fromkeys(list(gt.labels) + list(pred.labels)):
        p_idx, g_idx = pred.of_label(label), gt.of_label(label)
        pairs = greedy_match([pred.boxes[k] for k in p_idx], [gt.boxes[k] for k in g_idx], threshold)
        tp = len(pairs)
        out[label] = {"tp": tp, "fp": len(p_idx) - tp, "fn": len(g_idx) - tp}
    return out


def _prf(tp: int, fp: int, fn: int) -> dict[str, float | int]:
    return {
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
        "tp": int(tp),
        "fp": int(fp),
        "fn": int(fn),
    }


def matched_detection(
    preds: Mapping[str, ImageBoxes], gts: Mapping[str, ImageBoxes], thresholds: Sequence[float] = THRESHOLDS
) -> dict[float, dict[str, Any]]:
    """Matched P/R/F1 over images (the union of both mappings' keys): `{t: {"overall": {...}, "labels": {...}}}`."""
    images = list(dict.fromkeys(list(gts) + list(preds)))
    out = {}
    for t in thresholds:
        totals = defaultdict(lambda: [0, 0, 0])
        for image in images:
            counts = matched_image_counts(preds.get(image, ImageBoxes()), gts.get(image, ImageBoxes()), t)
            for label, c in counts.items():
                totals[label][0] += c["tp"]
                totals[label][1] += c["fp"]
                totals[label][2] += c["fn"]
        tp, fp, fn = (sum(v[k] for v in totals.values()) for k in range(3))
        out[t] = {"overall": _prf(tp, fp, fn), "labels": {label: _prf(*v) for label, v in sorted(totals.items())}}
    return out


# ======================================================================================= AP / mAP


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC-2010 all-point interpolated AP: area under the monotone (right-max) precision envelope."""
    mrec = np.concatenate(([0.0], np.asarray(recall, dtype=np.float64), [1.0]))
    mpre = np.concatenate(([0.0], np.asarray(precision, dtype=np.float64), [0.0]))
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    steps = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


@dataclass
class ClassDetections:
    """Detections of one class, each flagged TP/FP by VOC matching inside its image, plus the reference count.

    Matching inside an image does not depend on other images, so resampling images (bootstrap) only needs these
    flags: `image_index[k]` says which image detection `k` belongs to.
    """

    scores: np.ndarray
    tp: np.ndarray
    image_index: np.ndarray
    gt_per_image: np.ndarray  # reference boxes of this class per image (indexed like the image list)

    def ap(self, weights: np.ndarray | None = None) -> float:
        """AP; `weights[i]` = how many times image `i` is drawn (bootstrap), default 1 each."""
        if weights is None:
            n_gt = float(self.gt_per_image.sum())
            det_w = np.ones(len(self.scores))
        else:
            n_gt = float((self.gt_per_image * weights).sum())
            det_w = weights[self.image_index].astype(np.float64) if len(self.scores) else np.zeros(0)
        if n_gt <= 0:
            return float("nan")
        if not len(self.scores) or det_w.sum() == 0:
            return 0.0
        order = np.argsort(-self.scores, kind="stable")
        w = det_w[order]
        tp = np.cumsum(self.tp[order] * w)
        fp = np.cumsum((1 - self.tp[order]) * w)
        keep = w > 0
        tp, fp = tp[keep], fp[keep]
        return voc_ap(tp / n_gt, tp / np.maximum(tp + fp, np.finfo(np.float64).eps))


def voc_class_detections(
    images: Sequence[str],
    preds: Mapping[str, ImageBoxes],
    gts: Mapping[str, ImageBoxes],
    label: str,
    threshold: float,
    default_score: float = 1.0,
) -> ClassDetections:
    """VOC TP/FP flags of `label`'s detections, image by image (detections in descending score inside each image)."""
    scores, flags, owners = [], [], []
    gt_counts = np.zeros(len(images), dtype=np.int64)
    for i, image in enumerate(images):
        gt = gts.get(image, ImageBoxes())
        gt_boxes = [gt.boxes[k] for k in gt.of_label(label)]
        gt_counts[i] = len(gt_boxes)
        pred = preds.get(image, ImageBoxes())
        idx = pred.of_label(label)
        if not idx:
            continue
        det_scores = [default_score if pred.scores[k] is None else float(pred.scores[k]) for k in idx]
        order = sorted(range(len(idx)), key=lambda k: -det_scores[k])  # stable: text order breaks ties
        matrix = iou_matrix([pred.boxes[idx[k]] for k in order], gt_boxes)
        taken = set()
        for row, k in enumerate(order):
            is_tp = 0
            if gt_boxes:
                best = int(np.argmax(matrix[row]))
                if matrix[row, best] > threshold and best not in taken:
                    taken.add(best)
                    is_tp = 1
            scores.append(det_scores[k])
            flags.append(is_tp)
            owners.append(i)
    return ClassDetections(
        scores=np.asarray(scores, dtype=np.float64),
        tp=np.asarray(flags, dtype=np.float64),
        image_index=np.asarray(owners, dtype=np.int64),
        gt_per_image=gt_counts,
    )


def mean_average_precision(
    preds: Mapping[str, ImageBoxes],
    gts: Mapping[str, ImageBoxes],
    threshold: float,
    classes: Sequence[str],
    images: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Per-class AP and mAP (mean over classes with reference boxes) at `IoU > threshold`.

    Returns `{"map", "ap": {class: AP or None}, "n_classes", "detections": {class: ClassDetections}}`
    (`detections` is for bootstrap/PR curves; drop it before JSON). Detections without a score count as 1.0.
    """
    images = list(images) if images is not None else list(dict.fromkeys(list(gts) + list(preds)))
    per_class, ap = {}, {}
    for label in classes:
        det = voc_class_detections(images, preds, gts, label, threshold)
        per_class[label] = det
        value = det.ap()
        ap[label] = None if np.isnan(value) else value
    scored = [v for v in ap.values() if v is not None]
    return {
        "map": float(np.mean(scored)) if scored else float("nan"),
        "ap": ap,
        "n_classes": len(scored),
        "detections": per_class,
    }


def map_from_detections(detections: Mapping[str, ClassDetections], weights: np.ndarray | None = None) -> float:
    """mAP from precomputed per-class detections (bootstrap resample given by `weights`)."""
    values = [d.ap(weights) for d in detections.values()]
    values = [v for v in values if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def to_taxonomy(
    boxes: ImageBoxes, taxonomy: str, no_finding: bool = False, no_finding_score: float | None = None,
    with_no_finding: bool = False,
) -> ImageBoxes:
    """Restrict an image's boxes to a taxonomy: `vindr22` (unchanged) or `kaggle14` (others dropped).

    With `with_no_finding`, an image asserting `No finding` gets the pseudo-box (0, 0, 1, 1) of class `No finding`
    (score `no_finding_score`), as in the VinBigData submissions.
    """
    if taxonomy == "vindr22":
        allowed = set(VINDR_LOCAL_LABELS)
    elif taxonomy == "kaggle14":
        allowed = set(KAGGLE14_LABELS)
    else:
        raise ValueError(f"unknown taxonomy {taxonomy!r}; expected 'vindr22' or 'kaggle14'")
    keep = [k for k, label in enumerate(boxes.labels) if label in allowed]
    out = ImageBoxes([boxes.labels[k] for k in keep], [boxes.boxes[k] for k in keep], [boxes.scores[k] for k in keep])
    if with_no_finding and no_finding:
        out.labels.append(NO_FINDING)
        out.boxes.append(NO_FINDING_BOX)
        out.scores.append(no_finding_score)
    return out


def taxonomy_classes(taxonomy: str, with_no_finding: bool = False) -> tuple[str, ...]:
    classes = VINDR_LOCAL_LABELS if taxonomy == "vindr22" else KAGGLE14_LABELS
    return (*classes, NO_FINDING) if with_no_finding else tuple(classes)


__all__ = [
    "KAGGLE14_LABELS",
    "NO_FINDING_BOX",
    "PAPER_PHRASE_RE",
    "THRESHOLDS",
    "ClassDetections",
    "ImageBoxes",
    "greedy_match",
    "iou",
    "iou_matrix",
    "iou_plus_one",
    "map_from_detections",
    "matched_detection",
    "matched_image_counts",
    "mean_average_precision",
    "paper_acc_at_iou",
    "paper_image_hits",
    "paper_phrases",
    "taxonomy_classes",
    "to_taxonomy",
    "voc_ap",
    "voc_class_detections",
]
