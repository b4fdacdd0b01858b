"""LiteGPT-CXR two-stage instruction tuning with TRL's `SFTTrainer` (LoRA on the LM's q/v, projector in full).

    accelerate launch train_sft.py --config configs/litegpt-7b.yaml                 # the paper's recipe, both stages
    accelerate launch --config_file configs/accelerate/fsdp.yaml train_sft.py --config configs/litegpt-7b.yaml \\
        --load_in_8bit false --stage diagnosis --init_from runs/litegpt-7b/grounding  # one stage, from stage 1's weights
    accelerate launch train_sft.py --config configs/demo.yaml                       # CPU, offline, minutes

One YAML holds `SFTConfig` fields and ours (`litegpt_train.arguments`: TRL's `ModelConfig` with LiteGPT's defaults
and our grouped dataclasses); command-line flags override it; an unknown key is an error. Stage `s` trains into
`<output_dir>/<s>` starting from the previous stage's adapter + projector (the first stage from `init_from`, e.g. the
MiniGPT-v2 init adapter of `scripts/convert_litegpt.py`, or a fresh LoRA; `litegpt_train.stages`). Each stage folder
ends with the adapter (safetensors), the processor, `README.md` (model card), `litegpt_training.json` and
`training_log.csv`; `--push_to_hub` uploads exactly `litegpt_train.hub.upload_file_set(folder)` to
`<hub_model_id>-<stage>`.

Resume: `--resume_from_checkpoint latest` skips finished stages and continues an interrupted one from its newest
`checkpoint-N` (optimizer, scheduler, RNG and data order restored); a path resumes that checkpoint's stage.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch
from accelerate import PartialState
from accelerate.utils import DistributedType
from trl import SFTConfig, TrlParser

from datasets_scripts.synthetic import VINDR_VERSION_DIR, generate
from litegpt_eval import EvalArguments, evaluate
from litegpt_train.arguments import (
    ARGUMENT_GROUPS,
    STAGE_SOURCES,
    LiteGPTModelConfig,
    RunArguments,
    check_run,
    looks_like_hub_id,
)
from litegpt_train.data import build_task_dataset, load_stage_data
from litegpt_train.encoder_warmup import WARMUP_RECORD, warm_up_encoders
from litegpt_train.feature_cache import ProjectorInputCache
from litegpt_train.hub import TRAINING_RECORD, push_stage
from litegpt_train.model import check_adapter_matches_base
from litegpt_train.precision import resolve_cpu_mixed_precision
from litegpt_train.stages import StagePlan, plan_stages, train_stage, write_stage_card

logger = logging.getLogger("train_sft")

EVAL_DATASET = {stage: f"{family}:{config}" for stage, (family, config) in STAGE_SOURCES.items()}


# ----------------------------------------------------------------------------------------- arguments
def make_parser() -> TrlParser:
    return TrlParser((*ARGUMENT_GROUPS, SFTConfig), allow_abbrev=False)


def parse_arguments(argv: list[str] | None = None) -> RunArguments:
    """YAML (`--config`) + command line into the argument groups; unknown keys and bad values raise here."""
    *groups, training_args = make_parser().parse_args_and_config(args=argv)
    run = RunArguments(*groups, sft=resolve_cpu_mixed_precision(training_args))
    check_run(run)
    if run.sft.push_to_hub:
        if not run.sft.hub_model_id:
            raise ValueError("push_to_hub needs hub_model_id (stage repos are <hub_model_id>-<stage>)")
        base = run.model.model_name_or_path
        if not run.model.hub_base_model_id and not looks_like_hub_id(base):
            raise ValueError(
                f"push_to_hub: the base {base} is a local folder; set hub_base_model_id to the Hub repo of that base "
                "(with its remote code) so that the pushed adapter can find it; push the base with: python -m "
                f"scripts.litegpt_checkpoint --out {base} --push_to_hub <repo> --push_only"
            )
    sharding = sharded_launch()
    if sharding and run.model.quantization_bits:
        raise ValueError(
            f"{run.model.quantization_bits}-bit language model under {sharding}: bitsandbytes weights are not sharded; "
            "set load_in_8bit / load_in_4bit false (bf16 LM), or use the DDP config configs/accelerate/multi_gpu.yaml"
        )
    if run.sft.max_length is not None:
        logger.warning("max_length=%s can cut image tokens or answers; the recipes use None", run.sft.max_length)
    return run


def fsdp_requested() -> bool:
    """`accelerate launch` with an FSDP config (e.g. configs/accelerate/fsdp.yaml) exports ACCELERATE_USE_FSDP=true."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def sharded_launch() -> str | None:
    """`"FSDP"` or `"DeepSpeed"` when `accelerate launch` was given such a config (it exports ACCELERATE_USE_FSDP /
    ACCELERATE_USE_DEEPSPEED), else None."""
    if fsdp_requested():
        return "FSDP"
    return "DeepSpeed" if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true" else None


def check_distribution(state: PartialState) -> None:
    """An FSDP launch must run FSDP. Accelerate 1.15 shards only on accelerators: on CPUs (use_cpu) it runs DDP, with
    every process holding the whole model, and without use_cpu each process trains alone; both are refused here."""
    if fsdp_requested() and state.distributed_type != DistributedType.FSDP:
        raise ValueError(
            f"the launch asks for FSDP but Accelerate set up {state.distributed_type.value} ({state.num_processes} "
            "process(es)): Accelerate runs FSDP on GPUs/accelerators only. On CPUs use configs/accelerate/cpu_ddp.yaml"
        )


# ----------------------------------------------------------------------------------------- demo inputs
def prepare_offline_inputs(run: RunArguments) -> None:
    """Demo only: write the synthetic sample and build the SmolLM2 base when they are missing (a sample already on
    disk must have been written with the config's `synthetic_settings`)."""
    data = run.data
    if data.synthetic_data and data.data_dir:
        root = synthetic_sample_root(data.data_dir)
        if not Path(data.data_dir).exists():
            if root is None:
                raise ValueError(f"synthetic_data: data_dir must end with {VINDR_VERSION_DIR}, got {data.data_dir}")
            logger.info("writing the synthetic sample to %s", root)
            generate(root, **data.synthetic_settings)
        elif root is not None:
            check_synthetic_sample(root, data.synthetic_settings)
    base = Path(run.model.model_name_or_path)
    if run.model.base_preset and not base.exists():
        from litegpt_train.base import build_base_checkpoint

        logger.info("building the %s base in %s (SmolLM2 GGUF)", run.model.base_preset, base)
        warmup: dict[str, Any] = {}
        prepare = (lambda model, processor: warm_up_demo_encoders(run, model, processor, warmup)) \
            if run.model.encoder_warmup_epochs else None  # fmt: skip
        build_base_checkpoint(run.model.base_preset, base, prepare=prepare)
        if warmup:
            (base / WARMUP_RECORD).write_text(json.dumps(warmup, indent=2) + "\n")
    elif run.model.encoder_warmup_epochs:
        check_base_warmup(run.model, base)


def synthetic_sample_root(data_dir: str) -> Path | None:
    """The folder the synthetic sample is written to for a VinDr-CXR `data_dir` (`<root>/vindr-cxr/1.0.0`); None
    when `data_dir` does not end that way."""
    text = str(data_dir)
    return Path(text[: -len(VINDR_VERSION_DIR)]) if text.endswith(VINDR_VERSION_DIR) else None


def check_synthetic_sample(root: Path, settings: dict[str, Any]) -> None:
    """Refuse a synthetic sample already on disk that was written with other `synthetic_settings` (a demo folder
    left by an earlier version of the config would otherwise be trained and scored in silence)."""
    manifest_path = root / "manifest.json"
    if not manifest_path.exists():
        return
    written = json.loads(manifest_path.read_text()).get("params", {})
    differ = {k: (written.get(k), v) for k, v in settings.items() if written.get(k) != v}
    if differ:
        details = ", ".join(f"{k}: {old!r} on disk, {new!r} asked" for k, (old, new) in sorted(differ.items()))
        raise ValueError(
            f"the synthetic sample in {root} was written with other settings ({details}). Everything built from it "
            f"(the dataset cache, a warmed-up base, trained stages) is stale too: delete the run folder or choose "
            f"another data_dir."
        )


def warm_up_demo_encoders(run: RunArguments, model: Any, processor: Any, record: dict) -> dict[str, str]:
    """Demo only: the encoder warm-up on the first stage's training rows, before the new base is saved."""
    first_stage = run.stages.stage_list[0]
    if STAGE_SOURCES[first_stage] != ("vindr_cxr", "grounding"):
        raise ValueError(f"the encoder warm-up learns from VinDr-CXR boxes: the first stage must be grounding, not {first_stage}")
    splits, source = build_task_dataset(run.data, first_stage)
    record.update(warm_up_encoders(model, processor, splits["train"], epochs=run.model.encoder_warmup_epochs,
                                   learning_rate=run.model.encoder_warmup_learning_rate),
                  data=source)  # fmt: skip
    return {"vision towers": f"random initialisation, then the demo-only encoder warm-up ({WARMUP_RECORD}): "
            f"{record['epochs']} epochs on {record['images']} training images, patch x local-label targets; frozen "
            "afterwards"}  # fmt: skip


def check_base_warmup(model_args: LiteGPTModelConfig, base: Path) -> None:
    """An existing base must carry the warm-up the config asks for: a mismatch is an error, never a silent mix."""
    path = base / WARMUP_RECORD
    record = json.loads(path.read_text()) if path.is_file() else None
    wanted = (model_args.encoder_warmup_epochs, model_args.encoder_warmup_learning_rate)
    if record is None or (record["epochs"], record["learning_rate"]) != wanted:
        found = "no encoder warm-up" if record is None else f"warm-up {record['epochs']} epochs at {record['learning_rate']}"
        raise ValueError(
            f"the base {base} exists with {found}, but the config asks for {wanted[0]} epochs at {wanted[1]}: remove "
            "the folder to rebuild it, or change the config"
        )


def check_init_adapter(run: RunArguments) -> None:
    """An adapter made for another base fails here, on a weightless (meta) copy of the base, before training."""
    if not run.stages.init_from:
        return
    from transformers import AutoConfig, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(
        run.model.model_name_or_path, trust_remote_code=True, revision=run.model.model_revision
    )
    with torch.device("meta"):
        skeleton = AutoModelForImageTextToText.from_config(config, trust_remote_code=True)
    check_adapter_matches_base(run.stages.init_from, skeleton)


# ----------------------------------------------------------------------------------------- eval
def evaluate_stage(plan: StagePlan, run: RunArguments) -> Path:
    """`litegpt_eval.evaluate` on the stage's own task (stage 1 -> grounding tables, stage 2 -> diagnosis), into
    `<stage>/eval`, with the run's `eval_*` settings and the builder settings training used."""
    family, _ = STAGE_SOURCES[plan.stage]
    data_dir, settings = run.data.source(family)
    evaluation = run.evaluation
    out = plan.output_dir / "eval"
    evaluate(EvalArguments(
        out=str(out),
        model=str(plan.output_dir),
        dataset=EVAL_DATASET[plan.stage],
        data_dir=str(data_dir),
        dataset_settings=dict(settings),
        cache_dir=run.data.dataset_cache_dir,
        split=evaluation.eval_split,
        batch_size=evaluation.eval_batch_size,
        dtype=evaluation.eval_dtype,
        bootstrap=evaluation.eval_bootstrap,
        baselines=evaluation.eval_baselines,
        no_label_scores=not evaluation.wants_label_scores(plan.stage),
        no_coco_meteor=not evaluation.eval_coco_meteor,
    ))  # fmt: skip
    return out


# ----------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> list[Path]:
    run = parse_arguments(argv)
    state = PartialState()
    check_distribution(state)
    logging.basicConfig(
        level=logging.INFO if state.is_main_process else logging.WARNING,
        format="%(asctime)s %(name)s: %(message)s",
    )
    with state.main_process_first():
        if state.is_main_process:
            prepare_offline_inputs(run)
    plans = plan_stages(run.stages, run.sft)
    check_init_adapter(run)

    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(
        run.model.model_name_or_path, trust_remote_code=True, revision=run.model.model_revision
    )
    if "windowing" in run.data.dataset_settings:
        # The stage folders' processor converts a DICOM input the way the training images were converted.
        processor.windowing = run.data.dataset_settings["windowing"]
    with state.main_process_first():  # one process builds each dataset; the others read the cache
        stage_data = {p.stage: load_stage_data(run.data, p.stage, processor, run.sft.dataset_num_proc)
                      for p in plans if not p.skip}  # fmt: skip

    cache = ProjectorInputCache() if run.optimisation.cache_projector_inputs else None
    for plan in plans:
        if plan.skip:
            logger.info("stage %s: finished earlier in %s, skipped", plan.stage, plan.output_dir)
            continue
        logger.info("stage %s: training into %s (from %s%s)", plan.stage, plan.output_dir, plan.init_from or "a fresh LoRA",
                    f", resuming {plan.resume_from}" if plan.resume_from else "")  # fmt: skip
        train_stage(plan, run, processor, stage_data[plan.stage], cache)

    if state.is_main_process:
        for plan in plans:
            if run.evaluation.eval_after_training:
                evaluate_stage(plan, run)
                record = json.loads((plan.output_dir / TRAINING_RECORD).read_text())
                write_stage_card(plan, run, record)  # now with the eval table
            if run.sft.push_to_hub:
                push_stage(
                    plan.output_dir,
                    repo_id=plan.args.hub_model_id,
                    hub_base_model_id=run.model.hub_base_model_id or run.model.model_name_or_path,
                    private=run.sft.hub_private_repo,
                    token=run.sft.hub_token,
                    revision=run.sft.hub_revision,
                )
    state.wait_for_everyone()
    return [plan.output_dir for plan in plans]


if __name__ == "__main__":
    main()
