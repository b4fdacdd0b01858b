"""The stages of a `train_sft.py` run: plan them (arguments, starting adapter, resume, skip), train one, finish its
folder.

Stage `s` trains into `<output_dir>/<s>` starting from the previous stage's adapter + projector; the first stage
starts from `init_from` or a fresh LoRA. `resume_from_checkpoint: latest` skips finished stages (their folder holds a
training record marked `completed`) and continues an interrupted one from its newest `checkpoint-N`; a checkpoint
path resumes that checkpoint's stage. Every inconsistency is found by `plan_stages`, before anything trains.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import enable_full_determinism, set_seed
from transformers.trainer_utils import get_last_checkpoint

from .arguments import RunArguments, StageArguments
from .callbacks import CSVLoggerCallback
from .data import StageData, add_length_column
from .feature_cache import CachedProjectorInputsCollator, ProjectorInputCache
from .hub import TRAINING_RECORD, write_model_card
from .model import attach_adapter, fit_projector_input_standardization, load_base_model
from .trainer import LENGTH_SAMPLERS, LiteGPTSFTTrainer

logger = logging.getLogger(__name__)

RESUME_LATEST = ("latest", "true", "auto")


@dataclass
class StagePlan:
    """What one stage will do, decided (and checked) before any training starts."""

    stage: str
    output_dir: Path
    args: Any  # the stage's SFTConfig
    init_from: str | None
    resume_from: str | None = None
    skip: bool = False


def stage_arguments(training_args: Any, stages: StageArguments, stage: str) -> Any:
    """The run's SFTConfig for one stage: its folder, its overrides; Hub pushes are done by `push_stage`."""
    overrides = dict(stages.stage_overrides.get(stage, {}))
    overrides["output_dir"] = str(Path(training_args.output_dir) / stage)
    if training_args.hub_model_id and "hub_model_id" not in overrides:
        overrides["hub_model_id"] = f"{training_args.hub_model_id}-{stage}"
    overrides["push_to_hub"] = False
    overrides["resume_from_checkpoint"] = None
    return dataclasses.replace(training_args, **overrides)


def stage_finished(output_dir: Path) -> bool:
    """The stage folder holds a training record marked completed (written last, after the adapter)."""
    record = output_dir / TRAINING_RECORD
    return record.is_file() and json.loads(record.read_text()).get("completed", False)


def plan_stages(stages: StageArguments, training_args: Any) -> list[StagePlan]:
    """Per stage: arguments, starting adapter, checkpoint to resume, or skip. Raises on any inconsistency."""
    resume = training_args.resume_from_checkpoint
    resume_latest = isinstance(resume, str) and resume.lower() in RESUME_LATEST
    resume_path = Path(resume).resolve() if resume and not resume_latest else None
    if resume_path is not None and not (resume_path / "trainer_state.json").is_file():
        raise FileNotFoundError(f"resume_from_checkpoint {resume}: not a Trainer checkpoint (no trainer_state.json)")
    plans: list[StagePlan] = []
    previous = stages.init_from
    for stage in stages.stage_list:
        args = stage_arguments(training_args, stages, stage)
        plan = StagePlan(stage=stage, output_dir=Path(args.output_dir), args=args, init_from=previous)
        finished = stage_finished(plan.output_dir)
        if resume_path is not None and resume_path.parent == plan.output_dir.resolve():
            plan.resume_from = str(resume_path)
        elif finished and (resume_latest or resume_path is not None) and not stages.overwrite_stages:
            plan.skip = True
        elif finished and not stages.overwrite_stages:
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


# ----------------------------------------------------------------------------------------- training
def _collator(processor: Any, args: Any, cache: ProjectorInputCache | None):
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
    plan: StagePlan, run: RunArguments, processor: Any, data: StageData, cache: ProjectorInputCache | None
) -> Path:
    """Train one stage and leave a finished, loadable adapter folder behind."""
    started = time.time()
    # Seed before the fresh LoRA is drawn (get_peft_model runs before SFTTrainer seeds): same seed, same run.
    (enable_full_determinism if plan.args.full_determinism else set_seed)(plan.args.seed)
    opt = run.optimisation
    model = load_base_model(run.model, opt, gradient_checkpointing=plan.args.gradient_checkpointing)
    if plan.init_from is None and getattr(model.config, "projector_input_standardization", False):
        # A fresh projector (first stage from the base): fit its input statistics on this stage's training
        # images before the adapter copies the projector; later stages inherit them with the adapter.
        fit_projector_input_standardization(
            model, processor, (row["images"] for row in data.train), total=len(data.train),
            show_progress=not plan.args.disable_tqdm,
        )  # fmt: skip
    model = attach_adapter(model, run.model, opt, plan.init_from)
    if cache is not None:
        rows = [data.train] + ([data.validation] if data.validation is not None else [])
        for split in rows:
            cache.fill(model, processor, (row["images"] for row in split), total=len(split),
                       show_progress=not plan.args.disable_tqdm)  # fmt: skip
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
        role_learning_rates={"projector": opt.projector_learning_rate, "vision": opt.vision_tower_learning_rate},
        # A fresh projector first learns alone (LLaVA's feature alignment); later stages inherit it aligned.
        role_start_steps={"lora": opt.projector_alignment_steps} if plan.init_from is None else None,
        loss_normalization=opt.loss_normalization,
        lr_schedule=opt.lr_schedule,
    )
    result = trainer.train(resume_from_checkpoint=plan.resume_from)
    trainer.save_model(str(plan.output_dir))
    if trainer.accelerator.is_main_process:
        finish_stage_folder(plan, run, data, result.metrics, time.time() - started, cache)
    trainer.accelerator.wait_for_everyone()
    del trainer, model
    gc.collect()
    return plan.output_dir


def finish_stage_folder(
    plan: StagePlan, run: RunArguments, data: StageData, metrics: dict[str, Any], seconds: float,
    cache: ProjectorInputCache | None,
) -> None:  # fmt: skip
    """Training record (marks the stage finished) and model card."""
    record = {
        "completed": True,
        "stage": plan.stage,
        "base_model": run.model.model_name_or_path,
        "base_revision": run.model.model_revision,
        "init_from": plan.init_from,
        "resumed_from": plan.resume_from,
        "train_metrics": metrics,
        "wall_time_s": round(seconds, 1),
        "projector_input_cache": None if cache is None else {"images": len(cache), "hits": cache.hits,
                                                             "misses": cache.misses},  # fmt: skip
        "data": data.sources,
        "arguments": run.record(),
        "sft_config": plan.args.to_dict(),
    }
    (plan.output_dir / TRAINING_RECORD).write_text(json.dumps(record, indent=2, default=str) + "\n")
    write_stage_card(plan, run, record)


def write_stage_card(plan: StagePlan, run: RunArguments, record: dict[str, Any]) -> None:
    """The stage folder's model card (with the eval table once `<stage>/eval/metrics.json` exists)."""
    write_model_card(
        plan.output_dir,
        plan.stage,
        base_model=run.model.hub_base_model_id or run.model.model_name_or_path,
        training_config={"arguments": record["arguments"], "sft_config": record["sft_config"]},
        data_sources=record["data"],
    )


__all__ = [
    "RESUME_LATEST",
    "StagePlan",
    "finish_stage_folder",
    "plan_stages",
    "stage_arguments",
    "stage_finished",
    "train_stage",
    "write_stage_card",
]
