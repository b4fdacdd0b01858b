"""LiteGPT-CXR two-stage instruction tuning with TRL's `SFTTrainer` (LoRA on the LM's q/v, projector in full).

    accelerate launch train_sft.py --config configs/litegpt-7b.yaml                 # the paper's recipe, both stages
    accelerate launch --config_file configs/accelerate/fsdp.yaml train_sft.py --config configs/litegpt-7b.yaml \\
        --stage diagnosis --init_from runs/litegpt-7b/grounding                     # one stage, from stage 1's weights
    accelerate launch train_sft.py --config configs/demo.yaml                       # CPU, offline, minutes

One YAML holds `SFTConfig` fields and this script's (`litegpt_train.arguments.LiteGPTScriptArguments`); command-line
flags override it; an unknown key is an error. Stage `s` trains into `<output_dir>/<s>` starting from the previous
stage's adapter + projector (the first stage from `init_from`, e.g. the MiniGPT-v2 init adapter of
`scripts/convert_litegpt.py`, or a fresh LoRA). Each stage folder ends with the adapter (safetensors), the
processor, `README.md` (model card), `litegpt_training.json` and `training_log.csv`; `--push_to_hub` uploads exactly
`litegpt_train.hub.upload_file_set(folder)` to `<hub_model_id>-<stage>`.

Resume: `--resume_from_checkpoint latest` skips finished stages and continues an interrupted one from its newest
`checkpoint-N` (optimizer, scheduler, RNG and data order restored); a path resumes that checkpoint's stage.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch
from accelerate import PartialState
from accelerate.utils import DistributedType
from transformers import enable_full_determinism, set_seed
from transformers.trainer_utils import get_last_checkpoint
from trl import SFTConfig, TrlParser

from litegpt_train.arguments import (
    STAGE_SOURCES,
    LiteGPTScriptArguments,
    check_arguments,
    check_lr_schedule,
    looks_like_hub_id,
    sft_config_fields,
)
from litegpt_train.callbacks import CSVLoggerCallback
from litegpt_train.data import add_length_column, build_task_dataset, load_stage_data
from litegpt_train.encoder_warmup import WARMUP_RECORD, warm_up_encoders
from litegpt_train.feature_cache import CachedProjectorInputsCollator, ProjectorInputCache
from litegpt_train.hub import TRAINING_RECORD, push_stage, write_model_card
from litegpt_train.model import (
    attach_adapter,
    check_adapter_matches_base,
    fit_projector_input_standardization,
    load_base_model,
)
from litegpt_train.precision import resolve_cpu_mixed_precision
from litegpt_train.trainer import LENGTH_SAMPLERS, LiteGPTSFTTrainer

logger = logging.getLogger("train_sft")

RESUME_LATEST = ("latest", "true", "auto")
EVAL_DATASET = {stage: f"{family}:{config}" for stage, (family, config) in STAGE_SOURCES.items()}


@dataclass
class StagePlan:
    """What one stage will do, decided (and checked) before any training starts."""

    stage: str
    output_dir: Path
    args: SFTConfig
    init_from: str | None
    resume_from: str | None = None
    skip: bool = False


# ----------------------------------------------------------------------------------------- arguments
def make_parser() -> TrlParser:
    return TrlParser((LiteGPTScriptArguments, SFTConfig), allow_abbrev=False)


def parse_arguments(argv: list[str] | None = None) -> tuple[LiteGPTScriptArguments, SFTConfig]:
    """YAML (`--config`) + command line into the two dataclasses; unknown keys and bad values raise here."""
    script_args, training_args = make_parser().parse_args_and_config(args=argv)
    check_arguments(script_args, sft_config_fields(SFTConfig))
    check_lr_schedule(script_args, training_args)
    training_args = resolve_cpu_mixed_precision(training_args)
    if training_args.push_to_hub:
        if not training_args.hub_model_id:
            raise ValueError("push_to_hub needs hub_model_id (stage repos are <hub_model_id>-<stage>)")
        if not script_args.hub_base_model_id and not looks_like_hub_id(script_args.model_name_or_path):
            raise ValueError(
                f"push_to_hub: the base {script_args.model_name_or_path} is a local folder; set hub_base_model_id to "
                "the Hub repo of that base (with its remote code) so that the pushed adapter can find it; push the "
                f"base with: python -m scripts.litegpt_checkpoint --out {script_args.model_name_or_path} "
                "--push_to_hub <repo> --push_only"
            )
    if fsdp_requested() and script_args.quantization != "none":
        raise ValueError(
            f"quantization {script_args.quantization!r} under FSDP: bitsandbytes weights are not sharded; use "
            "--quantization none (bf16 LM) with configs/accelerate/fsdp.yaml, or the DDP config multi_gpu.yaml"
        )
    if training_args.max_length is not None:
        logger.warning("max_length=%s can cut image tokens or answers; the recipes use None", training_args.max_length)
    return script_args, training_args


def fsdp_requested() -> bool:
    """`accelerate launch` with an FSDP config (e.g. configs/accelerate/fsdp.yaml) exports ACCELERATE_USE_FSDP=true."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def check_distribution(state: PartialState) -> None:
    """An FSDP launch must run FSDP. Accelerate 1.15 shards only on accelerators: on CPUs (use_cpu) it runs DDP, with
    every process holding the whole model, and without use_cpu each process trains alone; both are refused here."""
    if fsdp_requested() and state.distributed_type != DistributedType.FSDP:
        raise ValueError(
            f"the launch asks for FSDP but Accelerate set up {state.distributed_type.value} ({state.num_processes} "
            "process(es)): Accelerate runs FSDP on GPUs/accelerators only. On CPUs use configs/accelerate/cpu_ddp.yaml"
        )


def stage_arguments(training_args: SFTConfig, script_args: LiteGPTScriptArguments, stage: str) -> SFTConfig:
    """The run's SFTConfig for one stage: its folder, its overrides; Hub pushes are done by `push_stage`."""
    overrides = dict(script_args.stage_overrides.get(stage, {}))
    overrides["output_dir"] = str(Path(training_args.output_dir) / stage)
    if training_args.hub_model_id and "hub_model_id" not in overrides:
        overrides["hub_model_id"] = f"{training_args.hub_model_id}-{stage}"
    overrides["push_to_hub"] = False
    overrides["resume_from_checkpoint"] = None
    return dataclasses.replace(training_args, **overrides)


def _stage_finished(output_dir: Path) -> bool:
    record = output_dir / TRAINING_RECORD
    return record.is_file() and json.loads(record.read_text()).get("completed", False)


def plan_stages(script_args: LiteGPTScriptArguments, training_args: SFTConfig) -> list[StagePlan]:
    """Per stage: arguments, starting adapter, checkpoint to resume, or skip. Raises on any inconsistency."""
    resume = training_args.resume_from_checkpoint
    resume_latest = isinstance(resume, str) and resume.lower() in RESUME_LATEST
    resume_path = Path(resume).resolve() if resume and not resume_latest else None
    if resume_path is not None and not (resume_path / "trainer_state.json").is_file():
        raise FileNotFoundError(f"resume_from_checkpoint {resume}: not a Trainer checkpoint (no trainer_state.json)")
    plans: list[StagePlan] = []
    previous = script_args.init_from
    for stage in script_args.stage_list:
        args = stage_arguments(training_args, script_args, stage)
        plan = StagePlan(stage=stage, output_dir=Path(args.output_dir), args=args, init_from=previous)
        finished = _stage_finished(plan.output_dir)
        if resume_path is not None and resume_path.parent == plan.output_dir.resolve():
            plan.resume_from = str(resume_path)
        elif finished and (resume_latest or resume_path is not None) and not script_args.overwrite_stages:
            plan.skip = True
        elif finished and not script_args.overwrite_stages:
            raise FileExistsError(
                f"stage {stage}: {plan.output_dir} already holds a finished adapter; pass --overwrite_stages true to "
                "retrain it or --resume_from_checkpoint latest to skip finished stages"
            )
        elif resume_latest and plan.output_dir.is_dir():
            plan.resume_from = get_last_checkpoint(str(plan.output_dir))
        plans.append(plan)
        previous = str(plan.output_dir)
    if resume_path is not None and not any(p.resume_from for p in plans):
        raise ValueError(f"resume_from_checkpoint {resume} is not inside any stage folder of this run")
    return plans


# ----------------------------------------------------------------------------------------- demo inputs
def prepare_offline_inputs(script_args: LiteGPTScriptArguments) -> None:
    """Demo only: write the synthetic sample and build the SmolLM2 base when they are missing."""
    if script_args.synthetic_data and script_args.data_dir and not Path(script_args.data_dir).exists():
        from datasets_scripts.synthetic import VINDR_VERSION_DIR, generate

        root = Path(script_args.data_dir)
        if not str(root).endswith(VINDR_VERSION_DIR):
            raise ValueError(f"synthetic_data: data_dir must end with {VINDR_VERSION_DIR}, got {root}")
        out = Path(str(root)[: -len(VINDR_VERSION_DIR)])
        logger.info("writing the synthetic sample to %s", out)
        generate(out, **script_args.synthetic_settings)
    base = Path(script_args.model_name_or_path)
    if script_args.base_preset and not base.exists():
        from litegpt_train.base import build_base_checkpoint

        logger.info("building the %s base in %s (SmolLM2 GGUF)", script_args.base_preset, base)
        warmup: dict[str, Any] = {}
        prepare = (lambda model, processor: warm_up_demo_encoders(script_args, model, processor, warmup)) \
            if script_args.encoder_warmup_epochs else None  # fmt: skip
        build_base_checkpoint(script_args.base_preset, base, prepare=prepare)
        if warmup:
            (base / WARMUP_RECORD).write_text(json.dumps(warmup, indent=2) + "\n")
    elif script_args.encoder_warmup_epochs:
        check_base_warmup(script_args, base)


def warm_up_demo_encoders(script_args: LiteGPTScriptArguments, model: Any, processor: Any, record: dict) -> dict[str, str]:
    """Demo only: the encoder warm-up on the first stage's training rows, before the new base is saved."""
    first_stage = script_args.stage_list[0]
    if STAGE_SOURCES[first_stage] != ("vindr_cxr", "grounding"):
        raise ValueError(f"the encoder warm-up learns from VinDr-CXR boxes: the first stage must be grounding, not {first_stage}")
    splits, source = build_task_dataset(script_args, first_stage)
    record.update(warm_up_encoders(model, processor, splits["train"], epochs=script_args.encoder_warmup_epochs,
                                   learning_rate=script_args.encoder_warmup_learning_rate),
                  data=source)  # fmt: skip
    return {"vision towers": f"random initialisation, then the demo-only encoder warm-up ({WARMUP_RECORD}): "
            f"{record['epochs']} epochs on {record['images']} training images, patch x local-label targets; frozen "
            "afterwards"}  # fmt: skip


def check_base_warmup(script_args: LiteGPTScriptArguments, base: Path) -> None:
    """An existing base must carry the warm-up the config asks for: a mismatch is an error, never a silent mix."""
    path = base / WARMUP_RECORD
    record = json.loads(path.read_text()) if path.is_file() else None
    wanted = (script_args.encoder_warmup_epochs, script_args.encoder_warmup_learning_rate)
    if record is None or (record["epochs"], record["learning_rate"]) != wanted:
        found = "no encoder warm-up" if record is None else f"warm-up {record['epochs']} epochs at {record['learning_rate']}"
        raise ValueError(
            f"the base {base} exists with {found}, but the config asks for {wanted[0]} epochs at {wanted[1]}: remove "
            "the folder to rebuild it, or change the config"
        )


def check_init_adapter(script_args: LiteGPTScriptArguments) -> None:
    """An adapter made for another base fails here, on a weightless (meta) copy of the base, before training."""
    if not script_args.init_from:
        return
    from transformers import AutoConfig, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(
        script_args.model_name_or_path, trust_remote_code=True, revision=script_args.model_revision
    )
    with torch.device("meta"):
        skeleton = AutoModelForImageTextToText.from_config(config, trust_remote_code=True)
    check_adapter_matches_base(script_args.init_from, skeleton)


# ----------------------------------------------------------------------------------------- training
def _collator(processor: Any, args: SFTConfig, cache: ProjectorInputCache | None):
    if cache is None:
        return None  # TRL's own vision collator
    return CachedProjectorInputsCollator(
        processor,
        cache,
        max_length=args.max_length,
        completion_only_loss=True if args.completion_only_loss is None else args.completion_only_loss,
        pad_to_multiple_of=args.pad_to_multiple_of,
    )


def train_stage(
    plan: StagePlan,
    script_args: LiteGPTScriptArguments,
    processor: Any,
    data: Any,
    cache: ProjectorInputCache | None,
) -> Path:
    """Train one stage and leave a finished, loadable adapter folder behind."""
    started = time.time()
    # Seed before the fresh LoRA is drawn (get_peft_model runs before SFTTrainer seeds): same seed, same run.
    (enable_full_determinism if plan.args.full_determinism else set_seed)(plan.args.seed)
    model = load_base_model(script_args, gradient_checkpointing=plan.args.gradient_checkpointing)
    if plan.init_from is None and getattr(model.config, "projector_input_standardization", False):
        # A fresh projector (first stage from the base): fit its input statistics on this stage's training
        # images before the adapter copies the projector; later stages inherit them with the adapter.
        fit_projector_input_standardization(
            model, processor, (row["images"] for row in data.train), total=len(data.train),
            show_progress=not plan.args.disable_tqdm,
        )  # fmt: skip
    model = attach_adapter(model, script_args, plan.init_from)
    if cache is not None:
        rows = [data.train] + ([data.validation] if data.validation is not None else [])
        for split in rows:
            cache.fill(model, processor, (row["images"] for row in split), total=len(split),
                       show_progress=not plan.args.disable_tqdm)
    train_rows = data.train
    if plan.args.train_sampling_strategy in LENGTH_SAMPLERS:
        train_rows = add_length_column(train_rows, processor, plan.args.length_column_name)
    trainer = LiteGPTSFTTrainer(
        model=model,
        args=plan.args,
        train_dataset=train_rows,
        eval_dataset=data.validation if plan.args.eval_strategy != "no" else None,
        processing_class=processor,
        data_collator=_collator(processor, plan.args, cache),
        callbacks=[CSVLoggerCallback()],
        role_learning_rates={
            "projector": script_args.projector_learning_rate,
            "vision": script_args.vision_tower_learning_rate,
        },
        # A fresh projector first learns alone (LLaVA's feature alignment); later stages inherit it aligned.
        role_start_steps={"lora": script_args.projector_alignment_steps} if plan.init_from is None else None,
        loss_normalization=script_args.loss_normalization,
        lr_schedule=script_args.lr_schedule,
    )
    result = trainer.train(resume_from_checkpoint=plan.resume_from)
    trainer.save_model(str(plan.output_dir))
    if trainer.accelerator.is_main_process:
        finish_stage_folder(plan, script_args, data, result.metrics, time.time() - started, cache)
    trainer.accelerator.wait_for_everyone()
    del trainer, model
    gc.collect()
    return plan.output_dir


def finish_stage_folder(plan, script_args, data, metrics: dict[str, Any], seconds: float, cache) -> None:
    """Training record (marks the stage finished) and model card."""
    record = {
        "completed": True,
        "stage": plan.stage,
        "base_model": script_args.model_name_or_path,
        "base_revision": script_args.model_revision,
        "init_from": plan.init_from,
        "resumed_from": plan.resume_from,
        "train_metrics": metrics,
        "wall_time_s": round(seconds, 1),
        "projector_input_cache": None if cache is None else {"images": len(cache), "hits": cache.hits,
                                                             "misses": cache.misses},
        "data": data.sources,
        "script_arguments": dataclasses.asdict(script_args),
        "sft_config": plan.args.to_dict(),
    }
    (plan.output_dir / TRAINING_RECORD).write_text(json.dumps(record, indent=2, default=str) + "\n")
    write_stage_card(plan, script_args, record)


def write_stage_card(plan: StagePlan, script_args: LiteGPTScriptArguments, record: dict[str, Any]) -> None:
    write_model_card(
        plan.output_dir,
        plan.stage,
        base_model=script_args.hub_base_model_id or script_args.model_name_or_path,
        training_config={"script_arguments": record["script_arguments"], "sft_config": record["sft_config"]},
        data_sources=record["data"],
    )


# ----------------------------------------------------------------------------------------- eval
def evaluate_stage(plan: StagePlan, script_args: LiteGPTScriptArguments) -> Path:
    """eval.py on the stage's own task (stage 1 -> grounding tables, stage 2 -> diagnosis), into <stage>/eval."""
    import eval as litegpt_eval_cli

    family, _ = STAGE_SOURCES[plan.stage]
    data_dir, settings = (
        (script_args.data_dir, script_args.dataset_settings)
        if family == "vindr_cxr"
        else (script_args.mimic_data_dir, script_args.mimic_settings)
    )
    out = plan.output_dir / "eval"
    argv = [
        "--model", str(plan.output_dir),
        "--dataset", EVAL_DATASET[plan.stage],
        "--data_dir", str(data_dir),
        "--split", script_args.eval_split,
        "--out", str(out),
        "--batch_size", str(script_args.eval_batch_size),
        "--dtype", script_args.eval_dtype,
        "--bootstrap", str(script_args.eval_bootstrap),
        "--dataset_settings", json.dumps(settings),
    ]
    if script_args.dataset_cache_dir:
        argv += ["--cache_dir", script_args.dataset_cache_dir]
    if script_args.eval_baselines:
        argv += ["--baselines"]
    if not script_args.eval_label_scores:
        argv += ["--no_label_scores"]
    if not script_args.eval_coco_meteor:
        argv += ["--no_coco_meteor"]
    status = litegpt_eval_cli.main(argv)
    if status:
        raise RuntimeError(f"eval.py failed on stage {plan.stage} (exit {status})")
    return out


# ----------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> list[Path]:
    script_args, training_args = parse_arguments(argv)
    state = PartialState()
    check_distribution(state)
    logging.basicConfig(
        level=logging.INFO if state.is_main_process else logging.WARNING,
        format="%(asctime)s %(name)s: %(message)s",
    )
    with state.main_process_first():
        if state.is_main_process:
            prepare_offline_inputs(script_args)
    plans = plan_stages(script_args, training_args)
    check_init_adapter(script_args)

    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(
        script_args.model_name_or_path, trust_remote_code=True, revision=script_args.model_revision
    )
    if "windowing" in script_args.dataset_settings:
        # The stage folders' processor converts a DICOM input the way the training images were converted.
        processor.windowing = script_args.dataset_settings["windowing"]
    with state.main_process_first():  # one process builds each dataset; the others read the cache
        stage_data = {p.stage: load_stage_data(script_args, p.stage, processor, training_args.dataset_num_proc) for p in plans if not p.skip}

    cache = ProjectorInputCache() if script_args.cache_projector_inputs else None
    for plan in plans:
        if plan.skip:
            logger.info("stage %s: finished earlier in %s, skipped", plan.stage, plan.output_dir)
            continue
        logger.info("stage %s: training into %s (from %s%s)", plan.stage, plan.output_dir, plan.init_from or "a fresh LoRA",
                    f", resuming {plan.resume_from}" if plan.resume_from else "")
        train_stage(plan, script_args, processor, stage_data[plan.stage], cache)

    if state.is_main_process:
        for plan in plans:
            if script_args.eval_after_training:
                evaluate_stage(plan, script_args)
                record = json.loads((plan.output_dir / TRAINING_RECORD).read_text())
                write_stage_card(plan, script_args, record)  # now with the eval table
            if training_args.push_to_hub:
                push_stage(
                    plan.output_dir,
                    repo_id=plan.args.hub_model_id,
                    hub_base_model_id=script_args.hub_base_model_id or script_args.model_name_or_path,
                    private=training_args.hub_private_repo,
                    token=training_args.hub_token,
                    revision=training_args.hub_revision,
                )
    state.wait_for_everyone()
    return [plan.output_dir for plan in plans]


if __name__ == "__main__":
    main()
