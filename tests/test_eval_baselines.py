"""Trivial baselines: fitted on hand-made training rows, rendered as the model's answers, scored by the same code."""

from __future__ import annotations

import json

import pytest

import eval as eval_cli
from litegpt_eval.baselines import (
    baseline_answer,
    baseline_existence_score,
    build_baseline_records,
    fit_training_statistics,
    headline_table,
    score_baselines,
)
from litegpt_eval.records import PredictionsError
from litegpt_eval.scoring import score_records
from processing_litegpt import LOCAL_PREFIX, format_diagnosis_answer, format_grounding_answer


def train_row(local, boxes, width, height, global_labels):
    return {"image_id": f"tr{len(local)}{width}{global_labels}", "width": width, "height": height,
            "local_labels": local, "box_labels": [b[0] for b in boxes], "boxes": [list(b[1]) for b in boxes],
            "global_labels": global_labels, "no_finding": global_labels == ["No finding"]}  # fmt: skip


TRAIN = [
    train_row(["Cardiomegaly"], [("Cardiomegaly", (300, 400, 700, 600))], 1000, 1000, ["Other diseases"]),
    train_row(
        ["Aortic enlargement", "Cardiomegaly"],
        [("Aortic enlargement", (500, 200, 700, 400)), ("Cardiomegaly", (1000, 800, 1800, 1000))],
        2000,
        1000,
        ["COPD", "Other diseases"],
    ),
    train_row([], [], 1000, 1000, ["No finding"]),
    train_row([], [], 800, 800, ["No finding"]),
    train_row(["Pleural effusion"], [("Pleural effusion", (100, 600, 300, 900))], 1000, 1000, ["Pneumonia"]),
]


def test_training_statistics_by_hand():
    stats = fit_training_statistics(TRAIN)
    assert stats.n_images == 5 and stats.local_counts == {"Aortic enlargement": 1, "Cardiomegaly": 2, "Pleural effusion": 1}
    # labels per image 1, 2, 0, 0, 1 -> median 1 -> k = 1; global diseases 1, 2, 0, 0, 1 -> k = 1
    assert (stats.median_local, stats.k_local, stats.most_frequent_local) == (1.0, 1, ["Cardiomegaly"])
    assert (stats.k_global, stats.most_frequent_global) == (1, ["Other diseases"])
    # Cardiomegaly: (0.3, 0.4, 0.7, 0.6) and (1000/2000, 800/1000, 1800/2000, 1000/1000) -> mean (0.4, 0.6, 0.8, 0.8)
    assert stats.mean_boxes["Cardiomegaly"] == pytest.approx((0.4, 0.6, 0.8, 0.8))
    assert stats.mean_boxes["Aortic enlargement"] == pytest.approx((0.25, 0.2, 0.35, 0.4))
    assert "Edema" not in stats.mean_boxes and stats.mean_box("Edema") == stats.all_boxes_mean
    # median 0 -> the single most frequent label; median 2 -> the two most frequent (ties: canonical order)
    mostly_normal = fit_training_statistics(TRAIN[2:4] + TRAIN[:1])
    assert (mostly_normal.k_local, mostly_normal.most_frequent_local) == (1, ["Cardiomegaly"])
    busy = fit_training_statistics([TRAIN[1], TRAIN[1], TRAIN[4]])
    assert busy.k_local == 2 and busy.most_frequent_local == ["Aortic enlargement", "Cardiomegaly"]


def test_round_half_up_median_and_existence_majority():
    rows = [train_row(["Edema", "ILD"], [], 10, 10, ["COPD"]), train_row(["Edema"], [], 10, 10, ["COPD"])]
    assert fit_training_statistics(rows).k_local == 2  # median 1.5 -> 2
    ex = fit_training_statistics([{"entity": "effusion", "label": 1}, {"entity": "effusion", "label": 1},
                                  {"entity": "effusion", "label": 0}, {"entity": "opacity", "label": 0}])  # fmt: skip
    record = {"task": "existence", "reference": {"entity": "effusion", "label": 0}}
    assert baseline_answer("most_frequent", record, ex) == "Yes" and baseline_answer("no_finding", record, ex) == "No"
    assert baseline_answer("oracle_labels_mean_box", record, ex) is None
    # constant confidences per entity: the training prevalence (2 of 3), 0 for no_finding
    assert baseline_existence_score("most_frequent", record, ex) == pytest.approx(2 / 3)
    assert baseline_existence_score("no_finding", record, ex) == 0.0
    records, _ = build_baseline_records("most_frequent", [{"id": "a:effusion", "task": "existence", **record},
                                                          {"id": "b:effusion", "task": "existence", "reference":
                                                           {"entity": "effusion", "label": 1}}], ex)
    metrics, _ = score_records(records, bootstrap=0)
    assert metrics["tasks"]["existence"]["entities"]["effusion"]["auc"] == 0.5  # a constant score ranks nothing


def test_reference(rid, width, height, boxes, global_labels):
    local = list(dict.fromkeys(b[0] for b in boxes))
    return {"width": width, "height": height, "local_labels": local, "box_labels": [b[0] for b in boxes],
            "boxes": [list(b[1]) for b in boxes], "no_finding": not boxes, "global_labels": global_labels}  # fmt: skip


test_reference.__test__ = False  # a helper, not a test

TEST_IMAGES = {
    "t1": test_reference("t1", 500, 400, [("Cardiomegaly", (200, 240, 400, 320))], ["Other diseases"]),  # = the mean box
    "t2": test_reference("t2", 1000, 1000, [], ["No finding"]),
    "t3": test_reference("t3", 1000, 1000, [("Aortic enlargement", (0, 0, 100, 100))], ["COPD"]),
}
TEST = [{"id": rid, "task": task, "reference": ref} for task in ("grounding", "diagnosis") for rid, ref in TEST_IMAGES.items()]


def test_answers_are_the_models_answer_format():
    stats = fit_training_statistics(TRAIN)
    g1 = TEST[0]
    assert baseline_answer("no_finding", g1, stats) == f"{LOCAL_PREFIX} No finding."
    # the mean box (0.4, 0.6, 0.8, 0.8) on the grid of any image size
    assert baseline_answer("most_frequent", g1, stats) == f"{LOCAL_PREFIX} <p>Cardiomegaly</p> {{<40><60><80><80>}}."
    assert baseline_answer("oracle_labels_mean_box", TEST[2], stats) == f"{LOCAL_PREFIX} <p>Aortic enlargement</p> {{<25><20><35><40>}}."
    assert baseline_answer("oracle_labels_mean_box", TEST[1], stats) == f"{LOCAL_PREFIX} No finding."
    assert baseline_answer("most_frequent", TEST[3], stats) == format_diagnosis_answer(["Other diseases"])
    assert baseline_answer("no_finding", TEST[4], stats) == format_diagnosis_answer(["No finding"])


def test_baselines_scored_by_hand(tmp_path):
    model = {"tasks": {"grounding": {"classification": {"strict": {"averages": {"micro": {"f1": 0.9}}}}}}}
    summary = score_baselines(TRAIN, TEST, tmp_path / "baselines", model_metrics=model, bootstrap=0, text_metrics=False)
    m = {name: metrics["tasks"] for name, metrics in summary["metrics"].items()}
    # no_finding: nothing predicted; No finding: tp 1 (t2), fp 2 -> F1 2/4
    assert m["no_finding"]["grounding"]["classification"]["strict"]["averages"]["micro"]["f1"] == 0.0
    assert m["no_finding"]["grounding"]["finding"]["strict"]["No finding"]["f1"] == pytest.approx(0.5)
    assert m["no_finding"]["grounding"]["finding"]["strict"]["Finding"]["f1"] == 0.0
    assert m["no_finding"]["grounding"]["localization"]["acc_iou"]["paper"]["0.3"] == 0.0
    # most_frequent: Cardiomegaly everywhere: tp 1 (t1), fp 2 (t2, t3), fn 1 (t3 Aortic) -> 2/5
    mf = m["most_frequent"]["grounding"]
    assert mf["classification"]["strict"]["averages"]["micro"]["f1"] == pytest.approx(0.4)
    assert mf["finding"]["strict"]["Finding"]["f1"] == pytest.approx(0.8)  # tp 2, fp 1
    assert mf["localization"]["acc_iou"]["paper"]["0.3"] == pytest.approx(50.0)  # t1's box is hit, t3's not
    assert mf["localization"]["acc_iou"]["matched"]["0.3"]["overall"]["f1"] == pytest.approx(0.4)
    # oracle labels: classification perfect, boxes only where the mean box fits
    oracle = m["oracle_labels_mean_box"]["grounding"]
    assert oracle["classification"]["strict"]["averages"]["micro"]["f1"] == 1.0
    assert oracle["localization"]["acc_iou"]["paper"]["0.3"] == pytest.approx(50.0)
    assert oracle["localization"]["acc_iou"]["matched"]["0.3"]["overall"]["f1"] == pytest.approx(0.5)
    assert "diagnosis" not in m["oracle_labels_mean_box"] and summary["undefined"]["oracle_labels_mean_box"] == {"diagnosis": 3}
    # stage 2: no_finding tp 1 fp 2 fn 2 -> 1/3; most_frequent (Other diseases) tp 1 fp 2 fn 2 -> 1/3, Finding 0.8
    assert m["no_finding"]["diagnosis"]["classification"]["strict"]["averages"]["micro"]["f1"] == pytest.approx(1 / 3)
    assert m["most_frequent"]["diagnosis"]["classification"]["strict"]["averages"]["micro"]["f1"] == pytest.approx(1 / 3)
    assert m["most_frequent"]["diagnosis"]["finding"]["strict"]["Finding"]["f1"] == pytest.approx(0.8)
    # files and the comparison table (model first)
    written = json.loads((tmp_path / "baselines" / "most_frequent" / "metrics.json").read_text())
    assert written["baseline"]["name"] == "most_frequent" and written["tasks"]["grounding"]["n"] == 3
    assert len((tmp_path / "baselines" / "no_finding" / "predictions.jsonl").read_text().splitlines()) == 6
    row = next(r for r in summary["table"] if r["key"] == "tasks.grounding.classification.strict.averages.micro.f1")
    assert row["values"]["model"]["value"] == 0.9 and row["values"]["most_frequent"]["value"] == pytest.approx(0.4)
    assert summary["training"]["k_local"] == 1


def test_cli_baselines_beside_the_model(tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in TRAIN))
    preds = tmp_path / "predictions.jsonl"
    lines = []
    for record in TEST:
        ref = record["reference"]
        text = (format_grounding_answer(list(zip(ref["box_labels"], ref["boxes"])), ref["width"], ref["height"], no_finding=ref["no_finding"])
                if record["task"] == "grounding" else format_diagnosis_answer(ref["global_labels"]))  # fmt: skip
        lines.append(json.dumps({**record, "text": text}))
    preds.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    args = ["--predictions", str(preds), "--out", str(out), "--bootstrap", "20", "--no_figures", "--no_progress", "--no_coco_meteor",
            "--no_text_metrics", "--baselines", "--train_dataset", str(train)]  # fmt: skip
    assert eval_cli.main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    table = {row["key"]: row["values"] for row in metrics["baselines"]["table"]}
    micro = table["tasks.grounding.classification.strict.averages.micro.f1"]
    assert micro["model"]["value"] == 1.0 and micro["no_finding"]["value"] == 0.0 and micro["most_frequent"]["value"] == pytest.approx(0.4)
    assert "ci" in micro["model"]
    assert (out / "baselines" / "oracle_labels_mean_box" / "metrics.json").exists()
    assert "metrics" not in metrics["baselines"] and metrics["baselines"]["training"]["rows"] == 5
    # the perfect model minus most_frequent, with the paired interval of the difference
    diff = {row["key"]: row["differences"] for row in metrics["baselines"]["table"]}[
        "tasks.grounding.classification.strict.averages.micro.f1"]["most_frequent"]
    assert diff["difference"] == pytest.approx(0.6) and diff["low"] <= 0.6 <= diff["high"]
    assert diff["excludes_zero"] == (diff["low"] > 0)
    report = (out / "report.md").read_text()
    assert "Ours - Trivial baselines vs the model" in report and "oracle_labels_mean_box (reference)" in report
    micro_row = next(line for line in report.splitlines() if line.startswith("| stage 1: local labels micro-F1")
                     and "| +" in line)
    assert micro_row.split(" | ")[2].startswith("+60.00 [")  # the model - most_frequent column
    # no training rows given: a clear error, not a silent skip
    assert eval_cli.main(args[:-2]) == 2
    with pytest.raises(PredictionsError, match="no labels"):
        score_baselines([{"image_id": "x"}], TEST)


def test_paired_differences_are_taken_resample_by_resample():
    """A 'model' that answers exactly like most_frequent differs from it by 0 on every resample (a zero-width
    interval), although each system's own interval is wide; against no_finding the difference is the gap."""
    stats = fit_training_statistics(TRAIN)
    records = [{**r, "text": baseline_answer("most_frequent", r, stats)} for r in TEST]
    metrics, extras = score_records(records, bootstrap=200, text_metrics=False, coco_meteor=False)
    summary = score_baselines(TRAIN, TEST, bootstrap=200, text_metrics=False)
    bootstrap = {"model": {task: extra["bootstrap"] for task, extra in extras.items()}, **summary["bootstrap_values"]}
    table = {row["key"]: row for row in headline_table({"model": metrics, **summary["metrics"]}, bootstrap)}
    row = table["tasks.grounding.classification.strict.averages.micro.f1"]
    low, high = row["values"]["model"]["ci"]
    assert high - low > 0.3, "each system alone has a wide interval on 3 images"
    same = row["differences"]["most_frequent"]
    assert (same["difference"], same["low"], same["high"], same["excludes_zero"]) == (0.0, 0.0, 0.0, False)
    gap = row["differences"]["no_finding"]  # no_finding never names a local label: F1 0 on every resample
    assert gap["difference"] == pytest.approx(0.4) and (gap["low"], gap["high"]) == pytest.approx((low, high))
