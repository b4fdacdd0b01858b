"""`configs/litegpt-7b.yaml` against the paper's section 4.3: every setting, its source tag, the schedule it runs
(step count and learning rate at chosen steps), and the checks that keep a departure from being silent."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
import yaml

import train_sft
from litegpt_train.schedule import minigptv2_scheduler, warmup_cosine_factor

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "litegpt-7b.yaml"
PAPER_EPOCHS, PAPER_ITERATIONS_PER_EPOCH = 20, 549
PAPER_GPUS = 4
# Training images with at least one box (the Kaggle VinBigData release's count): the stage-1 samples of section 3.2.
BOXED_TRAIN_IMAGES = 4394


def parse_recipe(tmp_path: Path, *extra: str):
    """The recipe as train_sft.py parses it, with local stand-ins for the paths that only exist on a real machine."""
    return train_sft.parse_arguments([
        "--config", str(RECIPE), "--model_name_or_path", str(tmp_path), "--data_dir", str(tmp_path),
        "--init_from", "none", "--use_cpu", "true", *extra,
    ])  # fmt: skip


def learning_rates(optimizer: torch.optim.Optimizer, scheduler, steps: int) -> list[float]:
    """The learning rate of each optimizer step, as the Trainer steps the scheduler after every update."""
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_recipe_reproduces_the_papers_settings(tmp_path):
    script_args, args = parse_recipe(tmp_path)
    assert args.max_steps == PAPER_EPOCHS * PAPER_ITERATIONS_PER_EPOCH == 10_980
    assert args.learning_rate == 1e-5 and args.weight_decay == 0.05 and args.warmup_steps == 1000
    assert args.optim.value == "adamw_torch" and args.dataloader_num_workers == 2
    assert script_args.lr_schedule == "paper"
    # Global batch 8 on the paper's 4 GPUs: 549 iterations x 8 = 4,392 rows ~ one pass over the boxed images.
    launcher = yaml.safe_load((ROOT / "configs" / "accelerate" / "multi_gpu.yaml").read_text())
    global_batch = args.per_device_train_batch_size * launcher["num_processes"] * args.gradient_accumulation_steps
    assert launcher["num_processes"] == PAPER_GPUS and global_batch == 8
    assert 0 <= BOXED_TRAIN_IMAGES - PAPER_ITERATIONS_PER_EPOCH * global_batch < global_batch
    assert script_args.quantization == "8bit" and script_args.lora_r == 64 and script_args.train_projector
    assert script_args.stage_list == ["grounding", "diagnosis"] and not script_args.stage_overrides
    assert script_args.dataset_settings == {
        "conflict_policy": "drop", "dedup": "keep_first", "dedup_iou": 0.5, "global_fusion": "union",
        "stage1_target": "local", "stage1_images": "with_boxes", "windowing": "paper_appendix", "validation_fraction": 0,
    }  # fmt: skip


def test_every_setting_carries_a_source_tag_explained_in_the_file():
    text = RECIPE.read_text()
    header = text.split("\n\n")[0]
    for tag in ("[P]", "[C]", "[D]"):
        assert re.search(re.escape(tag) + r" (the LiteGPT paper|the authors' released code|our decision)", header), tag
    assert "DESIGN" not in text
    settings = [line for line in text.splitlines() if re.match(r"^\s*[A-Za-z_]\w*:", line)]
    assert len(settings) > 40
    untagged = [line for line in settings if not re.search(r"#.*\[[PCD]\]", line) and not line.rstrip().endswith(":")]
    assert untagged == []


def test_paper_schedule_is_a_constant_learning_rate_over_10980_steps(tmp_path):
    script_args, args = parse_recipe(tmp_path)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=args.learning_rate)
    scheduler = minigptv2_scheduler(optimizer, script_args.lr_schedule, args.get_warmup_steps(args.max_steps), args.max_steps)
    rates = learning_rates(optimizer, scheduler, args.max_steps)
    assert len(rates) == 10_980
    for step in (0, 1, 500, 999, 1000, 1001, 5490, 10_979):
        assert rates[step] == 1e-5, step
    assert set(rates) == {1e-5}


def test_released_code_schedule_at_chosen_steps(tmp_path):
    _, args = parse_recipe(tmp_path, "--lr_schedule", "released_code")
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=args.learning_rate)
    scheduler = minigptv2_scheduler(optimizer, "released_code", args.get_warmup_steps(args.max_steps), args.max_steps)
    rates = learning_rates(optimizer, scheduler, args.max_steps)
    # Warm-up from 1e-6 to 1e-5 over 1000 steps: 1e-6 + 9e-6 t / 1000.
    assert rates[0] == pytest.approx(1e-6, rel=1e-12)
    assert rates[500] == pytest.approx(5.5e-6, rel=1e-12)
    assert rates[999] == pytest.approx(9.991e-6, rel=1e-12)
    # Cosine over the whole run, from step 0: 1e-6 + 4.5e-6 (1 + cos(pi t / 10980)).
    assert rates[1000] == pytest.approx(1e-6 + 4.5e-6 * (1 + math.cos(math.pi * 1000 / 10980)), rel=1e-12)
    assert rates[2745] == pytest.approx(8.68198052e-6, rel=1e-8)  # a quarter: cos(pi/4)
    assert rates[5490] == pytest.approx(5.5e-6, rel=1e-12)  # half: cos(pi/2) = 0
    assert rates[8235] == pytest.approx(2.31801948e-6, rel=1e-8)  # three quarters
    assert rates[10_979] == pytest.approx(1e-6, abs=1e-12)
    assert all(a >= b for a, b in zip(rates[1000:], rates[1001:]))  # decays monotonically after the warm-up


def test_schedule_factor_is_a_fraction_of_each_groups_rate():
    """The presets are ratios, so a projector group with its own rate follows the same shape."""
    base, projector = 1e-5, 1e-4
    optimizer = torch.optim.AdamW([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": base},
                                   {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": projector}])  # fmt: skip
    scheduler = minigptv2_scheduler(optimizer, "released_code", warmup_steps=10, total_steps=100)
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    factor = warmup_cosine_factor(5, warmup_steps=10, total_steps=100, warmup_start=0.1, minimum=0.1)
    assert factor == pytest.approx(0.55)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([base * factor, projector * factor])
    with pytest.raises(ValueError, match="unknown MiniGPT-v2 schedule"):
        minigptv2_scheduler(optimizer, "cosine", warmup_steps=10, total_steps=100)


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--lr_scheduler_type", "cosine"], r"lr_schedule 'paper' sets the learning-rate schedule, but the run also sets lr_scheduler_type 'cosine'"),
        (["--lr_schedule", "released_code", "--lr_scheduler_kwargs", '{"min_lr": 1e-6}'], r"takes no lr_scheduler_kwargs"),
        (["--stage_overrides", '{"diagnosis": {"lr_scheduler_type": "constant"}}'], r"stage_overrides\['diagnosis'\] also sets lr_scheduler_type"),
        (["--lr_schedule", "cosine"], r"lr_schedule must be one of \('trainer', 'paper', 'released_code'\)"),
    ],
)
def test_a_second_schedule_is_an_error_not_a_silent_choice(tmp_path, extra, match):
    with pytest.raises(ValueError, match=match):
        parse_recipe(tmp_path, *extra)
    # 'trainer' hands the schedule back to SFTConfig's lr_scheduler_type.
    script_args, args = parse_recipe(tmp_path, "--lr_schedule", "trainer", "--lr_scheduler_type", "cosine")
    assert script_args.lr_schedule == "trainer" and args.lr_scheduler_type.value == "cosine"
