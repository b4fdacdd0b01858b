"""Training reads the image: `train_sft.py` learns a task that only the pixels can solve, and a control cannot.

The toy set (`datasets_scripts.toy`) has two classes told apart by a bright block on the left or the right of the
image, each with one fixed grounded answer. Through the unchanged `train_sft.py` (builder, TRL collator or the
projector-input cache, LiteGPTSFTTrainer, adapter saving, `eval.py`'s greedy generation on the held-out split), the
tiny model must answer every held-out image with its own class. The same run on the toy set whose images are all
one constant image must stay at chance. Anything that cuts the image off the answer (image-token scatter positions,
cache keys, the projector's input standardization, label masking, the adapter's projector copy) fails the first
test; a leak of the answer through anything but the pixels fails the second.

The tiny LM is random; before the runs it learns the answers' *language* (text side only, both answers behind one
blank image, so it cannot tell the classes apart), as a pretrained LM knows its language. The image -> answer
decision is then what `train_sft.py` has to teach. Measured on 2 cores: 100 steps at lr 2e-2 answer all 16
held-out images right; 40 steps are not enough (every image gets the same answer).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

import train_sft
from datasets_scripts.toy import TOY_CLASSES, generate_toy_vindr, toy_box
from processing_litegpt import completion_messages, format_grounding_answer, parse_grounding_answer, prompt_messages

pytestmark = pytest.mark.slow

TOY_SIZE = 64
N_TRAIN, N_TEST = 48, 16
STEPS = 100
LANGUAGE_STEPS = 150


def toy_answers() -> dict[str, str]:
    return {c: format_grounding_answer([(c, toy_box(c, TOY_SIZE))], TOY_SIZE, TOY_SIZE) for c in TOY_CLASSES}


def teach_answer_language(base_dir: Path, steps: int = LANGUAGE_STEPS, lr: float = 1e-2) -> None:
    """Train the tiny LM (embeddings, layers, head; not the image path) on both toy answers behind one blank image.

    Both answers follow the same input, so the LM learns their text but no way to choose between them.
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from litegpt_train.base import save_litegpt

    model = AutoModelForImageTextToText.from_pretrained(base_dir, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(base_dir, trust_remote_code=True)
    prompt = prompt_messages("grounding")
    texts = [processor.apply_chat_template(prompt + completion_messages(a)) for a in toy_answers().values()]
    blank = Image.new("RGB", (TOY_SIZE, TOY_SIZE))
    batch = processor(text=texts, images=[[blank]] * len(texts), return_tensors="pt", padding=True)
    prompt_ids = processor(text=processor.apply_chat_template(prompt, add_generation_prompt=True), images=[blank])
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    labels[:, : len(prompt_ids["input_ids"][0])] = -100

    model.requires_grad_(False)
    text_side = [*model.model.language_model.parameters(), *model.lm_head.parameters()]
    for param in text_side:
        param.requires_grad_(True)
    optimizer = torch.optim.AdamW(text_side, lr=lr)
    torch.manual_seed(0)
    model.train()
    for _ in range(steps):
        model(**batch, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    save_litegpt(model.eval(), processor, base_dir)


@pytest.fixture(scope="module")
def literate_base(tmp_path_factory) -> Path:
    from test_train_sft import build_tiny_base

    # The standardization is on so that the test also covers its fit and its journey into the adapter.
    base = build_tiny_base(tmp_path_factory.mktemp("toy_base"), projector_input_standardization=True)
    teach_answer_language(base)
    return base


def toy_data(tmp_path_factory, constant_image: bool) -> Path:
    root = tmp_path_factory.mktemp("toy_constant" if constant_image else "toy_data")
    generate_toy_vindr(root, n_train=N_TRAIN, n_test=N_TEST, seed=0, image_size=TOY_SIZE, constant_image=constant_image)
    return root / "vindr-cxr" / "1.0.0"


def train_and_answer(literate_base: Path, data_dir: Path, out: Path, cache: bool) -> dict[str, str]:
    """`train_sft.py` (stage 1 only, then eval.py on the test split): {image_id: greedy answer}."""
    config = {
        "model_name_or_path": str(literate_base),
        "data_dir": str(data_dir),
        "dataset_cache_dir": str(out / "datasets_cache"),
        "dataset_settings": {"max_side": TOY_SIZE},
        "output_dir": str(out / "run"),
        "stages": ["grounding"],
        "cache_projector_inputs": cache,
        "max_length": None,
        "per_device_train_batch_size": 4,
        "max_steps": STEPS,
        "learning_rate": 2e-2,
        "lr_scheduler_type": "constant",
        "lora_r": 16,
        "lora_alpha": 32,
        "lora_dropout": 0.0,
        "save_strategy": "no",
        "report_to": "none",
        "bf16": False,
        "gradient_checkpointing": False,
        "use_cpu": True,
        "seed": 42,
        "disable_tqdm": True,
        "eval_after_training": True,
        "eval_baselines": False,
        "eval_label_scores": False,
        "eval_coco_meteor": False,
        "eval_bootstrap": 0,
    }
    path = out / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    train_sft.main(["--config", str(path)])
    predictions = out / "run" / "grounding" / "eval" / "predictions.jsonl"
    return {row["image_id"]: row["text"] for row in map(json.loads, predictions.read_text().splitlines())}


def held_out_classes(data_dir: Path) -> dict[str, str]:
    with (data_dir / "annotations" / "annotations_test.csv").open() as handle:
        return {row["image_id"]: row["class_name"] for row in csv.DictReader(handle)}


def answered_class(answer: str) -> str | None:
    """The toy class an answer names (its only finding), or None when it names none or several."""
    labels = parse_grounding_answer(answer, TOY_SIZE, TOY_SIZE).labels
    return labels[0] if len(labels) == 1 else None



@pytest.mark.parametrize("cache", [True, False], ids=["projector-input cache", "TRL collator"])
def test_training_learns_what_only_the_image_tells(literate_base, tmp_path_factory, tmp_path, cache):
    data_dir = toy_data(tmp_path_factory, constant_image=False)
    truth = held_out_classes(data_dir)
    answers = train_and_answer(literate_base, data_dir, tmp_path, cache)
    assert set(answers) == set(truth) and len(truth) == N_TEST
    expected = toy_answers()
    wrong = {i: answers[i] for i in truth if answers[i].strip() != expected[truth[i]]}
    assert not wrong, f"{len(wrong)} of {N_TEST} held-out images answered wrong, e.g. {next(iter(wrong.items()))}"
    assert {answered_class(answers[i]) for i in truth} == set(TOY_CLASSES)


def test_without_the_image_training_stays_at_chance(literate_base, tmp_path_factory, tmp_path):
    data_dir = toy_data(tmp_path_factory, constant_image=True)
    truth = held_out_classes(data_dir)
    answers = train_and_answer(literate_base, data_dir, tmp_path, cache=True)
    # The run did train: every answer is one of the two learned answers ...
    assert {a.strip() for a in answers.values()} <= set(toy_answers().values())
    # ... but with one image for all, nothing can tell the classes apart: one answer for all, half of them right.
    correct = [answered_class(answers[i]) == truth[i] for i in truth]
    assert len({a.strip() for a in answers.values()}) == 1
    assert sum(correct) == N_TEST // 2
