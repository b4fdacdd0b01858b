"""Validation-tuned label thresholds: hand-computed F1-optimal choices, applied unchanged to test, never on test."""

from __future__ import annotations

import json

import pytest

import eval as eval_cli
from litegpt_eval.records import PredictionsError
from litegpt_eval.scoring import score_records
from litegpt_eval.thresholds import check_disjoint, f1_optimal_threshold, fit_thresholds, load_threshold_source
from processing_litegpt import VINDR_GLOBAL_LABELS, format_diagnosis_answer


def test_f1_optimal_threshold_by_hand():
    # scores 0.9 0.8 0.3 0.2 with truths 1 0 1 0: F1 at >=0.9: 2/3, >=0.8: 1/2, >=0.3: 4/5, >=0.2: 2/3
    assert f1_optimal_threshold([1, 0, 1, 0], [0.9, 0.8, 0.3, 0.2]) == (0.3, pytest.approx(0.8))
    # ties in F1 -> the highest threshold: >=0.9 gives 2*1/(1+2) = 2/3, >=0.8 1/2, >=0.7 2/5, >=0.6 2*2/(4+2) = 2/3
    thr, f1 = f1_optimal_threshold([1, 0, 0, 1], [0.9, 0.8, 0.7, 0.6])
    assert (thr, f1) == (0.9, pytest.approx(2 / 3))
    thr, f1 = f1_optimal_threshold([1, 1, 0, 0], [0.6, 0.4, 0.6, 0.1])
    # >=0.6: tp 1 of 2 predicted -> 2/4 = 0.5; >=0.4: tp 2 of 3 -> 4/5 = 0.8; >=0.1: 4/6
    assert (thr, f1) == (0.4, pytest.approx(0.8))
    # tied scores form one candidate; no positive -> no threshold (never predicted)
    assert f1_optimal_threshold([0, 0], [0.2, 0.7]) == (None, 0.0)
    with pytest.raises(ValueError, match="NaN"):
        f1_optimal_threshold([1, 0], [float("nan"), 0.2])


def _diag(rid, labels, scores, text_labels=("No finding",)):
    return {"id": rid, "task": "diagnosis", "text": format_diagnosis_answer(text_labels),
            "reference": {"global_labels": labels},
            "scores": {"labels": {label: scores.get(label, 0.0) for label in VINDR_GLOBAL_LABELS}}}  # fmt: skip


VALIDATION = [
    _diag("v1", ["COPD"], {"COPD": 0.9, "Pneumonia": 0.2, "No finding": 0.1}),
    _diag("v2", ["Pneumonia"], {"COPD": 0.8, "Pneumonia": 0.6, "No finding": 0.3}),
    _diag("v3", ["COPD", "Pneumonia"], {"COPD": 0.3, "Pneumonia": 0.4, "No finding": 0.2}),
    _diag("v4", ["No finding"], {"COPD": 0.2, "Pneumonia": 0.5, "No finding": 0.7}),
]
TEST = [
    _diag("t1", ["COPD"], {"COPD": 0.35, "Pneumonia": 0.45, "No finding": 0.1}),
    _diag("t2", ["Pneumonia"], {"COPD": 0.25, "Pneumonia": 0.65, "No finding": 0.2}),
    _diag("t3", ["No finding"], {"COPD": 0.1, "Pneumonia": 0.1, "No finding": 0.8}),
]


def test_thresholds_chosen_on_validation_are_applied_unchanged_to_test():
    fitted = fit_thresholds(VALIDATION)
    thr = fitted["diagnosis"]["thresholds"]
    # COPD: scores 0.9(1) 0.8(0) 0.3(1) 0.2(0) -> 0.3 (F1 0.8), as in the first hand case
    # Pneumonia: 0.6(1) 0.5(0) 0.4(1) 0.2(0) -> >=0.6: 2/3, >=0.5: 1/2, >=0.4: 4/5, >=0.2: 2/3 -> 0.4
    # No finding: 0.7(1) 0.3 0.2 0.1 -> 0.7 (F1 1); labels without validation positives: never predicted
    assert thr["COPD"] == 0.3 and thr["Pneumonia"] == 0.4 and thr["No finding"] == 0.7
    assert thr["Tuberculosis"] is None and fitted["diagnosis"]["no_validation_positives"] == ["Lung tumor", "Tuberculosis", "Other diseases"]
    assert fitted["diagnosis"]["validation_f1"]["COPD"] == pytest.approx(0.8)

    metrics, _ = score_records(TEST, bootstrap=0, thresholds=fitted)
    entry = metrics["tasks"]["diagnosis"]["thresholded"]
    assert entry["thresholds"] == thr and "VALIDATION" in entry["protocol"]
    labels = entry["classification"]["labels"]
    # test at the validation thresholds: COPD >= 0.3 -> t1 only (true) -> P 1 R 1
    assert labels["COPD"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
    # Pneumonia >= 0.4 -> t1 (false), t2 (true) -> P 0.5, R 1, F1 2/3
    assert labels["Pneumonia"]["precision"] == 0.5 and labels["Pneumonia"]["f1"] == pytest.approx(2 / 3)
    # No finding >= 0.7 -> t3 (true)
    assert labels["No finding"]["f1"] == 1.0
    # micro: tp 3, fp 1, fn 0 -> 6/7
    assert entry["classification"]["averages"]["micro"]["f1"] == pytest.approx(6 / 7)
    # the headline stays the greedy text: every answer says "No finding"
    assert metrics["tasks"]["diagnosis"]["classification"]["strict"]["labels"]["COPD"]["recall"] == 0.0
    # the test references never move the thresholds: scoring other test labels keeps them
    flipped = [dict(r, reference={"global_labels": ["Tuberculosis"]}) for r in TEST]
    again, _ = score_records(flipped, bootstrap=0, thresholds=fitted)
    assert again["tasks"]["diagnosis"]["thresholded"]["thresholds"] == thr


def test_thresholds_never_come_from_test_images(tmp_path):
    with pytest.raises(PredictionsError, match="share 1 image"):
        check_disjoint(VALIDATION + [TEST[0]], TEST)
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in VALIDATION))
    (folder / "generation_manifest.json").write_text(json.dumps({"split": "test"}))
    with pytest.raises(PredictionsError, match="generated on the test split"):
        load_threshold_source(folder / "predictions.jsonl")
    (folder / "generation_manifest.json").write_text(json.dumps({"split": "validation"}))
    fitted = load_threshold_source(folder / "predictions.jsonl", test_records=TEST)
    assert fitted["diagnosis"]["source"]["split"] == "validation" and len(fitted["diagnosis"]["source"]["sha256"]) == 64


def test_missing_confidences_make_the_protocol_unavailable_not_a_number():
    no_scores = [{k: v for k, v in r.items() if k != "scores"} for r in VALIDATION]
    fitted = fit_thresholds(no_scores)
    assert "unavailable" in fitted["diagnosis"]
    metrics, _ = score_records(TEST, bootstrap=0, thresholds=fitted)
    assert "classification" not in metrics["tasks"]["diagnosis"]["thresholded"]
    assert "tasks.diagnosis.thresholded.all" in metrics["unavailable"]


def test_existence_thresholds_per_entity():
    def ex(rid, entity, label, yes):
        return {"id": f"{rid}:{entity}", "image_id": rid, "task": "existence", "text": "No", "scores": {"yes": yes},
                "reference": {"entity": entity, "label": label}}  # fmt: skip

    val = [ex("a", "effusion", 1, 0.7), ex("b", "effusion", 0, 0.6), ex("c", "effusion", 1, 0.4), ex("d", "effusion", 0, 0.1)]
    fitted = fit_thresholds(val)
    # >=0.7: 2/3; >=0.6: 1/2; >=0.4: 4/5; >=0.1: 2/3 -> 0.4
    assert fitted["existence"]["thresholds"] == {"effusion": 0.4}
    test = [ex("e", "effusion", 1, 0.5), ex("f", "effusion", 0, 0.45), ex("g", "effusion", 0, 0.2)]
    metrics, _ = score_records(test, bootstrap=0, thresholds=fitted)
    entry = metrics["tasks"]["existence"]["thresholded"]
    assert entry["entities"]["effusion"]["precision"] == 0.5 and entry["accuracy"] == pytest.approx(2 / 3)
    assert metrics["tasks"]["existence"]["accuracy"] == pytest.approx(2 / 3)  # greedy "No" everywhere


def test_cli_thresholds_from(tmp_path):
    val = tmp_path / "val.jsonl"
    val.write_text("".join(json.dumps(r) + "\n" for r in VALIDATION))
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps(r) + "\n" for r in TEST))
    out = tmp_path / "out"
    assert eval_cli.main(["--predictions", str(test), "--thresholds_from", str(val), "--out", str(out), "--bootstrap", "30",
                          "--no_figures", "--no_progress"]) == 0  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["tasks"]["diagnosis"]["thresholded"]["classification"]["averages"]["micro"]["f1"] == pytest.approx(6 / 7)
    assert metrics["manifest"]["thresholds_from"] == str(val)
    assert "tasks.diagnosis.thresholded.classification.averages.micro.f1" in metrics["confidence_intervals"]
    assert "Ours - Extra protocol: label confidences cut at validation-tuned thresholds" in (out / "report.md").read_text()
    # the test predictions as their own threshold source: refused
    assert eval_cli.main(["--predictions", str(test), "--thresholds_from", str(test), "--out", str(out), "--bootstrap", "0",
                          "--no_figures", "--no_progress"]) == 2  # fmt: skip
    with pytest.raises(SystemExit):
        eval_cli.main(["--predictions", str(test), "--threshold_split", "validation", "--out", str(out)])
