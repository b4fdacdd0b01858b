"""Generation on the tiny saved checkpoint: batched == one at a time, resume after an interruption, the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from litegpt_eval.confidence import continuation_logprobs, diagnosis_slots, image_conditioning
from litegpt_eval.generation import DecodingSettings, load_model_and_processor, rows_to_items, run_generation
from litegpt_eval.records import PredictionsError
from processing_litegpt import (
    completion_messages,
    format_diagnosis_answer,
    format_grounding_answer,
    prompt_messages,
)

SHORT = {"grounding": 12, "diagnosis": 8, "existence": 3, "report": 12}


def vindr_rows(n: int, task: str):
    rows = []
    for i in range(n):
        rng = np.random.RandomState(i)
        image = Image.fromarray((rng.rand(48 + 8 * i, 64) * 255).astype("uint8"))
        boxes = [("Cardiomegaly", (100.0, 200.0, 500.0, 600.0))] if i % 2 else []
        global_labels = ["Other diseases"] if boxes else ["No finding"]
        answer = format_grounding_answer(boxes, 1000, 800, no_finding=not boxes) if task == "grounding" else format_diagnosis_answer(global_labels)
        rows.append({
            "image_id": f"img{i}", "images": [image], "width": 1000, "height": 800, "no_finding": not boxes,
            "local_labels": [b[0] for b in boxes], "global_labels": global_labels, "box_labels": [b[0] for b in boxes],
            "boxes": [list(b[1]) for b in boxes], "prompt": prompt_messages(task), "completion": completion_messages(answer),
        })  # fmt: skip
    return rows


@pytest.fixture(scope="module")
def model_and_processor(tiny_checkpoint):
    return load_model_and_processor(str(tiny_checkpoint))


def _texts(path):
    return {(r["task"], r["id"]): r["text"] for r in map(json.loads, path.read_text().splitlines())}


def test_batched_greedy_equals_one_at_a_time(model_and_processor, tmp_path):
    model, processor = model_and_processor
    items = rows_to_items(vindr_rows(5, "grounding")) + rows_to_items(vindr_rows(3, "diagnosis"))
    decoding = DecodingSettings(max_new_tokens=SHORT)
    run_generation(model, processor, items, tmp_path / "b4", decoding, batch_size=4, label_scores=False, progress=False)
    run_generation(model, processor, items, tmp_path / "b1", decoding, batch_size=1, label_scores=False, progress=False)
    batched, single = _texts(tmp_path / "b4" / "predictions.jsonl"), _texts(tmp_path / "b1" / "predictions.jsonl")
    assert len(batched) == 8 and batched == single


def test_resume_after_interruption_skips_done_items(model_and_processor, tmp_path):
    model, processor = model_and_processor
    items = rows_to_items(vindr_rows(6, "grounding"))
    decoding = DecodingSettings(max_new_tokens=SHORT)
    calls = []

    def interrupt(records):
        calls.append(len(records))
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_generation(model, processor, items, tmp_path, decoding, batch_size=2, progress=False, on_batch=interrupt,
                       label_scores=False)
    path = tmp_path / "predictions.jsonl"
    first = path.read_text().splitlines()
    assert len(first) == 2
    with open(path, "a") as handle:  # a write cut in the middle of a line
        handle.write('{"id": "img2", "task": "grounding", "te')
    summary = run_generation(model, processor, items, tmp_path, decoding, batch_size=2, progress=False, label_scores=False)
    assert summary["skipped_done"] == 2 and summary["written"] == 4
    lines = path.read_text().splitlines()
    assert lines[:2] == first
    records = [json.loads(line) for line in lines]
    assert [r["id"] for r in records] == [f"img{i}" for i in range(6)]
    # a third run has nothing left to do; different decoding settings are refused
    assert run_generation(model, processor, items, tmp_path, decoding, batch_size=2, progress=False)["written"] == 0
    with pytest.raises(PredictionsError, match="decoding"):
        run_generation(model, processor, items, tmp_path, DecodingSettings(max_new_tokens={**SHORT, "grounding": 5}), progress=False)


def test_records_hold_confidences_and_references(model_and_processor, tmp_path):
    model, processor = model_and_processor
    rows = vindr_rows(2, "diagnosis")
    existence = [{"image_id": "m1", "images": [rows[0]["images"][0]], "width": 64, "height": 48, "entity": "effusion",
                  "label": 1, "prompt": prompt_messages("existence", entity="effusion"), "completion": completion_messages("Yes")}]  # fmt: skip
    items = rows_to_items(rows) + rows_to_items(existence)
    run_generation(model, processor, items, tmp_path, DecodingSettings(max_new_tokens=SHORT), batch_size=4, progress=False)
    records = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    diag = [r for r in records if r["task"] == "diagnosis"]
    assert set(diag[0]["scores"]["labels"]) == {"COPD", "Lung tumor", "Pneumonia", "Tuberculosis", "Other diseases", "No finding"}
    assert all(0.0 <= p <= 1.0 for p in diag[0]["scores"]["labels"].values())
    assert diag[0]["reference"]["global_labels"] == ["No finding"] and diag[0]["decoding"]["do_sample"] is False
    (ex,) = [r for r in records if r["task"] == "existence"]
    assert ex["id"] == "m1:effusion" and 0.0 < ex["scores"]["yes"] < 1.0 and ex["reference"]["label"] == 1
    assert len(diag[0]["tokens"]["ids"]) == len(diag[0]["tokens"]["logprobs"])


def test_teacher_forcing_with_cached_projector_inputs_equals_pixels(model_and_processor):
    import torch

    model, processor = model_and_processor
    image = vindr_rows(1, "diagnosis")[0]["images"][0]
    inputs = processor(images=[[image]], text=[processor.task_prompt("diagnosis")], return_tensors="pt")
    prompt_ids = inputs["input_ids"][0].tolist()
    tok = processor.tokenizer
    pairs = [([], tok(" Global", add_special_tokens=False)["input_ids"]), (tok(" Glo", add_special_tokens=False)["input_ids"], tok("bal", add_special_tokens=False)["input_ids"])]
    cached = continuation_logprobs(model, prompt_ids, image_conditioning(model, inputs["pixel_values"]), pairs)
    direct = continuation_logprobs(model, prompt_ids, {"pixel_values": inputs["pixel_values"]}, pairs)
    assert cached == pytest.approx(direct, abs=1e-5)
    # the same continuation scored in one piece or in two pieces gives the same total
    with torch.no_grad():
        logits = model(**{k: v for k, v in inputs.items()}).logits[0, -1]
    first = tok(" ", add_special_tokens=False)["input_ids"][0]
    assert math.isfinite(cached[0]) and float(torch.log_softmax(logits, -1)[first]) >= cached[0] - 1e-5


def test_diagnosis_slots():
    answer = "Global diseases of this chest radiograph are Lung tumor, Pneumonia and Tuberculosis."
    contexts = [c for c, _ in diagnosis_slots(answer)]
    assert contexts == [
        "Global diseases of this chest radiograph are",
        "Global diseases of this chest radiograph are Lung tumor,",
        "Global diseases of this chest radiograph are Lung tumor, Pneumonia and",
        "Global diseases of this chest radiograph are Lung tumor, Pneumonia and Tuberculosis,",
    ]
    assert [c for c, _ in diagnosis_slots("garbage")] == ["Global diseases of this chest radiograph are"]


def test_cli_generate_then_score_only(tiny_checkpoint, tmp_path):
    import datasets

    import eval as eval_cli

    rows = vindr_rows(4, "grounding")
    data = datasets.Dataset.from_list(rows, features=None)
    data.save_to_disk(str(tmp_path / "data"))
    out = tmp_path / "results"
    args = ["--model", str(tiny_checkpoint), "--dataset", str(tmp_path / "data"), "--out", str(out), "--batch_size", "4",
            "--max_new_tokens", "10", "--bootstrap", "20", "--no_coco_meteor", "--no_progress", "--n_overlays", "2"]  # fmt: skip
    assert eval_cli.main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    grounding = metrics["tasks"]["grounding"]
    assert grounding["n"] == 4 and grounding["parse"]["failures"] + 0 <= 4
    assert set(grounding["localization"]["acc_iou"]["paper"]) >= {"0.3", "0.4", "0.5", "gt_boxes"}
    assert grounding["localization"]["acc_iou"]["paper"]["gt_boxes"] == 2
    assert "tasks.grounding.localization.acc_iou.paper.0.4" in metrics["confidence_intervals"]
    assert metrics["manifest"]["decoding"]["predictions.jsonl"]["do_sample"] is False
    report = (out / "report.md").read_text()
    assert "Table 1" in report and "Table 3" in report and "Table 8" in report
    assert (out / "figures" / "pr_local_detection_iou0.4.png").exists() or grounding["localization"]["map"]
    assert len(list((out / "figures" / "box_overlays").glob("*.png"))) == 2
    # score only, from the written predictions
    again = tmp_path / "rescored"
    assert eval_cli.main(["--predictions", str(out / "predictions.jsonl"), "--out", str(again), "--bootstrap", "0",
                          "--no_coco_meteor", "--no_figures", "--no_progress"]) == 0  # fmt: skip
    rescored = json.loads((again / "metrics.json").read_text())
    assert rescored["tasks"]["grounding"]["classification"] == metrics["tasks"]["grounding"]["classification"]


def test_cli_threshold_split_and_baselines_in_generation_mode(tiny_checkpoint, tmp_path):
    import datasets

    import eval as eval_cli

    rows = vindr_rows(6, "grounding")
    for k, row in enumerate(rows):
        row["image_id"] = f"img{k}"
    data = datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:2]), "validation": datasets.Dataset.from_list(rows[2:4]),
                                 "test": datasets.Dataset.from_list(rows[4:])})  # fmt: skip
    data.save_to_disk(str(tmp_path / "data"))
    out = tmp_path / "results"
    args = ["--model", str(tiny_checkpoint), "--dataset", str(tmp_path / "data"), "--split", "test", "--out", str(out),
            "--max_new_tokens", "6", "--bootstrap", "20", "--no_coco_meteor", "--no_text_metrics", "--no_progress",
            "--no_figures", "--threshold_split", "validation", "--baselines"]  # fmt: skip
    assert eval_cli.main(args) == 0
    validation = [json.loads(line) for line in (out / "thresholds_validation" / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in validation] == ["img2", "img3"] and all(len(r["scores"]["labels"]) == 22 for r in validation)
    assert json.loads((out / "thresholds_validation" / "generation_manifest.json").read_text())["split"] == "validation"
    metrics = json.loads((out / "metrics.json").read_text())
    grounding = metrics["tasks"]["grounding"]
    assert grounding["n"] == 2 and grounding["thresholded"]["source"]["split"] == "validation"
    assert set(grounding["thresholded"]["thresholds"]) == set(grounding["auc"]["labels"])
    assert grounding["thresholded"]["thresholds"]["Cardiomegaly"] is not None  # img3 (validation) has Cardiomegaly
    assert metrics["baselines"]["training"]["split"] == "train" and metrics["baselines"]["training"]["rows"] == 2
    assert (out / "baselines" / "most_frequent" / "metrics.json").exists()
    with pytest.raises(SystemExit):  # never tune on the scored split
        eval_cli.main(args[:-3] + ["--threshold_split", "test"])
