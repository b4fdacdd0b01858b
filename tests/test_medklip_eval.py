"""MedKLIP evaluation: predictions in eval.py's record format, eval.py on a saved MedKLIP folder (validation
thresholds, baselines, heatmap), the study's table side by side with LiteGPT on the same split."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

import eval as eval_cli
from litegpt_eval.existence_table import pooled_auc, render_markdown, study_table, system_columns
from litegpt_eval.records import PredictionsError
from litegpt_eval.scoring import score_records
from medklip.checkpoint import build_medklip, save_medklip
from medklip.evaluation import attention_map, is_medklip_checkpoint, predict_existence


@pytest.fixture(scope="module")
def tiny():
    return build_medklip("tiny", seed=0)


def existence_rows(entries):
    rng = np.random.default_rng(0)
    images = {d: Image.fromarray((rng.random((40, 50)) * 255).astype(np.uint8)) for d, *_ in entries}
    return datasets.Dataset.from_list([{"dicom_id": d, "entity": e, "label": y, "width": 50, "height": 40,
                                        "images": [images[d]]} for d, e, y in entries])


def test_predictions_have_the_record_format_and_the_model_probabilities(tiny):
    model, _, processor = tiny
    data = existence_rows([("a", "Effusion", 1), ("a", "Opacity", 0), ("b", "Effusion", 0)])
    records = predict_existence(model, processor, data, batch_size=1)
    assert [r["id"] for r in records] == ["a:Effusion", "a:Opacity", "b:Effusion"]
    with torch.no_grad():
        pixels = processor(images=[data[0]["images"][0].convert("RGB")], return_tensors="pt")["pixel_values"]
        expected = torch.sigmoid(model(pixels).logits)[0]
    entities = list(model.config.entities)
    assert records[0]["scores"]["yes"] == pytest.approx(float(expected[entities.index("Effusion")]), rel=1e-5)
    assert records[1]["scores"]["yes"] == pytest.approx(float(expected[entities.index("Opacity")]), rel=1e-5)
    for r in records:
        assert r["task"] == "existence" and r["text"] == ("Yes" if r["scores"]["yes"] >= 0.5 else "No")
    assert records[0]["reference"] == {"entity": "Effusion", "label": 1, "width": 50.0, "height": 40.0}
    metrics, _ = score_records(records, bootstrap=0)  # the scorer LiteGPT's answers go through
    assert metrics["tasks"]["existence"]["entities"]["Effusion"]["auc"] in (0.0, 1.0)
    with pytest.raises(ValueError, match="does not predict"):
        predict_existence(model, processor, existence_rows([("a", "Edema", 1)]))


def test_attention_map_is_one_entity_distribution(tiny):
    model, _, processor = tiny
    probability, heatmap = attention_map(model, processor, Image.new("L", (70, 70), 128), "Cardiomegaly")
    assert 0 < probability < 1 and heatmap.shape == (2, 2) and heatmap.sum() == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="unknown entity"):
        attention_map(model, processor, Image.new("L", (70, 70)), "Edema")


# ============================================================================================== the table


def record(image, entity, label, yes, text=None):
    return {"id": f"{image}:{entity}", "image_id": image, "task": "existence", "text": text or ("Yes" if yes >= 0.5 else "No"),
            "scores": {"yes": yes}, "reference": {"entity": entity, "label": label}}


def test_pooled_auc_ranks_all_questions_together_and_rewards_prevalence():
    rng = np.random.default_rng(1)
    records = [record(f"i{k}", e, int(rng.random() < p), float(rng.random()))
               for k in range(60) for e, p in (("A", 0.8), ("B", 0.1))]
    got = pooled_auc(records, bootstrap=200, seed=0)
    y = [r["reference"]["label"] for r in records]
    assert got["value"] == pytest.approx(roc_auc_score(y, [r["scores"]["yes"] for r in records]))
    assert got["ci"][0] < got["value"] < got["ci"][1]
    # a constant per entity (its prevalence): every entity AUC is 0.5, the pooled AUC is far above
    prior = [record(r["image_id"], r["reference"]["entity"], r["reference"]["label"],
                    0.8 if r["reference"]["entity"] == "A" else 0.1) for r in records]
    metrics, _ = score_records(prior, bootstrap=0)
    assert metrics["tasks"]["existence"]["macro_auc"] == 0.5
    assert pooled_auc(prior, bootstrap=0)["value"] > 0.8


def test_table_uses_validation_thresholds_when_given_and_renders_every_row():
    test = [record(f"t{k}", e, int(k % 3 == 0), (k % 3 == 0) * 0.5 + 0.1 * (k % 2)) for k in range(12) for e in ("A", "B")]
    validation = [record(f"v{k}", e, int(k % 3 == 0), (k % 3 == 0) * 0.5 + 0.05) for k in range(9) for e in ("A", "B")]
    from litegpt_eval.thresholds import fit_thresholds

    with_thresholds, _ = score_records(test, bootstrap=50, thresholds=fit_thresholds(validation))
    without, _ = score_records(test, bootstrap=50)
    table = study_table({"X": (with_thresholds, test), "Y": (without, test)}, bootstrap=50)
    x, y = table["systems"]["X"], table["systems"]["Y"]
    assert x["accuracy_protocol"] == "validation threshold" and y["accuracy_protocol"] == "own answers"
    assert x["entities"]["A"]["accuracy"]["value"] == with_thresholds["tasks"]["existence"]["thresholded"]["entities"]["A"]["accuracy"]
    assert y["entities"]["A"]["accuracy"]["value"] == without["tasks"]["existence"]["entities"]["A"]["accuracy"]
    assert x["entities"]["A"]["auc"]["value"] == 1.0 and x["entities"]["A"]["auc"]["ci"] is not None
    assert x["overall"]["macro_auc"]["value"] == with_thresholds["tasks"]["existence"]["macro_auc"]
    text = render_markdown(table)
    for row in ("| A |", "| B |", "Overall (macro AUC)", "Overall (pooled AUC)", "X AUC", "Y accuracy"):
        assert row in text
    with pytest.raises(PredictionsError, match="no MIMIC existence"):
        system_columns({"tasks": {"report": {}}}, None)


# ============================================================================================== eval.py, side by side


@pytest.fixture(scope="module")
def synthetic_mimic(tmp_path_factory):
    from datasets_scripts import synthetic

    root = tmp_path_factory.mktemp("medklip_eval_data")
    synthetic.generate(root, n_train=0, n_test=0, mimic_studies=30, seed=2, image_size=48)
    return root


def test_eval_py_scores_medklip_and_litegpt_on_the_same_split(tiny, synthetic_mimic, tiny_checkpoint, tmp_path):
    model, tokenizer, processor = tiny
    folder = save_medklip(model, tokenizer, processor, tmp_path / "medklip")
    assert is_medklip_checkpoint(str(folder)) and not is_medklip_checkpoint(str(tiny_checkpoint))
    common = ["--dataset", "mimic_cxr:existence", "--data_dir", str(synthetic_mimic), "--split", "test",
              "--threshold_split", "validation", "--baselines", "--bootstrap", "30", "--no_progress",
              "--cache_dir", str(tmp_path / "cache"), "--dataset_settings", json.dumps({"max_side": 64})]
    assert eval_cli.main(["--model", str(folder), "--out", str(tmp_path / "m"), *common]) == 0
    assert eval_cli.main(["--model", str(tiny_checkpoint), "--out", str(tmp_path / "l"), "--max_new_tokens", "3",
                          *common]) == 0
    medklip = json.loads((tmp_path / "m" / "metrics.json").read_text())
    existence = medklip["tasks"]["existence"]
    assert existence["n"] > 0 and existence["parse"]["failures"] == 0
    assert "thresholded" in existence and existence["thresholded"]["source"]["split"] == "validation"
    assert json.loads((tmp_path / "m" / "generation_manifest.json").read_text())["split"] == "test"
    assert (tmp_path / "m" / "thresholds_validation" / "predictions.jsonl").is_file()
    assert list((tmp_path / "m" / "figures").glob("medklip_attention_*.png"))
    baseline = json.loads((tmp_path / "m" / "baselines" / "most_frequent" / "metrics.json").read_text())
    assert baseline["tasks"]["existence"]["macro_auc"] in (0.5, None)

    from litegpt_eval.existence_table import baseline_systems, load_eval_folder

    systems = {"MedKLIP": load_eval_folder(tmp_path / "m"), "LiteGPT": load_eval_folder(tmp_path / "l"),
               **baseline_systems(tmp_path / "m")}
    table = study_table(systems, bootstrap=30)
    assert set(table["systems"]) == {"MedKLIP", "LiteGPT", "majority (per entity)", "always No"}
    assert len(set(table["questions"].values())) == 1  # every system answered the same test questions
    medklip_ids = {r["id"] for r in systems["MedKLIP"][1]}
    assert medklip_ids == {r["id"] for r in systems["LiteGPT"][1]}
    assert "LiteGPT AUC" in render_markdown(table)


def test_eval_py_refuses_medklip_on_another_task(tiny, tmp_path):
    model, tokenizer, processor = tiny
    folder = save_medklip(model, tokenizer, processor, tmp_path / "medklip")
    status = eval_cli.main(["--model", str(folder), "--dataset", "vindr_cxr:grounding", "--data_dir", str(tmp_path),
                            "--out", str(tmp_path / "out")])
    assert status == 2
    assert not (tmp_path / "out" / "predictions.jsonl").exists()
    assert Path(folder, "config.json").is_file()
