"""`train_sft.py` end to end on the tiny model and the synthetic VinDr-CXR sample (offline, CPU).

One reference run (both stages, a short schedule with a high learning rate so that the tiny model really learns)
is shared by the loss, frozen-weights, label-mask, push and resume tests; the resume and projector-input cache
tests compare fresh runs against it. `LiteGPTSFTTrainer` is only ever subclassed here, from the test side, to observe a
run (model state before/after `train()`, the collator it used) or to interrupt one; `train_sft.py` itself runs
unchanged. The 2-process DDP test goes through `accelerate launch` with `configs/accelerate/cpu_ddp.yaml`.

Over 600 lines, on purpose: these end-to-end tests of one script share one reference run that trains for real and the
helpers that run, interrupt and inspect training; in one file the run stays a module fixture, trained once and freed
when the file is done (split, it would be trained once per file or held for the whole session).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import TrainerCallback

import train_sft
from litegpt_eval import EvalArguments
from litegpt_train import stages as stages_module
from litegpt_train.data import load_stage_data
from litegpt_train.feature_cache import CachedProjectorInputsCollator, ProjectorInputCache, pixel_digest
from litegpt_train.hub import push_stage, remote_code_files, staged_upload_folder, upload_file_set
from litegpt_train.stages import plan_stages
from litegpt_train.trainer import LiteGPTSFTTrainer

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("grounding", "diagnosis")
STEPS = 6  # 20 training rows at batch 4: 5 steps per epoch, so 6 steps cross an epoch boundary
BATCH = 4
# The tiny LM (hidden 32, random init) starts at ln(99) ~ 4.6 nats/token; at lr 2e-2 six steps of LoRA +
# projector cut the loss of a fixed batch (dropout off, deterministic) by 0.12 (grounding) and 0.04 (diagnosis,
# which starts from the grounding adapter) with seed 42, without diverging.
LEARNING_RATE = 2e-2
MIN_FIXED_BATCH_DECREASE = 0.02
HUB_BASE = "litegpt-tests/tiny-base"

# Every file a finished stage folder uploads (litegpt_train.hub.upload_file_set): adapter, processor with its
# remote code, card, training record and log; never training_args.bin (a pickle) or checkpoint-*/.
EXPECTED_UPLOAD = sorted([
    "README.md",
    "adapter_config.json",
    "adapter_model.safetensors",
    "chat_template.jinja",
    "litegpt_training.json",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "training_log.csv",
    # the processor's remote code: processing_litegpt.py and the siblings it imports relatively
    *remote_code_files(Path(__file__).resolve().parent.parent, ["processing_litegpt.py"]),
])


# ============================================================================================ fixtures
def build_tiny_base(out_dir: Path, **preset_overrides) -> Path:
    """A saved tiny LiteGPT base (weights, remote code, processor), as `scripts.litegpt_checkpoint` writes them."""
    from tiny_tokenizer import build_tiny_tokenizer

    from configuration_litegpt import LiteGPTConfig
    from litegpt_train.base import assemble_litegpt, save_litegpt

    config = LiteGPTConfig.from_preset("tiny", **preset_overrides)
    model, processor = assemble_litegpt(config, build_tiny_tokenizer(), seed=0)
    return save_litegpt(model, processor, out_dir)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    return build_tiny_base(tmp_path_factory.mktemp("sft_base"))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    from datasets_scripts.synthetic import generate

    root = tmp_path_factory.mktemp("sft_data")
    generate(root, n_train=24, n_test=4, mimic_studies=0, seed=0, image_size=64)
    return root / "vindr-cxr" / "1.0.0"


@pytest.fixture(scope="module")
def dataset_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sft_datasets_cache")


@pytest.fixture(scope="module")
def make_config(base_dir, data_dir, dataset_cache):
    """`make_config(path, output_dir, **overrides)`: the YAML of a short tiny-model run."""

    def make(path: Path, output_dir: Path, **overrides: Any) -> Path:
        config = {
            "model_name_or_path": str(base_dir),
            "data_dir": str(data_dir),
            "dataset_cache_dir": str(dataset_cache),
            "dataset_settings": {"max_side": 64},
            "output_dir": str(output_dir),
            "max_length": None,
            "per_device_train_batch_size": BATCH,
            "max_steps": STEPS,
            "learning_rate": LEARNING_RATE,
            "logging_steps": 1,
            "save_steps": 2,
            "report_to": "none",
            "bf16": False,
            "gradient_checkpointing": False,
            "lora_r": 4,
            "lora_alpha": 8,
            "lora_dropout": 0.1,  # > 0: the dropout RNG must be restored on resume
            "use_cpu": True,
            "seed": 42,
            "disable_tqdm": True,
        }
        config.update(overrides)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    return make


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def recording_trainer(records: list[dict[str, Any]], extra_callbacks: tuple = ()):
    """An `SFTTrainer` that records, per stage, the trainer and the model state before and after `train()`."""

    class RecordingSFTTrainer(LiteGPTSFTTrainer):
        def __init__(self, *args, callbacks=None, **kwargs):
            super().__init__(*args, callbacks=[*(callbacks or []), *extra_callbacks], **kwargs)

        def train(self, *args, **kwargs):
            record = {"stage": Path(self.args.output_dir).name, "trainer": self, "initial": snapshot(self.model)}
            records.append(record)
            result = super().train(*args, **kwargs)
            record["final"] = snapshot(self.model)
            return result

    return RecordingSFTTrainer


def run_sft(config: Path, *argv: str, trainer_cls=None) -> list[Path]:
    """`train_sft.main` in this process, optionally with a test-side `SFTTrainer` subclass."""
    with pytest.MonkeyPatch.context() as patch:
        if trainer_cls is not None:
            patch.setattr(stages_module, "LiteGPTSFTTrainer", trainer_cls)
        return train_sft.main(["--config", str(config), *argv])


def logged_losses(stage_dir: Path) -> dict[int, float]:
    """step -> loss from training_log.csv; a resumed run appends, so the last row of a step wins."""
    losses = {}
    with (stage_dir / "training_log.csv").open() as handle:
        for row in csv.DictReader(handle):
            if row["loss"]:
                losses[int(row["step"])] = float(row["loss"])
    return losses


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, make_config):
    """Both stages, STEPS steps each, uninterrupted; returns output dir, config and per-stage records."""
    tmp = tmp_path_factory.mktemp("sft_reference")
    config = make_config(tmp / "config.yaml", tmp / "out")
    records: list[dict[str, Any]] = []
    outputs = run_sft(config, trainer_cls=recording_trainer(records))
    assert [p.name for p in outputs] == list(STAGES)
    assert [r["stage"] for r in records] == list(STAGES)
    return {"out": tmp / "out", "config": config, "records": {r["stage"]: r for r in records}}


def fixed_batch(record: dict[str, Any], n: int = BATCH) -> dict[str, torch.Tensor]:
    """The first `n` training rows of a stage, collated by the collator its trainer used."""
    trainer = record["trainer"]
    return trainer.data_collator([trainer.train_dataset[i] for i in range(n)])


@torch.no_grad()
def loss_with_state(model: torch.nn.Module, state: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> float:
    current = snapshot(model)
    model.load_state_dict(state)
    model.eval()
    try:
        return model(**batch).loss.item()
    finally:
        model.load_state_dict(current)


def is_lora(name: str) -> bool:
    return ".lora_" in name


def is_projector_copy(name: str) -> bool:
    return "multi_modal_projector.modules_to_save." in name


def adapter_key(peft_name: str) -> str:
    """In-memory PEFT key of a trained tensor -> its key in adapter_model.safetensors (no adapter name)."""
    return peft_name.replace(".modules_to_save.default.", ".").replace(".default.", ".")


def base_name(peft_name: str) -> str:
    """PEFT state-dict key of a frozen tensor -> its key in the base checkpoint."""
    name = peft_name.removeprefix("base_model.model.")
    return name.replace(".base_layer.", ".").replace(".original_module.", ".")


def load_peft(base_dir: Path, adapter_dir: Path):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    base = AutoModelForImageTextToText.from_pretrained(base_dir, trust_remote_code=True)
    return PeftModel.from_pretrained(base, adapter_dir).eval()


# ============================================================================================ 1. learning
@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_reduces_the_loss(reference_run, base_dir, stage):
    record = reference_run["records"][stage]
    losses = logged_losses(reference_run["out"] / stage)
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert losses[STEPS] < losses[1], f"{stage}: logged loss went {losses[1]:.4f} -> {losses[STEPS]:.4f}"

    # The same fixed batch before (the state train() started from) and after training, dropout off.
    model, batch = record["trainer"].model, fixed_batch(record)
    before = loss_with_state(model, record["initial"], batch)
    after = loss_with_state(model, record["final"], batch)
    assert after < before - MIN_FIXED_BATCH_DECREASE, f"{stage}: fixed-batch loss {before:.4f} -> {after:.4f}"

    # The saved adapter is what was trained: reloaded on the base, it gives the trained loss.
    reloaded = load_peft(base_dir, reference_run["out"] / stage)
    with torch.no_grad():
        assert reloaded(**batch).loss.item() == pytest.approx(after, abs=1e-6)


def test_diagnosis_starts_from_the_grounding_adapter(reference_run):
    grounding, diagnosis = reference_run["records"]["grounding"], reference_run["records"]["diagnosis"]
    trainable = [k for k in grounding["final"] if is_lora(k) or is_projector_copy(k)]
    assert trainable
    for key in trainable:
        assert torch.equal(diagnosis["initial"][key], grounding["final"][key]), key
    record = json.loads((reference_run["out"] / "diagnosis" / "litegpt_training.json").read_text())
    assert record["completed"] and record["init_from"] == str(reference_run["out"] / "grounding")
    (source,) = record["data"]
    assert source["dataset"] == "vindr_cxr" and source["config"] == "diagnosis"
    assert isinstance(source["settings"], dict) and source["settings"]["max_side"] == 64, "the builder's settings, as data"


# ============================================================================================ 2. what trains
@pytest.mark.parametrize("stage", STAGES)
def test_only_lora_and_projector_change(reference_run, base_dir, stage):
    record = reference_run["records"][stage]
    base = load_file(str(base_dir / "model.safetensors"))
    final, initial = record["final"], record["initial"]

    trainable_now = {n for n, p in record["trainer"].model.named_parameters() if p.requires_grad}
    assert trainable_now and all(is_lora(n) or is_projector_copy(n) for n in trainable_now), sorted(trainable_now)[:5]

    frozen = {k: v for k, v in final.items() if not is_lora(k) and not is_projector_copy(k)}
    mapped = {base_name(k): k for k in frozen}
    assert len(mapped) == len(frozen)
    assert set(mapped) == set(base), "every tensor of the base checkpoint is compared, and nothing else"
    for prefix in ("model.biomed_vision_tower.", "model.pubmed_vision_tower.", "model.language_model.embed_tokens.",
                   "model.language_model.layers.", "lm_head.", "model.multi_modal_projector."):
        assert any(name.startswith(prefix) for name in mapped), prefix
    changed_frozen = [name for name, key in mapped.items()
                      if final[key].dtype != base[name].dtype or not torch.equal(final[key], base[name])]
    assert not changed_frozen, f"frozen weights changed: {changed_frozen[:5]}"

    lora = [k for k in final if is_lora(k)]
    projector = [k for k in final if is_projector_copy(k)]
    assert len(lora) == 8 and len(projector) == 4  # q/v x A/B x 2 layers; projector 2 x (weight, bias)
    unchanged = [k for k in lora + projector if torch.equal(final[k], initial[k])]
    assert not unchanged, f"trainable tensors that did not train: {unchanged}"
    for key in projector:  # the trained copy left the base projector
        assert not torch.equal(final[key], base[key.removeprefix("base_model.model.").replace(".modules_to_save.default.", ".")])

    # The saved adapter holds exactly the trained tensors, and loading it back on the base restores the whole model.
    saved = load_file(str(reference_run["out"] / stage / "adapter_model.safetensors"))
    assert set(saved) == {adapter_key(k) for k in lora + projector}
    reloaded = snapshot(load_peft(base_dir, reference_run["out"] / stage))
    assert set(reloaded) == set(final)
    different = [k for k in final if not torch.equal(reloaded[k], final[k])]
    assert not different, different[:5]


# ============================================================================================ 3. label masks
def expected_trained_ids(tokenizer, answer: str) -> list[int]:
    """` {answer}</s>` with the char-level tiny tokenizer: one id per character, then EOS."""
    return [tokenizer.convert_tokens_to_ids(ch) for ch in " " + answer] + [tokenizer.eos_token_id]


def row_text(message: dict[str, Any]) -> str:
    content = message["content"]
    if isinstance(content, str):
        return content
    return "".join(block.get("text") or "" for block in content if block.get("type") == "text")


@pytest.mark.parametrize("stage", STAGES)
def test_labels_mask_prompt_and_image_tokens(reference_run, stage):
    record = reference_run["records"][stage]
    trainer = record["trainer"]
    processor = trainer.processing_class
    tokenizer = processor.tokenizer
    image_token_id = processor.image_token_id
    n_image_tokens = trainer.model.config.num_image_tokens
    rows = [trainer.train_dataset[i] for i in range(len(trainer.train_dataset))][:8]
    assert len(rows) == 8
    assert all(row["prompt"][0]["role"] == "user" and row["completion"][0]["role"] == "assistant" for row in rows)

    batch = trainer.data_collator([dict(row) for row in rows])
    input_ids, labels, attention = batch["input_ids"], batch["labels"], batch["attention_mask"]
    assert labels.shape == input_ids.shape == attention.shape
    for i, row in enumerate(rows):
        answer = row_text(row["completion"][0])
        assert answer.startswith(("Local diseases", "Global diseases")), answer
        trained = (labels[i] != -100).nonzero().flatten()
        expected = expected_trained_ids(tokenizer, answer)
        # Exactly the answer and EOS train, as one contiguous span that ends the (unpadded) sequence.
        assert labels[i][trained].tolist() == expected
        assert input_ids[i][trained].tolist() == expected
        assert trained.tolist() == list(range(trained[0].item(), trained[0].item() + len(expected)))
        length = int(attention[i].sum())
        assert attention[i][:length].all() and not attention[i][length:].any()
        assert trained[-1].item() == length - 1
        # Everything before it is the prompt: one BOS, the image placeholders, task token and instruction.
        prompt_ids = input_ids[i][: trained[0]].tolist()
        assert prompt_ids.count(tokenizer.bos_token_id) == 1 and prompt_ids[0] == tokenizer.bos_token_id
        assert prompt_ids.count(image_token_id) == n_image_tokens
        assert (input_ids[i] == image_token_id).sum() == n_image_tokens
        prompt_text = tokenizer.decode([t for t in prompt_ids if t != image_token_id], skip_special_tokens=False)
        assert prompt_text == f"<s>[INST] <Img></Img> {row_text(row['prompt'][0])} [/INST]"
        assert processor.task_tokens[stage] in prompt_text
        # No prompt, image or padding position is trained.
        assert (labels[i][: trained[0]] == -100).all() and (labels[i][length:] == -100).all()
        assert (labels[i][input_ids[i] == image_token_id] == -100).all()

    # The projector-input collator masks identically; it only swaps pixels for cached encoder outputs.
    cache = ProjectorInputCache()
    cache.fill(trainer.model, processor, (row["images"] for row in rows), show_progress=False)
    cached = CachedProjectorInputsCollator(processor, cache, max_length=None, completion_only_loss=True)([dict(r) for r in rows])
    assert torch.equal(cached["labels"], labels) and torch.equal(cached["input_ids"], input_ids)
    assert "pixel_values" not in cached and cached["projector_inputs"].shape[0] == len(rows)
    assert cache.misses == 0 and cache.hits == len(rows)


# ============================================================================================ 4. resume
class SimulatedKill(RuntimeError):
    pass


class KillAfterSave(TrainerCallback):
    """Dies right after checkpoint `step` of `stage` is written, as a preempted job would."""

    def __init__(self, stage: str, step: int):
        self.stage, self.step = stage, step

    def on_save(self, args, state, control, **kwargs):
        if Path(args.output_dir).name == self.stage and state.global_step == self.step:
            raise SimulatedKill(f"killed after checkpoint-{self.step} of {self.stage}")


def assert_safetensors_checkpoint(checkpoint: Path) -> None:
    files = {p.name for p in checkpoint.iterdir()}
    weights = {name for name in files if name.endswith((".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl"))}
    # Trainer's own state is torch-pickled (optimizer.pt, scheduler.pt, rng_state.pth, training_args.bin);
    # the model weights are the adapter in safetensors, and nothing else is a weight file.
    assert weights == {"adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin"}, files
    assert "trainer_state.json" in files and "adapter_config.json" in files
    keys = set(load_file(str(checkpoint / "adapter_model.safetensors")))
    assert keys and all(is_lora(k) or "multi_modal_projector" in k for k in keys)


@pytest.mark.parametrize(
    ("killed_stage", "resume_by"),
    [("grounding", "latest"), ("diagnosis", "path")],
    ids=["kill-grounding-resume-latest", "kill-diagnosis-resume-path"],
)
def test_resume_after_kill_equals_uninterrupted_run(reference_run, make_config, tmp_path, killed_stage, resume_by):
    kill_step = 4
    out = tmp_path / "out"
    config = make_config(tmp_path / "config.yaml", out)
    with pytest.raises(SimulatedKill):
        run_sft(config, trainer_cls=recording_trainer([], extra_callbacks=(KillAfterSave(killed_stage, kill_step),)))
    killed_dir = out / killed_stage
    assert sorted(p.name for p in killed_dir.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert not (killed_dir / "litegpt_training.json").exists()  # not finished
    for checkpoint in killed_dir.glob("checkpoint-*"):
        assert_safetensors_checkpoint(checkpoint)
    finished_before = {}
    if killed_stage == "diagnosis":
        finished_before = {p.name: p.read_bytes() for p in (out / "grounding").iterdir() if p.is_file()}

    resume = "latest" if resume_by == "latest" else str(killed_dir / f"checkpoint-{kill_step}")
    records: list[dict[str, Any]] = []
    run_sft(config, "--resume_from_checkpoint", resume, trainer_cls=recording_trainer(records))
    expected_trained = list(STAGES) if killed_stage == "grounding" else ["diagnosis"]
    assert [r["stage"] for r in records] == expected_trained  # a finished stage is skipped
    if finished_before:
        assert {p.name: p.read_bytes() for p in (out / "grounding").iterdir() if p.is_file()} == finished_before

    reference = reference_run["out"]
    for stage in STAGES:
        ours = load_file(str(out / stage / "adapter_model.safetensors"))
        theirs = load_file(str(reference / stage / "adapter_model.safetensors"))
        assert set(ours) == set(theirs)
        for key in theirs:
            assert torch.allclose(ours[key], theirs[key], rtol=0, atol=1e-6), (stage, key)
        ours_losses, ref_losses = logged_losses(out / stage), logged_losses(reference / stage)
        assert sorted(ours_losses) == sorted(ref_losses) == list(range(1, STEPS + 1))
        for step in range(1, STEPS + 1):
            assert ours_losses[step] == pytest.approx(ref_losses[step], abs=1e-6), (stage, step)
        assert_safetensors_checkpoint(out / stage / f"checkpoint-{STEPS}")
    state = json.loads((killed_dir / f"checkpoint-{STEPS}" / "trainer_state.json").read_text())
    assert state["global_step"] == STEPS
    record = json.loads((killed_dir / "litegpt_training.json").read_text())
    assert record["resumed_from"] == str(killed_dir / f"checkpoint-{kill_step}")


def test_resume_inside_the_projector_alignment_steps_equals_an_uninterrupted_run(make_config, tmp_path):
    """The LoRA hold is rebuilt from the settings on resume: killed at step 2 of 3 held steps, the run ends as an
    uninterrupted one does."""
    settings = {"stages": ["grounding"], "max_steps": 4, "projector_alignment_steps": 3}
    run_sft(make_config(tmp_path / "straight.yaml", tmp_path / "straight", **settings))
    config = make_config(tmp_path / "config.yaml", tmp_path / "out", **settings)
    with pytest.raises(SimulatedKill):
        run_sft(config, trainer_cls=recording_trainer([], extra_callbacks=(KillAfterSave("grounding", 2),)))
    run_sft(config, "--resume_from_checkpoint", "latest")
    ours = load_file(tmp_path / "out" / "grounding" / "adapter_model.safetensors")
    theirs = load_file(tmp_path / "straight" / "grounding" / "adapter_model.safetensors")
    assert set(ours) == set(theirs)
    for key in theirs:
        assert torch.allclose(ours[key], theirs[key], rtol=0, atol=1e-6), key
    assert any(theirs[key].any() for key in theirs if "lora_B" in key), "control: LoRA joined at step 4"


# ============================================================================================ 5. push
def test_upload_file_set_is_exact(reference_run):
    for stage in STAGES:
        stage_dir = reference_run["out"] / stage
        assert upload_file_set(stage_dir) == EXPECTED_UPLOAD
        assert (stage_dir / "training_args.bin").exists() and (stage_dir / f"checkpoint-{STEPS}").is_dir()


def test_upload_file_set_refuses_an_unfinished_folder(reference_run, tmp_path):
    for missing in ("README.md", "adapter_model.safetensors", "processor_config.json"):
        folder = tmp_path / missing
        shutil.copytree(reference_run["out"] / "grounding", folder, ignore=shutil.ignore_patterns("checkpoint-*", missing))
        with pytest.raises(FileNotFoundError, match=rf"not a finished stage: missing \['{missing}'\]"):
            upload_file_set(folder)


def test_push_stage_uploads_the_file_set_and_reloads_identically(reference_run, base_dir, tmp_path, monkeypatch):
    from huggingface_hub import HfApi
    from transformers import AutoModelForImageTextToText

    stage = "diagnosis"
    stage_dir = reference_run["out"] / stage
    calls: dict[str, Any] = {}
    uploaded = tmp_path / "uploaded"

    def fake_create_repo(self, repo_id, **kwargs):
        calls["create_repo"] = (repo_id, kwargs)

    def fake_upload_folder(self, *, repo_id, folder_path, allow_patterns=None, **kwargs):
        calls["upload_folder"] = (repo_id, allow_patterns, kwargs)
        shutil.copytree(folder_path, uploaded)  # the temporary folder disappears after the push
        return "commit"

    monkeypatch.setattr(HfApi, "create_repo", fake_create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", fake_upload_folder)
    assert push_stage(stage_dir, repo_id="litegpt-tests/tiny-diagnosis", hub_base_model_id=HUB_BASE) == "commit"

    assert calls["create_repo"][0] == "litegpt-tests/tiny-diagnosis"
    repo_id, allow_patterns, _ = calls["upload_folder"]
    assert repo_id == "litegpt-tests/tiny-diagnosis" and sorted(allow_patterns) == EXPECTED_UPLOAD
    files = sorted(str(p.relative_to(uploaded)) for p in uploaded.rglob("*") if p.is_file())
    assert files == EXPECTED_UPLOAD
    # Only the uploaded copy points at the Hub base; the local folder keeps loading offline.
    assert json.loads((uploaded / "adapter_config.json").read_text())["base_model_name_or_path"] == HUB_BASE
    assert json.loads((stage_dir / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base_dir)
    card = (uploaded / "README.md").read_text()
    assert yaml.safe_load(card.split("---\n")[1])["base_model"] == HUB_BASE
    assert card.split("---\n", 2)[2] == (stage_dir / "README.md").read_text().split("---\n", 2)[2]
    for name in EXPECTED_UPLOAD:
        if name not in ("adapter_config.json", "README.md"):
            assert (uploaded / name).read_bytes() == (stage_dir / name).read_bytes(), name

    # Loading back: the uploaded folder on the (local copy of the) base, and the stage folder through
    # AutoModelForImageTextToText (which follows base_model_name_or_path), both equal the trained model.
    record = reference_run["records"][stage]
    batch = fixed_batch(record)
    batch.pop("labels")
    trained = record["trainer"].model
    with torch.no_grad():
        trained.load_state_dict(record["final"])
        trained.eval()
        expected = trained(**batch).logits
        from_upload = load_peft(base_dir, uploaded)(**batch).logits
        auto = AutoModelForImageTextToText.from_pretrained(stage_dir, trust_remote_code=True).eval()
        from_auto = auto(**batch).logits
    assert torch.equal(from_upload, expected)
    assert torch.equal(from_auto, expected)
    # ... and the adapter matters: the bare base gives other logits.
    with torch.no_grad():
        bare = AutoModelForImageTextToText.from_pretrained(base_dir, trust_remote_code=True).eval()(**batch).logits
    assert not torch.allclose(bare, expected, atol=1e-4)


def test_staged_upload_rewrites_only_the_copy(reference_run, tmp_path):
    stage_dir = reference_run["out"] / "grounding"
    before = {p.name: p.read_bytes() for p in stage_dir.iterdir() if p.is_file()}
    assert staged_upload_folder(stage_dir, HUB_BASE, tmp_path) == EXPECTED_UPLOAD
    assert {p.name: p.read_bytes() for p in stage_dir.iterdir() if p.is_file()} == before


# ============================================================================================ 6. bad input
class TrainerMustNotStart:
    def __init__(self, *args, **kwargs):
        raise AssertionError("SFTTrainer was built although the configuration is invalid")


def assert_fails_before_training(argv: list[str], out: Path, error: type[Exception], match: str) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(stages_module, "LiteGPTSFTTrainer", TrainerMustNotStart)
        with pytest.raises(error, match=match):
            train_sft.main(argv)
    leftovers = sorted(str(p.relative_to(out)) for p in out.rglob("*")) if out.exists() else []
    assert not leftovers, f"files written before the error: {leftovers}"


@pytest.fixture(scope="module")
def empty_train_data(tmp_path_factory, data_dir) -> Path:
    """The synthetic VinDr folder with no training annotations (header-only CSVs)."""
    root = tmp_path_factory.mktemp("sft_empty") / "vindr-cxr" / "1.0.0"
    shutil.copytree(data_dir, root)
    for name in ("annotations_train.csv", "image_labels_train.csv"):
        path = root / "annotations" / name
        path.write_text(path.read_text().splitlines()[0] + "\n")
    return root


@pytest.fixture(scope="module")
def foreign_adapters(tmp_path_factory) -> dict[str, Path]:
    """Fresh (untrained) adapters made on tiny bases of other sizes, saved as training would save them."""
    from peft import get_peft_model
    from transformers import AutoModelForImageTextToText

    from configuration_litegpt import TINY_TEXT_CONFIG
    from modeling_litegpt import LiteGPTForConditionalGeneration

    out = {}
    for name, overrides in {
        "projector_hidden_size": {"projector_hidden_size": 24},  # tiny: 48
        "text_hidden_size": {"text_config": {**TINY_TEXT_CONFIG, "hidden_size": 48}},  # tiny: 32
    }.items():
        base = build_tiny_base(tmp_path_factory.mktemp(f"other_base_{name}"), **overrides)
        model = AutoModelForImageTextToText.from_pretrained(base, trust_remote_code=True)
        peft_model = get_peft_model(model, LiteGPTForConditionalGeneration.lora_config(r=4, lora_alpha=8, base_model_name_or_path=str(base)))
        adapter = tmp_path_factory.mktemp(f"other_adapter_{name}")
        peft_model.save_pretrained(adapter)
        out[name] = adapter
    return out


@pytest.mark.parametrize(
    ("case", "error", "match"),
    [
        ("unknown_yaml_key", ValueError, r"Unknown arguments from config file: \['--lora_rank'"),
        ("unknown_cli_flag", ValueError, r"not used by the HfArgumentParser.*--learnig_rate"),
        ("unknown_stage", ValueError, r"unknown stage/task 'segmentation'"),
        ("unknown_mixed_task", ValueError, r"unknown stage/task 'captions'"),
        ("unknown_stage_override", ValueError, r"stage_overrides\['diagnosis'\]: \['num_epochs'\] are not SFTConfig fields"),
        ("mimic_stage_without_mimic_data", ValueError, r"MIMIC-CXR stages need mimic_data_dir"),
        ("mimic_mix_without_mimic_data", ValueError, r"MIMIC-CXR stages need mimic_data_dir"),
        ("missing_data_dir", FileNotFoundError, r"data_dir .*does not exist"),
        ("empty_train_split", ValueError, r"stage 'grounding': task 'grounding' has no training rows"),
        ("missing_checkpoint", FileNotFoundError, r"checkpoint-99: not a Trainer checkpoint"),
        ("not_a_checkpoint", FileNotFoundError, r"not a Trainer checkpoint \(no trainer_state.json\)"),
        ("checkpoint_of_another_run", ValueError, r"is not inside any stage folder of this run"),
        ("missing_init_adapter", FileNotFoundError, r"init_from .*does not exist"),
        ("adapter_other_projector", ValueError, r"does not fit this base:\n.*multi_modal_projector"),
        ("adapter_other_hidden_size", ValueError, r"does not fit this base:\n.*features"),
        ("push_local_base_without_hub_base", ValueError, r"local folder; set hub_base_model_id"),
        ("push_without_hub_model_id", ValueError, r"push_to_hub needs hub_model_id"),
        ("missing_base", FileNotFoundError, r"model_name_or_path .* does not exist"),
        ("projector_lr_without_projector", ValueError, r"projector_learning_rate is set but train_projector is off"),
        ("negative_projector_lr", ValueError, r"projector_learning_rate must be a positive number"),
        ("unknown_loss_normalization", ValueError, r"loss_normalization must be one of \('batch', 'dataset'\)"),
        ("negative_alignment_steps", ValueError, r"projector_alignment_steps must be >= 0"),
        ("alignment_steps_with_trained_projector", ValueError, r"applies to a stage that starts from a fresh projector"),
    ],
)
def test_bad_input_fails_before_training(
    case, error, match, make_config, tmp_path, reference_run, empty_train_data, foreign_adapters
):
    out = tmp_path / "out"
    overrides: dict[str, Any] = {}
    extra: list[str] = []
    if case == "unknown_yaml_key":
        overrides["lora_rank"] = 8
    elif case == "unknown_cli_flag":
        extra = ["--learnig_rate", "1e-4"]
    elif case == "unknown_stage":
        overrides["stages"] = ["grounding", "segmentation"]
    elif case == "unknown_mixed_task":
        overrides["mix"] = {"diagnosis": ["captions"]}
    elif case == "unknown_stage_override":
        overrides["stage_overrides"] = {"diagnosis": {"num_epochs": 3}}
    elif case == "mimic_stage_without_mimic_data":
        overrides["stages"] = ["grounding", "report"]
    elif case == "mimic_mix_without_mimic_data":
        overrides["mix"] = {"diagnosis": ["existence"]}
    elif case == "missing_data_dir":
        overrides["data_dir"] = str(tmp_path / "nowhere" / "vindr-cxr" / "1.0.0")
    elif case == "empty_train_split":
        overrides["data_dir"] = str(empty_train_data)
        overrides["dataset_cache_dir"] = str(tmp_path / "cache")
    elif case == "missing_checkpoint":
        extra = ["--resume_from_checkpoint", str(out / "grounding" / "checkpoint-99")]
    elif case == "not_a_checkpoint":
        extra = ["--resume_from_checkpoint", str(tmp_path)]
    elif case == "checkpoint_of_another_run":
        extra = ["--resume_from_checkpoint", str(reference_run["out"] / "grounding" / "checkpoint-2")]
    elif case == "missing_init_adapter":
        overrides["init_from"] = str(tmp_path / "no_adapter")
    elif case == "adapter_other_projector":
        overrides["init_from"] = str(foreign_adapters["projector_hidden_size"])
    elif case == "adapter_other_hidden_size":
        overrides["init_from"] = str(foreign_adapters["text_hidden_size"])
    elif case == "push_local_base_without_hub_base":
        overrides.update(push_to_hub=True, hub_model_id="litegpt-tests/tiny")
    elif case == "push_without_hub_model_id":
        overrides.update(push_to_hub=True, hub_base_model_id=HUB_BASE)
    elif case == "missing_base":
        overrides["model_name_or_path"] = str(tmp_path / "no_base")
    elif case == "projector_lr_without_projector":
        overrides.update(train_projector=False, projector_learning_rate=1e-2)
    elif case == "negative_projector_lr":
        overrides["projector_learning_rate"] = -1e-3
    elif case == "unknown_loss_normalization":
        overrides["loss_normalization"] = "sequence"
    elif case == "negative_alignment_steps":
        overrides["projector_alignment_steps"] = -1
    elif case == "alignment_steps_with_trained_projector":
        overrides.update(projector_alignment_steps=2, init_from=str(reference_run["out"] / "grounding"))
    config = make_config(tmp_path / "config.yaml", out, **overrides)
    assert_fails_before_training(["--config", str(config), *extra], out, error, match)


def test_foreign_adapter_check_accepts_an_adapter_of_this_base(reference_run, make_config, tmp_path):
    """Control for the two foreign-adapter cases: the same check lets a matching adapter through."""
    config = make_config(tmp_path / "config.yaml", tmp_path / "out", init_from=str(reference_run["out"] / "grounding"))
    train_sft.check_init_adapter(train_sft.parse_arguments(["--config", str(config)]))  # no error


# ============================================================================================ 6b. optimiser options
def test_projector_rate_and_dataset_loss_normalisation(make_config, tmp_path):
    """projector_learning_rate reaches the optimiser and is scheduled like the rest; loss_normalization=dataset
    divides each step's summed token loss by rows x the mean answer tokens per training row, not by the batch's
    own answer-token count."""
    out = tmp_path / "out"
    config = make_config(
        tmp_path / "config.yaml", out, stages=["grounding"], max_steps=3, warmup_steps=0, lr_scheduler_type="linear",
        projector_learning_rate=LEARNING_RATE * 5, loss_normalization="dataset",
    )
    divisors: list[tuple[int, float, int]] = []  # (rows, divisor used, the batch's own answer-token count)

    class RecordingDivisors(LiteGPTSFTTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            own = int(inputs["labels"][..., 1:].ne(-100).sum())
            divisors.append((len(inputs["labels"]), float(num_items_in_batch), own))
            return super().training_step(model, inputs, num_items_in_batch)

    run_sft(config, trainer_cls=RecordingDivisors)

    # The normaliser recomputed independently: all training rows (fewer than the 2048 sampled), one at a time.
    from transformers import AutoProcessor
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    run = train_sft.parse_arguments(["--config", str(config)])
    processor = AutoProcessor.from_pretrained(run.model.model_name_or_path, trust_remote_code=True)
    collator = DataCollatorForVisionLanguageModeling(processor, completion_only_loss=True)
    rows = load_stage_data(run.data, "grounding", processor).train
    per_row = [int(collator([row])["labels"][..., 1:].ne(-100).sum()) for row in rows]
    expected = sum(per_row) / len(per_row)
    assert len(divisors) == 3
    for batch_rows, divisor, _ in divisors:
        assert divisor == pytest.approx(batch_rows * expected)
    assert any(own != pytest.approx(divisor) for _, divisor, own in divisors), "control: the batch count differs"

    # Two learning rates, each decayed from its own start: linear over 3 steps, so 1/3 of it after 2 steps.
    groups = torch.load(out / "grounding" / "checkpoint-2" / "optimizer.pt", weights_only=False)["param_groups"]
    assert sorted({group["initial_lr"] for group in groups}) == pytest.approx([LEARNING_RATE, LEARNING_RATE * 5])
    for group in groups:
        assert group["lr"] == pytest.approx(group["initial_lr"] / 3)


def test_released_code_schedule_and_the_papers_data_settings_in_a_run(make_config, tmp_path):
    """lr_schedule=released_code in a real run on the paper recipe's data settings (stage 1 on boxed images, the
    appendix's DICOM conversion, no hold-out): max_steps optimizer steps across epoch boundaries, each at MiniGPT-v2's
    warm-up + cosine rate (training_log.csv logs the rate each update used); the saved processor converts DICOMs
    as the training images were."""
    from litegpt_train.schedule import warmup_cosine_factor

    out = tmp_path / "out"
    paper_data = {"max_side": 64, "stage1_images": "with_boxes", "windowing": "paper_appendix", "validation_fraction": 0}
    config = make_config(tmp_path / "config.yaml", out, stages=["grounding"], lr_schedule="released_code", warmup_steps=2,
                         dataset_settings=paper_data)  # fmt: skip
    run_sft(config)
    logged = {}
    with (out / "grounding" / "training_log.csv").open() as handle:
        for row in csv.DictReader(handle):
            if row["learning_rate"]:
                logged[int(row["step"])] = float(row["learning_rate"])
    assert sorted(logged) == list(range(1, STEPS + 1))
    expected = [LEARNING_RATE * warmup_cosine_factor(t, warmup_steps=2, total_steps=STEPS, warmup_start=0.1, minimum=0.1)
                for t in range(STEPS)]  # fmt: skip
    assert [logged[k] for k in range(1, STEPS + 1)] == pytest.approx(expected)
    # Hand values: warm-up 0.1 -> 0.55 of the rate, then 0.1 + 0.45 (1 + cos(pi t / 6)).
    assert expected[:3] == pytest.approx([LEARNING_RATE * 0.1, LEARNING_RATE * 0.55, LEARNING_RATE * 0.775])
    record = json.loads((out / "grounding" / "litegpt_training.json").read_text())
    assert record["train_metrics"]["epoch"] > 1 and record["arguments"]["optimisation"]["lr_schedule"] == "released_code"
    (source,) = record["data"]
    assert source["settings"]["stage1_images"] == "with_boxes" and set(source["rows"]) == {"train", "test"}
    assert 0 < source["rows"]["train"] < 24  # the synthetic sample's 24 training images include normal ones
    saved_processor = json.loads((out / "grounding" / "processor_config.json").read_text())
    assert saved_processor["image_processor"]["windowing"] == "paper_appendix"  # the image processor holds it


def test_projector_alignment_steps_train_the_projector_alone_then_lora_joins(make_config, tmp_path, base_dir):
    """projector_alignment_steps=2: the checkpoint after 2 steps still has the fresh LoRA (B all zero, A as
    drawn) but a trained projector; after step 4 LoRA has learned too. Stage 2 (from stage 1) holds nothing."""
    out = tmp_path / "out"
    config = make_config(tmp_path / "config.yaml", out, max_steps=4, projector_alignment_steps=2)
    records: list[dict[str, Any]] = []
    run_sft(config, trainer_cls=recording_trainer(records))
    initial = {r["stage"]: r["initial"] for r in records}

    base = load_file(base_dir / "model.safetensors")
    aligned = load_file(out / "grounding" / "checkpoint-2" / "adapter_model.safetensors")
    final = load_file(out / "grounding" / "adapter_model.safetensors")
    lora_b = [k for k in aligned if "lora_B" in k]
    lora_a = [k for k in aligned if "lora_A" in k]
    assert lora_b and all(not aligned[k].any() for k in lora_b), "LoRA B moved during the alignment steps"
    fresh_a = {adapter_key(name): t for name, t in initial["grounding"].items() if is_lora(name) and "lora_A" in name}
    assert all(torch.equal(aligned[k], fresh_a[k]) for k in lora_a)
    projector = [k for k in aligned if "multi_modal_projector" in k and k.endswith("weight")]
    assert projector and any(not torch.equal(aligned[k], base[k.replace("base_model.model.", "")]) for k in projector)
    assert any(final[k].any() for k in lora_b), "LoRA never joined"
    stage2 = load_file(out / "diagnosis" / "checkpoint-2" / "adapter_model.safetensors")
    assert any(not torch.equal(stage2[k], final[k]) for k in lora_b), "stage 2 held its LoRA too"


def test_projector_input_standardization_is_fitted_once_on_stage_one_training_images(make_config, tmp_path, monkeypatch):
    """A base built with projector_input_standardization: stage 1 fits the statistics on its training images
    before the adapter copies the projector; the adapter carries them and stage 2 inherits them unchanged."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    base = build_tiny_base(tmp_path / "base", projector_input_standardization=True)
    out = tmp_path / "out"
    config = make_config(tmp_path / "config.yaml", out, model_name_or_path=str(base), max_steps=2, save_steps=10)
    fits: list[int] = []
    real_fit = stages_module.fit_projector_input_standardization

    def counting_fit(*args: Any, **kwargs: Any) -> int:
        fits.append(real_fit(*args, **kwargs))
        return fits[-1]

    monkeypatch.setattr(stages_module, "fit_projector_input_standardization", counting_fit)
    run_sft(config)

    # Independently: the projector inputs of every grounding training image, in one batch.
    run = train_sft.parse_arguments(["--config", str(config)])
    processor = AutoProcessor.from_pretrained(base, trust_remote_code=True)
    rows = load_stage_data(run.data, "grounding", processor).train
    images = [image for row in rows for image in row["images"]]
    pixels = processor(images=[[image] for image in images], text=[processor.image_token] * len(images), return_tensors="pt")
    model = AutoModelForImageTextToText.from_pretrained(base, trust_remote_code=True)
    with torch.no_grad():
        features = model.model.get_projector_inputs(pixels["pixel_values"])
    assert fits == [len(images)], "fitted once, in stage 1, on all its training images"
    for stage in STAGES:
        saved = load_file(out / stage / "adapter_model.safetensors")
        mean = next(v for k, v in saved.items() if k.endswith("multi_modal_projector.input_mean"))
        std = next(v for k, v in saved.items() if k.endswith("multi_modal_projector.input_std"))
        torch.testing.assert_close(mean, features.mean(0), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(std, features.std(0).clamp_min(1e-3), rtol=1e-5, atol=1e-5)
    assert features.std(0).mean() > 0.01, "control: the statistics are not the identity"
    loaded = load_peft(base, out / "diagnosis").base_model.model.model.multi_modal_projector
    torch.testing.assert_close(loaded.modules_to_save["default"].input_mean, features.mean(0), rtol=1e-5, atol=1e-5)


def test_group_by_length_sorts_rows_by_the_added_length_column(make_config, tmp_path):
    """train_sampling_strategy=group_by_length works on TRL vision rows: train_sft adds the text-token length
    column and the trainer keeps it for transformers' LengthGroupedSampler, whose mega-batches are sorted longest
    first (a random order would rarely sort every one of 6 batches)."""
    from transformers.trainer_pt_utils import LengthGroupedSampler

    config = make_config(tmp_path / "config.yaml", tmp_path / "out", stages=["grounding"], train_sampling_strategy="group_by_length")
    batches: list[list[int]] = []
    samplers: list[Any] = []

    class RecordingLengths(LiteGPTSFTTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            batches.append(inputs["attention_mask"].sum(1).tolist())
            return super().training_step(model, inputs, num_items_in_batch)

        def _get_train_sampler(self, train_dataset=None):
            samplers.append(super()._get_train_sampler(train_dataset))
            return samplers[-1]

    run_sft(config, trainer_cls=RecordingLengths)
    assert len(samplers) == 1 and isinstance(samplers[0], LengthGroupedSampler)
    assert samplers[0].lengths is not None, "lengths came from the column, not from input_ids"
    assert len(batches) == STEPS
    for lengths in batches[1:]:  # the sampler swaps the overall longest row into the first batch
        # Sorted by the column's text-token count, which the chat template's joins shift by a token or so.
        assert all(later <= earlier + 2 for earlier, later in itertools.pairwise(lengths)), lengths
    assert len({length for lengths in batches for length in lengths}) > 2, "control: the rows differ in length"


def test_add_length_column_counts_prompt_and_completion_tokens(base_dir):
    import datasets
    from transformers import AutoProcessor

    from litegpt_train.data import add_length_column

    processor = AutoProcessor.from_pretrained(base_dir, trust_remote_code=True)
    rows = datasets.Dataset.from_list([
        {"prompt": [{"role": "user", "content": "ab"}], "completion": [{"role": "assistant", "content": "cdef"}]},
        {"prompt": [{"role": "user", "content": "abc"}], "completion": [{"role": "assistant", "content": "d"}]},
    ])  # fmt: skip
    with_lengths = add_length_column(rows, processor)
    expected = [len(processor.tokenizer("ab cdef", add_special_tokens=False)["input_ids"]),
                len(processor.tokenizer("abc d", add_special_tokens=False)["input_ids"])]  # fmt: skip
    assert with_lengths["length"] == expected and expected[0] != expected[1]
    assert add_length_column(with_lengths.map(lambda row: {"length": 0}), processor)["length"] == [0, 0], "kept"


# ============================================================================================ 7. feature cache
def test_projector_input_cache_gives_the_same_losses(reference_run, make_config, tmp_path):
    out = tmp_path / "out"
    config = make_config(tmp_path / "config.yaml", out, cache_projector_inputs=True)
    records: list[dict[str, Any]] = []
    run_sft(config, trainer_cls=recording_trainer(records))
    for stage in STAGES:
        cached, plain = logged_losses(out / stage), logged_losses(reference_run["out"] / stage)
        assert sorted(cached) == sorted(plain) == list(range(1, STEPS + 1))
        for step in cached:
            assert cached[step] == pytest.approx(plain[step], abs=1e-5), (stage, step)
        ours = load_file(str(out / stage / "adapter_model.safetensors"))
        theirs = load_file(str(reference_run["out"] / stage / "adapter_model.safetensors"))
        for key in theirs:
            assert torch.allclose(ours[key], theirs[key], atol=1e-5), (stage, key)

    # Every training batch was served from the cache (filled once before the first step, shared by the stages, so
    # the counters are cumulative; the data loader may collate one batch ahead, hence >=).
    stats = {s: json.loads((out / s / "litegpt_training.json").read_text())["projector_input_cache"] for s in STAGES}
    assert stats["grounding"]["misses"] == 0 and stats["diagnosis"]["misses"] == 0
    assert stats["grounding"]["hits"] >= STEPS * BATCH
    assert stats["diagnosis"]["hits"] - stats["grounding"]["hits"] >= STEPS * BATCH

    # Keyed by the digest of the processed pixels of each distinct training and validation image of the stages.
    collator = records[-1]["trainer"].data_collator
    assert isinstance(collator, CachedProjectorInputsCollator)
    assert records[0]["trainer"].data_collator.cache is collator.cache
    cache = collator.cache
    processor = records[-1]["trainer"].processing_class
    run = train_sft.parse_arguments(["--config", str(config)])
    images = []
    for stage in STAGES:
        data = load_stage_data(run.data, stage, processor)
        images += [image for split in (data.train, data.validation) if split is not None
                   for row in split for image in row["images"]]
    pixels = processor(images=[[im] for im in images], text=[processor.image_token] * len(images), return_tensors="pt")["pixel_values"]
    keys = {pixel_digest(p) for p in pixels}
    assert set(cache._store) == keys and stats["diagnosis"]["images"] == len(keys)
    # A pixel change is a miss (never a stale hit).
    misses = cache.misses
    assert cache.lookup(pixels[:1] + 1e-3) is None and cache.misses == misses + 1
    assert torch.equal(cache.lookup(pixels[:2]), torch.stack([cache._store[pixel_digest(p)] for p in pixels[:2]]))


# ============================================================================================ 8. DDP
DDP_WRAPPER = textwrap.dedent(
    '''
    """Runs train_sft.main with an SFTTrainer that reports, per rank, what it trained (test-side only)."""
    import hashlib, json, sys
    from pathlib import Path

    sys.path.insert(0, {root!r})
    import torch
    import train_sft
    from litegpt_train import stages

    DUMP = Path(sys.argv[1])


    def digest(tensor):
        return hashlib.sha256(tensor.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


    class ReportingTrainer(stages.LiteGPTSFTTrainer):
        def training_step(self, model, inputs, *args, **kwargs):
            # The pixels identify the rows (the text of two normal images is identical).
            self.batches_seen.append(digest(inputs["pixel_values"]) + digest(inputs["input_ids"]))
            return super().training_step(model, inputs, *args, **kwargs)

        def train(self, *args, **kwargs):
            self.batches_seen = []
            trainable = lambda: {{n: digest(p) for n, p in self.model.named_parameters() if p.requires_grad}}
            initial = trainable()
            result = super().train(*args, **kwargs)
            rank = self.accelerator.process_index
            report = {{
                "rank": rank,
                "num_processes": self.accelerator.num_processes,
                "distributed_type": str(self.accelerator.distributed_type),
                "backend": torch.distributed.get_backend() if torch.distributed.is_initialized() else None,
                "world_size": torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1,
                "initial": initial,
                "final": trainable(),
                "batches": self.batches_seen,
                "global_step": self.state.global_step,
            }}
            (DUMP / f"rank{{rank}}.json").write_text(json.dumps(report))
            return result


    stages.LiteGPTSFTTrainer = ReportingTrainer
    train_sft.main(sys.argv[2:])
    '''
)


@pytest.mark.slow
def test_two_process_cpu_ddp_ranks_agree(make_config, tmp_path):
    accelerate_config = ROOT / "configs" / "accelerate" / "cpu_ddp.yaml"
    assert accelerate_config.is_file()
    out, dump = tmp_path / "out", tmp_path / "dump"
    dump.mkdir()
    steps = 3
    config = make_config(tmp_path / "config.yaml", out, stages=["grounding"], max_steps=steps,
                         per_device_train_batch_size=2, save_steps=steps)
    wrapper = tmp_path / "ddp_wrapper.py"
    wrapper.write_text(DDP_WRAPPER.format(root=str(ROOT)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(accelerate_config),
        "--num_cpu_threads_per_process", "1", "--main_process_port", "0",
        str(wrapper), str(dump), "--config", str(config),
    ]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]

    reports = [json.loads((dump / f"rank{r}.json").read_text()) for r in (0, 1)]
    for rank, report in enumerate(reports):
        assert report["rank"] == rank
        assert report["num_processes"] == 2 and report["world_size"] == 2
        assert report["backend"] == "gloo" and report["distributed_type"].endswith("MULTI_CPU")
        assert report["global_step"] == steps and len(report["batches"]) == steps
    # Each rank trained on its own shard of every batch, yet both ended with the same weights (synchronised
    # gradients), which also moved away from their start.
    assert set(reports[0]["batches"]).isdisjoint(reports[1]["batches"])
    assert reports[0]["final"] == reports[1]["final"]
    assert reports[0]["initial"] == reports[1]["initial"]
    assert all(reports[0]["final"][k] != reports[0]["initial"][k] for k in reports[0]["final"])
    # Rank 0 saved exactly those weights.
    saved = load_file(str(out / "grounding" / "adapter_model.safetensors"))
    saved_digests = {k: hashlib.sha256(v.contiguous().numpy().tobytes()).hexdigest() for k, v in saved.items()}
    assert saved_digests == {adapter_key(k): v for k, v in reports[0]["final"].items()}
    assert json.loads((out / "grounding" / "litegpt_training.json").read_text())["completed"]
    losses = logged_losses(out / "grounding")
    assert sorted(losses) == list(range(1, steps + 1))


# ============================================================================================ 9. eval after training
@pytest.mark.parametrize("label_scores", [True, False])
def test_eval_after_training_passes_the_stage_and_eval_settings_to_the_evaluation(reference_run, monkeypatch,
                                                                                  label_scores):
    """evaluate_stage calls litegpt_eval.evaluate on the stage's own task and folder with the config's eval_* settings
    and the builder settings training used."""
    # The two switches take opposite values so that each flag is seen both on and off.
    coco_meteor = not label_scores

    calls: list[EvalArguments] = []
    monkeypatch.setattr(train_sft, "evaluate", calls.append)
    dtype = "bfloat16" if label_scores else "auto"
    argv = ["--config", str(reference_run["config"]), "--eval_bootstrap", "7", "--eval_label_scores", str(label_scores),
            "--eval_coco_meteor", str(coco_meteor), "--eval_dtype", dtype]
    run = train_sft.parse_arguments(argv)
    plans = plan_stages(run.stages, dataclasses.replace(run.sft, resume_from_checkpoint="latest"))
    plan = next(p for p in plans if p.stage == "grounding")
    out = train_sft.evaluate_stage(plan, run)
    assert out == reference_run["out"] / "grounding" / "eval"
    (args,) = calls
    assert args.out == str(out) and args.model == str(reference_run["out"] / "grounding")
    assert args.dataset == "vindr_cxr:grounding" and args.bootstrap == 7 and args.split == "test"
    assert args.dtype == dtype
    assert args.dataset_settings == run.data.dataset_settings and args.data_dir == run.data.data_dir
    assert args.no_label_scores is (not label_scores)
    assert args.no_coco_meteor is (not coco_meteor)
    assert args.baselines

def test_label_scores_can_be_kept_to_some_stages(reference_run, monkeypatch):
    """eval_label_score_stages: [grounding] keeps stage 1's label probabilities and drops stage 2's; a stage the run
    does not train is refused before anything runs."""
    calls: list[EvalArguments] = []
    monkeypatch.setattr(train_sft, "evaluate", calls.append)
    argv = ["--config", str(reference_run["config"]), "--eval_label_score_stages", "grounding"]
    run = train_sft.parse_arguments(argv)
    plans = {p.stage: p for p in plan_stages(run.stages, dataclasses.replace(run.sft, resume_from_checkpoint="latest"))}
    for stage in ("grounding", "diagnosis"):
        train_sft.evaluate_stage(plans[stage], run)
    grounding_args, diagnosis_args = calls
    assert grounding_args.no_label_scores is False and diagnosis_args.no_label_scores is True
    with pytest.raises(ValueError, match="eval_label_score_stages names stage 'diagnosis'"):
        train_sft.parse_arguments(argv[:2] + ["--stages", "grounding", "--eval_label_score_stages", "diagnosis"])


def test_a_synthetic_sample_written_with_other_settings_is_refused(tmp_path):
    """A demo folder left by an earlier config (say 300/40 images) must not be trained on in silence when the config
    now asks for another sample; the same settings reuse it."""
    from datasets_scripts.synthetic import VINDR_VERSION_DIR, generate
    from litegpt_train.arguments import (
        DataArguments,
        EvalAfterTrainingArguments,
        LiteGPTModelConfig,
        OptimisationArguments,
        RunArguments,
        StageArguments,
    )

    settings = {"n_train": 4, "n_test": 2, "mimic_studies": 2, "seed": 0, "image_size": 64}
    generate(tmp_path / "data", **settings)
    base = tmp_path / "base"
    base.mkdir()

    def prepare(**changed):
        data = DataArguments(synthetic_data=True, data_dir=str(tmp_path / "data" / VINDR_VERSION_DIR),
                             synthetic_settings={**settings, **changed})  # fmt: skip
        run = RunArguments(LiteGPTModelConfig(model_name_or_path=str(base)), StageArguments(), data,
                           OptimisationArguments(), EvalAfterTrainingArguments(), sft=None)  # fmt: skip
        train_sft.prepare_offline_inputs(run)

    prepare()
    with pytest.raises(ValueError, match=r"n_test: 2 on disk, 3 asked.*delete the run folder"):
        prepare(n_test=3)
