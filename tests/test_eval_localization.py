"""IoU, the paper's Acc@IoU ([C]) and the one-to-one variant on hand-made boxes; VOC AP / mAP known answers."""

from __future__ import annotations

import numpy as np
import pytest

from litegpt_eval.localization import (
    ImageBoxes,
    greedy_match,
    iou,
    iou_plus_one,
    map_from_detections,
    matched_detection,
    mean_average_precision,
    paper_acc_at_iou,
    paper_image_hits,
    to_taxonomy,
    voc_ap,
)
from litegpt_eval.scoring import score_records
from processing_litegpt import LOCAL_PREFIX, format_grounding_answer


def test_iou_hand_values():
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert iou((0, 0, 10, 10), (10, 10, 20, 20)) == 0.0
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    # +1 convention: areas 11*11 = 121 each, intersection 6*11 = 66 -> 66 / 176
    assert iou_plus_one((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(66 / 176)
    # touching boxes overlap by one "pixel" column under +1
    assert iou_plus_one((0, 0, 10, 10), (10, 0, 20, 10)) == pytest.approx(11 / 231)


def phrase(label, box):
    return f"<p>{label}</p> {{<{box[0]}><{box[1]}><{box[2]}><{box[3]}>}}"


def answer(*phrases):
    return f"{LOCAL_PREFIX} {','.join(phrases)}."


def test_paper_acc_iou_any_match_strict_threshold_and_exact_label():
    gt = answer(phrase("Cardiomegaly", (10, 10, 29, 29)), phrase("Cardiomegaly", (12, 12, 31, 31)), phrase("Nodule/Mass", (50, 50, 59, 59)))
    # one prediction hits BOTH cardiomegaly boxes (no one-to-one matching in [C])
    pred = answer(phrase("Cardiomegaly", (11, 11, 30, 30)), phrase("nodule/mass", (50, 50, 59, 59)))
    result = paper_acc_at_iou([(pred, gt)], thresholds=(0.5,))
    assert result["gt_boxes"] == 3
    assert result["hits"][0.5] == 2  # the lower-case "nodule/mass" does not match [C]'s exact label string
    assert result["acc"][0.5] == pytest.approx(200 / 3)

    # strict ">": a box with IoU exactly 0.5 (+1 grid convention) is not a hit
    # gt (0,0,9,9): area 100; pred (0,0,9,19): area 200, inter 100 -> IoU 0.5
    gt2 = answer(phrase("Edema", (0, 0, 9, 9)))
    pred2 = answer(phrase("Edema", (0, 0, 9, 19)))
    assert paper_acc_at_iou([(pred2, gt2)], thresholds=(0.5, 0.4))["hits"] == {0.5: 0, 0.4: 1}


def test_paper_acc_iou_counts_images_without_predictions_as_misses():
    gt = answer(phrase("Edema", (0, 0, 9, 9)))
    result = paper_acc_at_iou([("garbage", gt), (answer(phrase("Edema", (0, 0, 9, 9))), gt)], thresholds=(0.3,))
    assert result["acc"][0.3] == 50.0


def test_matched_variant_is_one_to_one():
    gts = {"img": ImageBoxes(["Cardiomegaly", "Cardiomegaly"], [(10, 10, 30, 30), (12, 12, 32, 32)])}
    preds = {"img": ImageBoxes(["Cardiomegaly"], [(11, 11, 31, 31)])}
    result = matched_detection(preds, gts, thresholds=(0.5,))[0.5]["overall"]
    assert (result["tp"], result["fp"], result["fn"]) == (1, 0, 1)
    assert result["precision"] == 1.0 and result["recall"] == 0.5
    # greedy matching takes the highest IoU pair first
    pairs = greedy_match([(0, 0, 10, 10), (0, 0, 10, 9)], [(0, 0, 10, 9)], 0.5)
    assert pairs == [(1, 0, 1.0)]


def test_voc_ap_known_answer():
    # detections TP, FP, TP with 3 reference boxes: envelope precision 1 for recall 1/3, 2/3 up to 2/3
    recall = np.array([1 / 3, 1 / 3, 2 / 3])
    precision = np.array([1.0, 0.5, 2 / 3])
    assert voc_ap(recall, precision) == pytest.approx(1 / 3 + (1 / 3) * (2 / 3))


def test_mean_average_precision_known_answer():
    gts = {
        "a": ImageBoxes(["Edema", "Edema"], [(0, 0, 10, 10), (20, 20, 30, 30)]),
        "b": ImageBoxes(["Edema", "Atelectasis"], [(0, 0, 10, 10), (50, 50, 60, 60)]),
    }
    preds = {
        "a": ImageBoxes(["Edema", "Edema", "Edema"], [(0, 0, 10, 10), (0, 0, 10, 10), (40, 40, 50, 50)], [0.9, 0.8, 0.3]),
        "b": ImageBoxes(["Edema", "Emphysema"], [(0, 0, 10, 11), (1, 1, 2, 2)], [0.7, 0.99]),
    }
    result = mean_average_precision(preds, gts, 0.4, ["Edema", "Atelectasis", "Emphysema"])
    # Edema ranked: a0.9 TP, a0.8 FP (duplicate), b0.7 TP, a0.3 FP; 3 refs
    # precision at TPs: 1, 2/3 -> AP = 1/3 * 1 + 1/3 * 2/3
    assert result["ap"]["Edema"] == pytest.approx(1 / 3 + 2 / 9)
    assert result["ap"]["Atelectasis"] == 0.0  # references, no detection
    assert result["ap"]["Emphysema"] is None  # detections, no reference: not averaged
    assert result["n_classes"] == 2
    assert result["map"] == pytest.approx((1 / 3 + 2 / 9) / 2)
    # all-ones bootstrap weights reproduce the point estimate; duplicating an image changes it
    assert map_from_detections(result["detections"], np.ones(2, dtype=int)) == pytest.approx(result["map"])
    assert map_from_detections(result["detections"], np.array([2, 0])) != pytest.approx(result["map"])


def test_map_bootstrap_weights_equal_duplicated_images():
    gts = {"a": ImageBoxes(["Edema"], [(0, 0, 10, 10)]), "b": ImageBoxes(["Edema"], [(0, 0, 10, 10)])}
    preds = {"a": ImageBoxes(["Edema"], [(0, 0, 10, 10)], [0.4]), "b": ImageBoxes(["Edema", "Edema"], [(30, 30, 40, 40), (0, 0, 10, 10)], [0.9, 0.2])}
    weighted = map_from_detections(mean_average_precision(preds, gts, 0.5, ["Edema"], images=["a", "b"])["detections"], np.array([1, 2]))
    dup_preds = {**preds, "b2": preds["b"]}
    dup_gts = {**gts, "b2": gts["b"]}
    assert weighted == pytest.approx(mean_average_precision(dup_preds, dup_gts, 0.5, ["Edema"])["map"])


def test_kaggle14_taxonomy_drops_labels_and_adds_no_finding_box():
    boxes = ImageBoxes(["Edema", "Cardiomegaly"], [(0, 0, 1, 1), (0, 0, 2, 2)], [0.5, 0.6])
    out = to_taxonomy(boxes, "kaggle14")
    assert out.labels == ["Cardiomegaly"]
    nf = to_taxonomy(ImageBoxes(), "kaggle14", no_finding=True, no_finding_score=0.8, with_no_finding=True)
    assert nf.labels == ["No finding"] and nf.boxes == [(0.0, 0.0, 1.0, 1.0)] and nf.scores == [0.8]


def test_grounding_scoring_end_to_end_perfect_and_wrong_boxes():
    w, h = 1000, 800
    boxes = [("Cardiomegaly", (300, 400, 700, 640)), ("Nodule/Mass", (100, 100, 150, 160))]
    ref = {"width": w, "height": h, "box_labels": [b[0] for b in boxes], "boxes": [list(b[1]) for b in boxes],
           "local_labels": ["Cardiomegaly", "Nodule/Mass"], "no_finding": False,
           "text": format_grounding_answer(boxes, w, h)}
    perfect = {"id": "p", "task": "grounding", "text": ref["text"], "reference": ref}
    shifted = {"id": "s", "task": "grounding", "reference": ref,
               "text": format_grounding_answer([("Cardiomegaly", (500, 400, 900, 640))], w, h)}
    normal_ref = {"width": w, "height": h, "box_labels": [], "boxes": [], "local_labels": [], "no_finding": True,
                  "text": format_grounding_answer([], w, h, no_finding=True)}
    normal = {"id": "n", "task": "grounding", "text": normal_ref["text"], "reference": normal_ref,
              "scores": {"no_finding": 0.9}}
    metrics, _ = score_records([perfect, shifted, normal], bootstrap=0, text_metrics=False)
    loc = metrics["tasks"]["grounding"]["localization"]
    # paper: 4 reference boxes; the perfect image hits its 2, the shifted box (grid IoU 0.34) only at 0.3
    assert loc["acc_iou"]["paper"]["gt_boxes"] == 4
    assert loc["acc_iou"]["paper"]["0.5"] == pytest.approx(50.0)
    assert loc["acc_iou"]["paper"]["0.3"] == pytest.approx(75.0)
    matched = loc["acc_iou"]["matched"]["0.5"]["overall"]
    assert (matched["tp"], matched["fp"], matched["fn"]) == (2, 1, 2)
    assert loc["map"]["0.4"]["vindr22"]["ap"]["Nodule/Mass"] == pytest.approx(0.5)
    assert loc["map"]["0.4"]["kaggle14"]["ap"]["No finding"] == pytest.approx(1.0)
    cls = metrics["tasks"]["grounding"]["classification"]["strict"]["labels"]
    assert cls["Cardiomegaly"]["precision"] == 1.0 and cls["Cardiomegaly"]["recall"] == 1.0
    assert metrics["tasks"]["grounding"]["finding"]["strict"]["No finding"]["f1"] == 1.0


# The inverted box a model emitted: x1 = 50 > x2 = 40. Under the +1 convention its "area" (-9 x 21) cancels the
# reference's (9 x 21), so MiniGPT-v2's formula divided 0 by a union of 0 and took score_records down with it.
INVERTED_PREFIX = "Local diseases of this chest radiograph are "
INVERTED_PREDICTION = INVERTED_PREFIX + "<p>Edema</p> {<50><20><40><40>}."
INVERTED_REFERENCE = INVERTED_PREFIX + "<p>Edema</p> {<0><0><8><20>}."


def test_inverted_box_is_a_miss_not_a_crash():
    assert iou_plus_one((50, 20, 40, 40), (0, 0, 8, 20)) == 0.0
    hits = paper_image_hits(INVERTED_PREDICTION, INVERTED_REFERENCE)
    assert hits == {"gt_boxes": 1, "gt_boxes_label_predicted": 1, "hits": {0.3: 0, 0.4: 0, 0.5: 0}}
    # An inverted box whose union stays positive gave 0 / positive = 0 under [C]'s formula already: same value.
    assert iou_plus_one((50, 20, 40, 40), (40, 20, 50, 40)) == 0.0


def test_score_records_survives_an_inverted_box():
    ref = {"width": 100, "height": 100, "box_labels": ["Edema"], "boxes": [[0, 0, 8, 20]], "local_labels": ["Edema"],
           "no_finding": False, "text": INVERTED_REFERENCE}  # fmt: skip
    records = [
        {"id": "inverted", "task": "grounding", "text": INVERTED_PREDICTION, "reference": ref},
        {"id": "exact", "task": "grounding", "text": INVERTED_REFERENCE, "reference": ref},
    ]
    metrics, _ = score_records(records, bootstrap=20, text_metrics=False)
    grounding = metrics["tasks"]["grounding"]
    assert grounding["localization"]["acc_iou"]["paper"]["0.5"] == pytest.approx(50.0)  # one hit of two boxes
    # The strict parser counts the inverted box as a failure (x2 < x1); [C]'s regex scores it as a miss.
    assert grounding["parse"]["failed_ids"] == ["inverted"]


def test_conditional_acc_iou_counts_only_boxes_of_predicted_labels():
    gt = answer(phrase("Cardiomegaly", (10, 10, 29, 29)), phrase("Edema", (0, 0, 9, 9)), phrase("Edema", (50, 50, 59, 59)),
                phrase("Nodule/Mass", (70, 70, 79, 79)))  # fmt: skip
    # Names Cardiomegaly (hit) and Edema (hits one of its two boxes); never names Nodule/Mass.
    pred = answer(phrase("Cardiomegaly", (10, 10, 29, 29)), phrase("Edema", (0, 0, 9, 9)), phrase("Pneumothorax", (70, 70, 79, 79)))
    result = paper_acc_at_iou([(pred, gt)], thresholds=(0.5,))
    assert result["gt_boxes"] == 4 and result["gt_boxes_label_predicted"] == 3 and result["hits"][0.5] == 2
    assert result["acc"][0.5] == pytest.approx(50.0)  # [C]: 2 of all 4 reference boxes
    assert result["acc_conditional"][0.5] == pytest.approx(200 / 3)  # paper: 2 of the 3 boxes of named labels
    # Nothing named: the conditional variant has no denominator (NaN), [C]'s is 0.
    nothing = paper_acc_at_iou([(answer(phrase("Pneumothorax", (0, 0, 9, 9))), gt)], thresholds=(0.5,))
    assert nothing["acc"][0.5] == 0.0 and np.isnan(nothing["acc_conditional"][0.5])

    ref = {"width": 100, "height": 100, "box_labels": ["Cardiomegaly", "Edema", "Edema", "Nodule/Mass"],
           "boxes": [[10, 10, 29, 29], [0, 0, 9, 9], [50, 50, 59, 59], [70, 70, 79, 79]],
           "local_labels": ["Cardiomegaly", "Edema", "Nodule/Mass"], "no_finding": False, "text": gt}  # fmt: skip
    metrics, _ = score_records([{"id": "a", "task": "grounding", "text": pred, "reference": ref}], bootstrap=0, text_metrics=False)
    acc_iou = metrics["tasks"]["grounding"]["localization"]["acc_iou"]
    assert acc_iou["paper"]["0.5"] == pytest.approx(50.0)
    assert acc_iou["paper_conditional"]["0.5"] == pytest.approx(200 / 3)
    assert acc_iou["paper_conditional"]["gt_boxes_label_predicted"] == 3
