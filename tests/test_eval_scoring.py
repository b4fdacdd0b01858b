"""Scoring from predictions files: bad input (empty, duplicates, unknown ids, missing references), existence AUC."""

from __future__ import annotations

import json

import pytest

import eval as eval_cli
from litegpt_eval.records import PredictionsError, load_records, repair_partial_tail
from litegpt_eval.scoring import lookup, score_records
from processing_litegpt import format_diagnosis_answer


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def diag(rid, labels, text=None):
    return {"id": rid, "task": "diagnosis", "text": text or format_diagnosis_answer(labels),
            "reference": {"global_labels": labels}}


def test_empty_and_malformed_files_are_clear_errors(tmp_path):
    with pytest.raises(PredictionsError, match="no prediction records"):
        load_records(write_jsonl(tmp_path / "empty.jsonl", []))
    (tmp_path / "bad.jsonl").write_text('{"id": "a", "task": "diagnosis", "text": "x"}\nnot json\n')
    with pytest.raises(PredictionsError, match=r"bad.jsonl:2: not valid JSON"):
        load_records(tmp_path / "bad.jsonl")
    with pytest.raises(PredictionsError, match="unknown task"):
        load_records(write_jsonl(tmp_path / "t.jsonl", [{"id": "a", "task": "detect", "text": ""}]))
    with pytest.raises(PredictionsError, match="not found"):
        load_records(tmp_path / "missing.jsonl")
    assert eval_cli.main(["--predictions", str(tmp_path / "empty.jsonl"), "--out", str(tmp_path / "o")]) == 2


def test_duplicated_ids_raise_or_are_counted(tmp_path):
    path = write_jsonl(tmp_path / "dup.jsonl", [diag("a", ["COPD"]), diag("a", ["COPD"], "x"), diag("b", ["COPD"])])
    with pytest.raises(PredictionsError, match="duplicated ids: diagnosis:a"):
        load_records(path)
    records, skipped = load_records(path, on_duplicate="first")
    assert [r["id"] for r in records] == ["a", "b"] and skipped["duplicate_id"] == 1
    assert skipped["items"][0]["line"] == 2


def test_unknown_ids_missing_predictions_and_missing_references(tmp_path):
    preds = write_jsonl(tmp_path / "p.jsonl", [
        {"id": "a", "task": "diagnosis", "text": format_diagnosis_answer(["COPD"])},
        {"id": "zzz", "task": "diagnosis", "text": format_diagnosis_answer(["COPD"])},
    ])  # fmt: skip
    refs = write_jsonl(tmp_path / "r.jsonl", [
        {"id": "a", "task": "diagnosis", "reference": {"global_labels": ["COPD"]}},
        {"id": "b", "task": "diagnosis", "reference": {"global_labels": ["Pneumonia"]}},
    ])  # fmt: skip
    out = tmp_path / "out"
    assert eval_cli.main(["--predictions", str(preds), "--references", str(refs), "--out", str(out), "--bootstrap", "0",
                          "--no_figures", "--no_progress"]) == 0  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["counts"]["skipped"] == {"unknown_id": 1, "missing_prediction": 1}
    reasons = {item["id"]: item["reason"] for item in metrics["counts"]["skipped_items"]}
    assert reasons["zzz"] == "unknown_id" and reasons["b"].startswith("missing_prediction")
    diag_metrics = metrics["tasks"]["diagnosis"]
    assert diag_metrics["n"] == 2 and diag_metrics["parse"]["missing_predictions"] == 1  # scored, not dropped
    assert diag_metrics["classification"]["strict"]["labels"]["Pneumonia"]["recall"] == 0.0
    # records without any reference: counted skip; nothing to score at all: clear error
    metrics, _ = score_records([{"id": "x", "task": "diagnosis", "text": "t"}, diag("a", ["COPD"])], bootstrap=0)
    assert metrics["counts"]["skipped"]["missing_reference"] == 1
    with pytest.raises(PredictionsError, match="no record has a reference"):
        score_records([{"id": "x", "task": "diagnosis", "text": "t"}], bootstrap=0)


def test_repair_partial_tail(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": 1}\n{"id": 2}\n{"id"')
    assert repair_partial_tail(path) == len('{"id"')
    assert path.read_text() == '{"id": 1}\n{"id": 2}\n'
    path.write_text('{"id": 1}\n{"id": 2, bad}\n')
    repair_partial_tail(path)
    assert path.read_text() == '{"id": 1}\n'


def test_existence_per_entity_auc_accuracy_and_intervals():
    rows = []
    for k, (label, p_yes, text) in enumerate([(1, 0.9, "Yes"), (1, 0.6, "No"), (0, 0.2, "No"), (0, 0.7, "Yes"), (1, 0.8, "maybe")]):
        rows.append({"id": f"s{k}:effusion", "task": "existence", "text": text, "scores": {"yes": p_yes},
                     "reference": {"entity": "effusion", "label": label}})  # fmt: skip
    rows.append({"id": "s9:opacity", "task": "existence", "text": "Yes", "scores": {"yes": 0.5},
                 "reference": {"entity": "opacity", "label": 1}})  # fmt: skip
    metrics, _ = score_records(rows, bootstrap=50)
    ex = metrics["tasks"]["existence"]
    eff = ex["entities"]["effusion"]
    # positives 0.9, 0.6, 0.8 vs negatives 0.2, 0.7: 5 of 6 pairs ordered -> AUC 5/6
    assert eff["auc"] == pytest.approx(5 / 6)
    assert eff["accuracy"] == pytest.approx(2 / 5) and eff["failures"] == 1  # "maybe" = failure = answered No
    assert ex["entities"]["opacity"]["auc"] is None  # one class only: AUC undefined, not a number
    assert ex["parse"]["failed_ids"] == ["s4:effusion"]
    assert "tasks.existence.entities.effusion.auc" in metrics["confidence_intervals"]
    assert lookup(metrics, "tasks.existence.entities.effusion.auc") == pytest.approx(5 / 6)


def test_diagnosis_auc_from_label_scores_and_unavailable_without():
    base = [diag("a", ["COPD"]), diag("b", ["No finding"]), diag("c", ["COPD", "Pneumonia"])]
    metrics, _ = score_records(base, bootstrap=0)
    assert metrics["tasks"]["diagnosis"]["auc"]["macro"] is None
    assert "tasks.diagnosis.auc.all" in metrics["unavailable"]
    for record, copd in zip(base, (0.9, 0.1, 0.6)):
        record["scores"] = {"labels": {"COPD": copd, "Lung tumor": 0.1, "Pneumonia": 0.3 if record["id"] != "c" else 0.8,
                                       "Tuberculosis": 0.1, "Other diseases": 0.1, "No finding": 1 - copd}}  # fmt: skip
    metrics, _ = score_records(base, bootstrap=0)
    auc = metrics["tasks"]["diagnosis"]["auc"]
    assert auc["labels"]["COPD"] == 1.0 and auc["labels"]["Pneumonia"] == 1.0 and auc["labels"]["No finding"] == 1.0
    assert auc["labels"]["Tuberculosis"] is None and "no positive reference" in auc["unavailable"]["Tuberculosis"]
    assert auc["no_positive_labels"] == ["Lung tumor", "Tuberculosis", "Other diseases"] and auc["n_labels"] == 3


def test_diagnosis_answers_get_the_text_metrics_of_the_papers_table_5():
    """Stage-2 ([vqa]) answers are scored as text too: identical answers score 100, BLEU-1 counts the clipped
    unigram matches of a partly wrong answer, and the figures carry bootstrap intervals."""
    from sacrebleu.metrics import BLEU

    same = [diag("a", ["COPD"]), diag("b", ["No finding"])]
    wrong = diag("c", ["Pneumonia", "Tuberculosis"], text=format_diagnosis_answer(["Pneumonia", "Lung tumor"]))
    metrics, _ = score_records(same + [wrong], bootstrap=20, coco_meteor=False)
    text = metrics["tasks"]["diagnosis"]["text"]["paper"]
    predictions = [r["text"] for r in same + [wrong]]
    references = [format_diagnosis_answer(r["reference"]["global_labels"]) for r in same + [wrong]]
    expected_bleu1 = BLEU(tokenize="13a", smooth_method="none", max_ngram_order=1).corpus_score(predictions, [references]).score
    assert text["values"]["bleu1"] == pytest.approx(expected_bleu1)
    assert 0 < text["values"]["bleu1"] < 100 and 0 < text["values"]["rouge1"] < 100
    assert "tasks.diagnosis.text.paper.values.rouge1" in metrics["confidence_intervals"]
    assert text["unavailable"]["meteor_coco"].startswith("not requested")

    perfect, _ = score_records(same, bootstrap=0, coco_meteor=False)
    values = perfect["tasks"]["diagnosis"]["text"]["paper"]["values"]
    assert values["rouge1"] == pytest.approx(100.0) and values["bleu1"] == pytest.approx(100.0)
    # --no_text_metrics switches them off for stage 2 as for stage 1.
    assert "text" not in score_records(same, bootstrap=0, text_metrics=False)[0]["tasks"]["diagnosis"]


def _report_section(report: str, heading: str) -> str:
    start = report.index(heading)
    end = report.find("\n## ", start + len(heading))
    return report[start:] if end < 0 else report[start:end]


def test_table_1_comes_from_the_stage_2_answers():
    """The paper's Table 1 is computed from the `[vqa]` answers: the report's Table 1 shows stage 2's Finding row,
    and stage 1's, when scored, sits in a separately named table of ours."""
    from litegpt_eval.report import render_report
    from processing_litegpt import format_grounding_answer

    w, h = 100, 100
    ref = {"width": w, "height": h, "box_labels": ["Edema"], "boxes": [[10, 10, 30, 30]], "local_labels": ["Edema"],
           "no_finding": False}  # fmt: skip
    # Stage 1 misses the abnormal image (Finding recall 0); stage 2 finds it (Finding recall 100) and also calls
    # the normal image abnormal (Finding precision 50).
    grounding = [{"id": "g", "task": "grounding", "reference": ref, "text": format_grounding_answer([], w, h, no_finding=True)}]
    diagnosis = [diag("a", ["Pneumonia"]), diag("b", ["No finding"], text=format_diagnosis_answer(["COPD"]))]
    metrics, _ = score_records(grounding + diagnosis, bootstrap=0, text_metrics=False)
    assert metrics["tasks"]["diagnosis"]["finding"]["strict"]["Finding"]["recall"] == 1.0
    assert metrics["tasks"]["grounding"]["finding"]["strict"]["Finding"]["recall"] == 0.0

    report = render_report(metrics)
    table1 = _report_section(report, "## Table 1 - Finding vs No finding (stage-2 `[vqa]` answers)")
    finding_strict = next(line for line in table1.splitlines() if line.startswith("| Finding | strict |"))
    assert finding_strict.split(" | ")[2:5] == ["50.00", "100.00", "66.67"]  # P, R, F1 of the stage-2 answers
    stage1 = _report_section(report, "## Ours - Finding vs No finding from the stage-1 answers")
    assert next(line for line in stage1.splitlines() if line.startswith("| Finding | strict |")).split(" | ")[3] == "0.00"

    # A stage-1-only run has no Table 1 numbers: it says where they come from instead of showing stage 1's.
    only_stage1 = render_report(score_records(grounding, bootstrap=0, text_metrics=False)[0])
    table1 = _report_section(only_stage1, "## Table 1")
    assert "| Finding |" not in table1 and "stage-2 `[vqa]` answers" in table1
