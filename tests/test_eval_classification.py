"""Classification metrics: sklearn equality, hand-computed cases, strict vs paper protocols, failures."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import classification_report

from litegpt_eval.bootstrap import expand_rows
from litegpt_eval.classification import (
    binary_report,
    finding_report,
    multilabel_report,
    paper_global_vector,
    paper_local_vector,
    weighted_f1,
)
from litegpt_eval.records import PredictionsError
from litegpt_eval.scoring import score_records
from processing_litegpt import VINDR_GLOBAL_LABELS, VINDR_LOCAL_LABELS, format_diagnosis_answer


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_multilabel_report_equals_sklearn_classification_report(seed):
    rng = np.random.default_rng(seed)
    n, labels = 40, [f"L{k}" for k in range(7)]
    y_true = (rng.random((n, len(labels))) < rng.uniform(0.05, 0.5, len(labels))).astype(int)
    y_pred = (rng.random((n, len(labels))) < 0.3).astype(int)
    y_true[:, 0] = 0  # a label without positives (zero_division path)
    y_pred[:, 1] = 0  # a label never predicted
    y_true[3], y_pred[3] = 0, 0  # an empty row (samples average)
    ours = multilabel_report(y_true, y_pred, labels)
    ref = classification_report(y_true, y_pred, target_names=labels, output_dict=True, zero_division=0)
    for label in labels:
        for key, ref_key in (("precision", "precision"), ("recall", "recall"), ("f1", "f1-score"), ("support", "support")):
            assert ours["labels"][label][key] == pytest.approx(ref[label][ref_key], abs=1e-12)
    for average in ("micro", "macro", "weighted", "samples"):
        for key, ref_key in (("precision", "precision"), ("recall", "recall"), ("f1", "f1-score")):
            assert ours["averages"][average][key] == pytest.approx(ref[f"{average} avg"][ref_key], abs=1e-12)
    present = y_true.sum(axis=0) > 0
    f1s = np.array([ours["labels"][l]["f1"] for l in labels])
    assert ours["averages"]["macro_present"]["f1"] == pytest.approx(f1s[present].mean())
    assert ours["averages"]["macro_present"]["n_labels"] == present.sum()


@pytest.mark.parametrize("average", ["micro", "macro", "weighted", "samples"])
def test_weighted_f1_equals_sklearn_on_expanded_rows(average):
    rng = np.random.default_rng(5)
    y_true = (rng.random((30, 5)) < 0.3).astype(int)
    y_pred = (rng.random((30, 5)) < 0.3).astype(int)
    weights = rng.integers(0, 3, 30)
    ref = classification_report(
        expand_rows(y_true, weights), expand_rows(y_pred, weights), output_dict=True, zero_division=0
    )[f"{average} avg"]["f1-score"]
    assert weighted_f1(y_true, y_pred, weights, average) == pytest.approx(ref, abs=1e-12)


def test_hand_computed_case():
    # label A: tp=1 fp=1 fn=1 -> P=R=F1=0.5 ; label B: tp=2 fp=0 fn=0 -> 1 ; micro: tp=3 fp=1 fn=1 -> 0.75
    y_true = [[1, 1], [1, 0], [0, 1]]
    y_pred = [[1, 1], [0, 0], [1, 1]]
    report = multilabel_report(y_true, y_pred, ["A", "B"])
    assert report["labels"]["A"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert report["labels"]["B"]["f1"] == 1.0
    assert report["averages"]["micro"]["f1"] == pytest.approx(0.75)
    assert report["averages"]["macro"]["f1"] == pytest.approx(0.75)
    # samples: rows f1 = 1, 0, 2*1/(1+2)=2/3 -> mean 5/9
    assert report["averages"]["samples"]["f1"] == pytest.approx(5 / 9)


def test_binary_and_finding_report_score_failures_and_contradictions_as_written():
    true_nf = [1, 1, 0, 0]
    pred_finding = [0, 1, 1, 0]  # image 3 is a parse failure: neither asserted
    pred_nf = [1, 1, 0, 0]  # image 1 is a contradiction: both asserted
    report = finding_report(true_nf, pred_finding, pred_nf)
    assert report["Finding"]["tp"] == 1 and report["Finding"]["fp"] == 1 and report["Finding"]["fn"] == 1
    assert report["No finding"]["precision"] == 1.0 and report["No finding"]["recall"] == 1.0
    assert binary_report([0, 0], [0, 0])["f1"] == 0.0  # zero_division=0


def test_paper_protocol_is_substring_matching():
    # [C] finds "ild" in "mild" and "no finding" anywhere; the strict parser does neither.
    vector = paper_local_vector("Local diseases of this chest radiograph are <p>Mild opacity</p> {<1><2><3><4>}.")
    assert vector[VINDR_LOCAL_LABELS.index("ILD")] == 1
    vector, finding = paper_global_vector("Global diseases of this chest radiograph are No finding.")
    assert vector[-1] == 1 and finding == 0


def _diag_record(rid, text, labels, ref_text=None):
    return {"id": rid, "task": "diagnosis", "text": text,
            "reference": {"global_labels": labels, "text": ref_text or format_diagnosis_answer(labels)}}


def test_strict_negation_failures_and_paper_protocol_side_by_side():
    prefix = "Global diseases of this chest radiograph are"
    records = [
        _diag_record("a", f"{prefix} Pneumonia, Tuberculosis.", ["Pneumonia", "Tuberculosis"]),
        _diag_record("b", f"{prefix} no Pneumonia, Tuberculosis.", ["Tuberculosis"]),  # negation-aware
        _diag_record("c", f"{prefix} Pneumonia, blah.", ["Pneumonia"]),  # unknown fragment: failure
        _diag_record("d", f"{prefix} No finding.", ["No finding"]),
    ]
    metrics, _ = score_records(records, bootstrap=0, text_metrics=False)
    diag = metrics["tasks"]["diagnosis"]
    assert diag["parse"]["failures"] == 1 and diag["parse"]["failed_ids"] == ["c"]
    assert "unknown fragment 'blah'" in diag["parse"]["failure_messages"]["c"][0]
    strict = diag["classification"]["strict"]["labels"]
    # Pneumonia: refs a, c; strict predicts it for a only (b negated, c failed -> all-negative)
    assert strict["Pneumonia"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}
    assert diag["classification"]["failures_excluded"]["labels"]["Pneumonia"]["recall"] == 1.0
    assert diag["classification"]["failures_excluded"]["n_samples"] == 3
    paper = diag["classification"]["paper"]["labels"]["Pneumonia"]
    assert paper["precision"] == pytest.approx(2 / 3) and paper["recall"] == 1.0  # substring hits the negated one
    assert diag["finding"]["strict"]["No finding"]["f1"] == 1.0


def test_reference_label_outside_the_label_list_is_a_clear_error():
    records = [_diag_record("a", "Global diseases of this chest radiograph are COPD.", ["COPD", "Flu"], "x")]
    with pytest.raises(PredictionsError, match="outside the label list.*Flu"):
        score_records(records, bootstrap=0, text_metrics=False)


def test_predicted_label_outside_the_label_list_is_a_counted_failure():
    records = [_diag_record("a", "Global diseases of this chest radiograph are Flu.", ["COPD"])]
    metrics, _ = score_records(records, bootstrap=0, text_metrics=False)
    parse = metrics["tasks"]["diagnosis"]["parse"]
    assert parse["failures"] == 1 and parse["failed_ids"] == ["a"]
    assert metrics["tasks"]["diagnosis"]["classification"]["strict"]["n_samples"] == 1
    assert set(metrics["tasks"]["diagnosis"]["classification"]["strict"]["labels"]) == set(VINDR_GLOBAL_LABELS)
