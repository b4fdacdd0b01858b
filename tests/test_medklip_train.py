"""train_medklip.py: the Hugging Face Trainer on the builder's existence data, safetensors checkpoints, resume,
model card, eval after training, the Hub file set, errors before training, and the CPU configuration's result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import train_medklip
from medklip.knowledge import KnowledgeError
from medklip.training import upload_file_set

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mimic(tmp_path_factory):
    from datasets_scripts import synthetic

    root = tmp_path_factory.mktemp("medklip_train_data")
    synthetic.generate(root / "data", n_train=0, n_test=0, mimic_studies=30, seed=2, image_size=48)
    return root


def argv(mimic: Path, out: Path, *extra: str) -> list[str]:
    return ["--preset", "tiny", "--mimic_data_dir", str(mimic / "data"), "--mimic_settings", '{"max_side": 64}',
            "--dataset_cache_dir", str(mimic / "cache"), "--output_dir", str(out), "--per_device_train_batch_size", "4",
            "--learning_rate", "1e-3", "--use_cpu", "true", "--report_to", "none", "--logging_steps", "1",
            "--seed", "0", "--dataloader_num_workers", "0", "--report_max_length", "32", *extra]


def test_training_checkpoints_and_an_exact_resume(mimic, tmp_path):
    out = tmp_path / "run"
    steps = ["--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2", "--eval_after_training", "false"]
    train_medklip.main(argv(mimic, out, *steps))
    final = load_file(str(out / "model.safetensors"))
    for name in ("config.json", "configuration_medklip.py", "modeling_medklip.py", "preprocessor_config.json",
                 "README.md", "medklip_training.json", "training_log.csv"):
        assert (out / name).is_file(), name
    checkpoint = out / "checkpoint-2"
    assert (checkpoint / "model.safetensors").is_file() and (checkpoint / "modeling_medklip.py").is_file()
    assert not list(out.rglob("*.bin")) or all(p.name == "training_args.bin" for p in out.rglob("*.bin"))
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    logged = [entry for entry in state["log_history"] if "loss" in entry]
    assert len(logged) == 4 and all({"loss_cls", "loss_pos", "loss_sem"} <= set(entry) for entry in logged)
    record = json.loads((out / "medklip_training.json").read_text())
    assert record["data"]["grouping"]["train"]["images"] > 0
    assert record["data"]["sources"]["existence"]["skipped"].get("study_without_selected_view", 0) >= 1
    card = (out / "README.md").read_text()
    assert "Opacity" in card and "mimic_cxr:existence" in card

    # interrupted after step 2: resume from checkpoint-2 and arrive at the same weights
    for path in (out / "checkpoint-4", out / "model.safetensors"):
        if path.is_dir():
            import shutil

            shutil.rmtree(path)
        else:
            path.unlink()
    train_medklip.main(argv(mimic, out, *steps, "--resume_from_checkpoint", "latest"))
    resumed = load_file(str(out / "model.safetensors"))
    assert final.keys() == resumed.keys()
    for key in final:
        torch.testing.assert_close(resumed[key], final[key], msg=key)
    frozen = [k for k in final if k.startswith("text_model.")]
    built = __import__("medklip.checkpoint", fromlist=["build_medklip"]).build_medklip("tiny", seed=0)[0].state_dict()
    assert all(torch.equal(final[k], built[k]) for k in frozen)  # the text encoder never changed


def test_errors_before_training(mimic, tmp_path):
    with pytest.raises(ValueError, match="unknown preset"):
        train_medklip.main(argv(mimic, tmp_path / "a", "--preset", "huge"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train_medklip.main(argv(mimic, tmp_path / "b", "--mimic_data_dir", str(tmp_path / "nowhere")))
    knowledge = json.loads((ROOT / "medklip" / "knowledge.json").read_text())
    del knowledge["entities"]["Effusion"]
    (tmp_path / "k.json").write_text(json.dumps(knowledge))
    with pytest.raises(KnowledgeError, match="Effusion"):
        train_medklip.main(argv(mimic, tmp_path / "c", "--knowledge_file", str(tmp_path / "k.json")))
    assert not (tmp_path / "c").exists()  # nothing built, nothing trained
    with pytest.raises(FileNotFoundError, match=r"not a finished MedKLIP run: missing \['config.json'"):
        upload_file_set(tmp_path)


@pytest.mark.slow
def test_train_eval_card_and_hub_push(mimic, tmp_path, monkeypatch):
    """One epoch, then eval.py (validation thresholds, baselines, heatmap) and the study's table in the card; the push
    uploads exactly the file set, to a private repo (a recording stand-in for the Hub API)."""
    calls = {}

    class FakeApi:
        def __init__(self, token=None):
            calls["token"] = token

        def create_repo(self, repo_id, private=None, exist_ok=False, repo_type=None):
            calls["create"] = (repo_id, private)

        def upload_folder(self, repo_id, folder_path, allow_patterns, revision=None, commit_message=None):
            calls["upload"] = (repo_id, folder_path, sorted(allow_patterns))

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    out = tmp_path / "run"
    train_medklip.main(argv(mimic, out, "--num_train_epochs", "1", "--save_strategy", "no", "--eval_bootstrap", "30",
                            "--push_to_hub", "true", "--hub_model_id", "me/medklip-tiny"))
    table = (out / "eval" / "existence_table.md").read_text()
    assert "MedKLIP AUC" in table and "majority (per entity) AUC" in table
    assert table.strip() in (out / "README.md").read_text()
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert metrics["tasks"]["existence"]["thresholded"]["source"]["split"] == "validation"
    assert calls["create"] == ("me/medklip-tiny", True)
    assert calls["upload"][2] == upload_file_set(out) and "eval/existence_table.md" in calls["upload"][2]
    assert not any(name.startswith("checkpoint") for name in calls["upload"][2])


@pytest.mark.slow
def test_accelerate_launch_runs_the_script(mimic, tmp_path):
    accelerate = Path(sys.executable).with_name("accelerate")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [str(accelerate), "launch", "--num_processes", "1", "--num_cpu_threads_per_process", "1",
         str(ROOT / "train_medklip.py"), *argv(mimic, tmp_path / "run", "--max_steps", "2", "--save_strategy", "no",
                                               "--eval_after_training", "false")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "run" / "model.safetensors").is_file()


@pytest.mark.slow
def test_cpu_configuration_beats_the_majority_baseline(tmp_path):
    """configs/medklip-cpu.yaml end to end (synthetic sample, small encoders): macro AUC with its whole 95 % interval
    above 0.5, the majority baseline's value (a constant answer per entity)."""
    config = yaml.safe_load((ROOT / "configs" / "medklip-cpu.yaml").read_text())
    out = tmp_path / "model"
    train_medklip.main(["--config", str(ROOT / "configs" / "medklip-cpu.yaml"), "--mimic_data_dir", str(tmp_path / "data"),
                        "--output_dir", str(out), "--dataset_cache_dir", str(tmp_path / "cache"),
                        "--save_strategy", "no"])
    table = json.loads((out / "eval" / "existence_table.json").read_text())
    ours = table["systems"]["MedKLIP"]["overall"]["macro_auc"]
    majority = table["systems"]["majority (per entity)"]["overall"]["macro_auc"]
    assert majority["value"] == 0.5
    assert ours["ci"][0] > 0.5, (ours, config)
