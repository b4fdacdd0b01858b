"""The protocol names and descriptions `metrics.json` carries, and what the bootstrap leaves out."""

from __future__ import annotations

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
