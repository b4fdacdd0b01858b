"""`configs/litegpt-7b.yaml` against the paper's section 4.3: every setting, its source tag, the schedule it runs
(step count and learning rate at chosen steps), and the checks that keep a departure from being silent."""

from __future__ import annotations

import itertools
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
    run = parse_recipe(tmp_path)
    args = run.sft
    assert args.max_steps == PAPER_EPOCHS * PAPER_ITERATIONS_PER_EPOCH == 10_980
    assert args.learning_rate == 1e-5 and args.weight_decay == 0.05 and args.warmup_steps == 1000
    assert args.optim.value == "adamw_torch" and args.dataloader_num_workers == 2
    assert run.optimisation.lr_schedule == "paper"
    # Global batch 8 on the paper's 4 GPUs: 549 iterations x 8 = 4,392 rows ~ one pass over the boxed images.
    launcher = yaml.safe_load((ROOT / "configs" / "accelerate" / "multi_gpu.yaml").read_text())
    global_batch = args.per_device_train_batch_size * launcher["num_processes"] * args.gradient_accumulation_steps
    assert launcher["num_processes"] == PAPER_GPUS and global_batch == 8
    assert 0 <= BOXED_TRAIN_IMAGES - PAPER_ITERATIONS_PER_EPOCH * global_batch < global_batch
    assert run.model.load_in_8bit and run.model.quantization_bits == 8 and run.model.lora_r == 64
    assert run.optimisation.train_projector
    assert run.stages.stage_list == ["grounding", "diagnosis"] and not run.stages.stage_overrides
    assert run.data.dataset_settings == {
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
    run = parse_recipe(tmp_path)
    args = run.sft
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=args.learning_rate)
    scheduler = minigptv2_scheduler(optimizer, run.optimisation.lr_schedule, args.get_warmup_steps(args.max_steps), args.max_steps)
    rates = learning_rates(optimizer, scheduler, args.max_steps)
    assert len(rates) == 10_980
    for step in (0, 1, 500, 999, 1000, 1001, 5490, 10_979):
        assert rates[step] == 1e-5, step
    assert set(rates) == {1e-5}


def test_released_code_schedule_at_chosen_steps(tmp_path):
    args = parse_recipe(tmp_path, "--lr_schedule", "released_code").sft
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
    assert all(a >= b for a, b in itertools.pairwise(rates[1000:]))  # decays monotonically after the warm-up


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
    run = parse_recipe(tmp_path, "--lr_schedule", "trainer", "--lr_scheduler_type", "cosine")
    assert run.optimisation.lr_schedule == "trainer" and run.sft.lr_scheduler_type.value == "cosine"


# ============================================================================================ distribution (FSDP)
FSDP_CONFIG = ROOT / "configs" / "accelerate" / "fsdp.yaml"


def fsdp_wrap_classes() -> list[str]:
    return yaml.safe_load(FSDP_CONFIG.read_text())["fsdp_config"]["fsdp_transformer_layer_cls_to_wrap"].split(",")


@pytest.mark.parametrize("preset", ["tiny", "litegpt-7b"])
def test_fsdp_config_names_wrap_units_accelerate_can_find(preset):
    """transformers 5 merges CLIPVisionModel's _no_split_modules (which names CLIPTextEmbeddings) into the model's:
    Accelerate's default wrap list then fails; the config's explicit list finds every class."""
    from accelerate import FullyShardedDataParallelPlugin

    from configuration_litegpt import LiteGPTConfig
    from modeling_litegpt import LiteGPTForConditionalGeneration

    with torch.device("meta"):
        model = LiteGPTForConditionalGeneration(LiteGPTConfig.from_preset(preset))
    present = {type(module).__name__ for module in model.modules()}
    assert set(fsdp_wrap_classes()) == {"LlamaDecoderLayer", "CLIPEncoderLayer", "TimmWrapperModel"} <= present
    with pytest.raises(ValueError, match="CLIPTextEmbeddings"):
        FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap").set_auto_wrap_policy(model)
    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap",
                                            transformer_cls_names_to_wrap=fsdp_wrap_classes())  # fmt: skip
    plugin.set_auto_wrap_policy(model)
    assert {cls.__name__ for cls in plugin.auto_wrap_policy.keywords["transformer_layer_cls"]} == set(fsdp_wrap_classes())


def test_fsdp_launch_refuses_quantization_and_a_silent_fallback(tmp_path, monkeypatch):
    from accelerate import PartialState

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ValueError, match="8-bit language model under FSDP"):
        parse_recipe(tmp_path)
    parse_recipe(tmp_path, "--load_in_8bit", "false")  # accepted
    # One CPU process: Accelerate sets up no FSDP, so the FSDP launch is refused rather than run unsharded.
    with pytest.raises(ValueError, match="the launch asks for FSDP but Accelerate set up"):
        train_sft.check_distribution(PartialState())
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    train_sft.check_distribution(PartialState())  # no FSDP asked: nothing to check


FSDP_WORKER = '''
import copy, json, sys
sys.path.insert(0, {root!r})
import numpy as np
import torch
from accelerate import Accelerator, FullyShardedDataParallelPlugin
from accelerate.utils.fsdp_utils import fsdp2_prepare_model
from peft import get_peft_model
from PIL import Image
from torch.distributed.fsdp import FSDPModule
from transformers import AutoModelForImageTextToText, AutoProcessor
from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

from modeling_litegpt import LiteGPTForConditionalGeneration
from processing_litegpt import completion_messages, format_diagnosis_answer, prompt_messages

base, dump, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
accelerator = Accelerator(cpu=True)  # what Accelerate sets up on CPUs, FSDP config or not: gloo DDP (MULTI_CPU)
rank, world = accelerator.process_index, accelerator.num_processes
plugin = FullyShardedDataParallelPlugin()  # configs/accelerate/fsdp.yaml, as the launcher exported it

processor = AutoProcessor.from_pretrained(base, trust_remote_code=True)
collator = DataCollatorForVisionLanguageModeling(processor, completion_only_loss=True)


def batch_of(seed):
    rng = np.random.default_rng(seed)
    rows = [{{"images": [Image.fromarray(rng.integers(0, 255, (48, 48), dtype=np.uint8)).convert("RGB")],
              "prompt": prompt_messages("diagnosis"), "completion": completion_messages(format_diagnosis_answer(labels))}}
            for labels in (["COPD"], ["No finding"])]
    return collator(rows)


torch.manual_seed(0)
model = get_peft_model(AutoModelForImageTextToText.from_pretrained(base, trust_remote_code=True),
                       LiteGPTForConditionalGeneration.lora_config(r=4, lora_alpha=8, lora_dropout=0.0))
initial = {{n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}}
batches = [batch_of(r) for r in range(world)]

# The same steps in one process on both ranks' batches: the gradient of their mean loss.
reference = copy.deepcopy(model)
optimizer = torch.optim.AdamW([p for p in reference.parameters() if p.requires_grad], lr=1e-2)
for _ in range(steps):
    (sum(reference(**b).loss for b in batches) / world).backward()
    optimizer.step()
    optimizer.zero_grad()

# FSDP2 as Accelerate prepares it on GPUs, here on the CPU process group.
accelerator.state.fsdp_plugin = plugin
sharded = fsdp2_prepare_model(accelerator, model)
optimizer = torch.optim.AdamW([p for p in sharded.parameters() if p.requires_grad], lr=1e-2)
losses = []
for _ in range(steps):
    loss = sharded(**batches[rank]).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    losses.append(loss.item())
full = {{n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach() for n, p in sharded.named_parameters()
         if p.requires_grad}}
expected = {{n: p.detach() for n, p in reference.named_parameters() if p.requires_grad}}
report = {{
    "rank": rank, "world": world, "distributed_type": str(accelerator.distributed_type.value),
    "fsdp_version": plugin.fsdp_version,
    "wrapped": sorted({{type(m).__name__ for m in sharded.modules() if isinstance(m, FSDPModule)}}),
    "same_names": sorted(full) == sorted(expected),
    "max_diff_vs_one_process": max(float((full[n] - expected[n]).abs().max()) for n in expected),
    "trained": sum(int(not torch.equal(full[n], initial[n])) for n in initial), "trainable": len(initial),
    "local_numel": sum(p.to_local().numel() for p in sharded.parameters() if hasattr(p, "to_local")),
    "numel": sum(p.numel() for p in sharded.parameters()), "losses": losses,
}}
with open(f"{{dump}}/rank{{rank}}.json", "w") as handle:
    json.dump(report, handle)
'''


@pytest.mark.slow
def test_fsdp2_on_two_cpu_processes_shards_and_trains_like_one_process(tmp_path):
    """Accelerate 1.15 cannot run FSDP on CPUs (it sets up DDP instead), but torch's FSDP2 can: two gloo processes
    launched with configs/accelerate/fsdp.yaml shard the tiny LiteGPT + LoRA with Accelerate's own
    `fsdp2_prepare_model` and that config's wrap units, train three steps, and end with the weights one process
    gets from the mean loss of both ranks' batches."""
    import json
    import os
    import subprocess
    import sys

    from test_train_sft import build_tiny_base

    base = build_tiny_base(tmp_path / "base")
    dump = tmp_path / "dump"
    dump.mkdir()
    worker = tmp_path / "fsdp_worker.py"
    worker.write_text(FSDP_WORKER.format(root=str(ROOT)))
    steps = 3
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(FSDP_CONFIG), "--num_processes", "2",
        "--mixed_precision", "no", "--num_cpu_threads_per_process", "1", "--main_process_port", "0",
        str(worker), str(base), str(dump), str(steps),
    ]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    reports = [json.loads((dump / f"rank{r}.json").read_text()) for r in (0, 1)]
    for rank, report in enumerate(reports):
        assert report["rank"] == rank and report["world"] == 2
        assert report["distributed_type"] == "MULTI_CPU"  # Accelerate's own set-up on CPUs: not FSDP
        assert report["fsdp_version"] == 2
        assert {"FSDPLlamaDecoderLayer", "FSDPCLIPEncoderLayer", "FSDPTimmWrapperModel"} <= set(report["wrapped"])
        assert report["same_names"] and report["max_diff_vs_one_process"] <= 1e-6
        assert report["trained"] == report["trainable"] > 0
        assert len(report["losses"]) == steps and all(math.isfinite(x) for x in report["losses"])
    # Each rank holds a shard: the two local parts add up to the whole model.
    assert reports[0]["local_numel"] + reports[1]["local_numel"] == reports[0]["numel"]
    assert max(r["local_numel"] for r in reports) < reports[0]["numel"]


def test_model_card_takes_table_1_from_the_stage_2_answers():
    from litegpt_train.hub import _headline_metrics

    def finding(f1):
        return {"finding": {"strict": {"Finding": {"f1": f1}}}}

    rows = dict(_headline_metrics({"tasks": {"grounding": finding(0.25), "diagnosis": finding(0.75)}}))
    assert rows["Finding F1 (strict), the paper's Table 1 (stage-2 answers)"] == 0.75
    assert rows["Stage-1 Finding F1 (strict)"] == 0.25
    assert "Finding F1 (strict), the paper's Table 1 (stage-2 answers)" not in dict(_headline_metrics({"tasks": {"grounding": finding(0.25)}}))
