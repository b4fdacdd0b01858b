"""Train the MedKLIP-style model on MIMIC-CXR existence with the Hugging Face `Trainer` (under Accelerate).

    accelerate launch train_medklip.py --config configs/medklip-study.yaml    # ResNet-50 + ClinicalBERT, 512 px
    accelerate launch --num_cpu_threads_per_process 2 train_medklip.py --config configs/medklip-cpu.yaml   # CPU demo

One YAML holds `TrainingArguments` fields and this script's (`medklip.training.MedKLIPScriptArguments`); flags
override it; an unknown key is an error. Data: the project's MIMIC-CXR builder (`existence` config, and the
`report` config's text for the semantic loss). The run folder ends with the model (safetensors + remote code,
`AutoModel.from_pretrained(dir, trust_remote_code=True)`), tokenizer, image processor, `medklip_training.json`,
`training_log.csv`, `README.md` (model card) and, with `eval_after_training`, `eval/` (eval.py on the test split
with validation thresholds and the trivial baselines, `existence_table.md`). `--push_to_hub --hub_model_id org/name`
uploads exactly `medklip.training.upload_file_set(dir)` (private unless `hub_private_repo: false`).

Resume: `--resume_from_checkpoint latest` continues from the newest `checkpoint-N` of `output_dir` (a path: that one).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from accelerate import PartialState
from transformers import TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint
from trl import TrlParser

from litegpt_train.callbacks import CSVLoggerCallback
from medklip.data import MedKLIPCollator
from medklip.training import (
    MedKLIPScriptArguments,
    MedKLIPTrainer,
    check_arguments,
    evaluate_run,
    finish_run,
    load_or_build_model,
    prepare_data,
    prepare_synthetic_data,
    push_run,
    training_record,
    write_model_card,
)

logger = logging.getLogger("train_medklip")
RESUME_LATEST = ("latest", "true", "auto")


def parse_arguments(argv: list[str] | None = None) -> tuple[MedKLIPScriptArguments, TrainingArguments]:
    parser = TrlParser((MedKLIPScriptArguments, TrainingArguments), allow_abbrev=False)
    script_args, training_args = parser.parse_args_and_config(args=argv)
    check_arguments(script_args)
    if training_args.push_to_hub and not training_args.hub_model_id:
        raise ValueError("push_to_hub needs hub_model_id")
    return script_args, training_args


def resume_checkpoint(training_args: TrainingArguments) -> str | None:
    value = training_args.resume_from_checkpoint
    if value and str(value).lower() in RESUME_LATEST:
        return get_last_checkpoint(training_args.output_dir) if Path(training_args.output_dir).is_dir() else None
    return value or None


def main(argv: list[str] | None = None) -> Path:
    script_args, training_args = parse_arguments(argv)
    state = PartialState()
    logging.basicConfig(level=logging.INFO if state.is_main_process else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s")
    push = training_args.push_to_hub
    training_args.push_to_hub = False  # the Trainer would push checkpoints; the finished run is pushed once below
    training_args.remove_unused_columns = False
    training_args.prediction_loss_only = True
    set_seed(training_args.seed)
    with state.main_process_first():
        if state.is_main_process:
            prepare_synthetic_data(script_args)
    model, tokenizer, image_processor = load_or_build_model(script_args, seed=training_args.seed)
    model.register_for_auto_class("AutoModel")  # checkpoints carry the remote code too
    with state.main_process_first():  # one process builds the dataset; the others read the cache
        data = prepare_data(script_args, model, image_processor, script_args.dataset_num_proc)
    trainer = MedKLIPTrainer(
        model=model,
        args=training_args,
        train_dataset=data.train,
        eval_dataset=data.validation if training_args.eval_strategy != "no" else None,
        data_collator=MedKLIPCollator(tokenizer, script_args.report_max_length),
        callbacks=[CSVLoggerCallback()],
    )
    started = time.time()
    trainer.train(resume_from_checkpoint=resume_checkpoint(training_args))
    output_dir = Path(training_args.output_dir)
    if state.is_main_process:
        record = training_record(script_args, training_args, data, time.time() - started)
        finish_run(output_dir, trainer.model, tokenizer, image_processor, record)
        if script_args.eval_after_training:
            evaluate_run(output_dir, script_args, script_args.eval_batch_size)
            write_model_card(output_dir, record)  # now with the existence table
        if push:
            push_run(output_dir, training_args.hub_model_id, private=training_args.hub_private_repo,
                     token=training_args.hub_token, revision=training_args.hub_revision)
    state.wait_for_everyone()
    return output_dir


if __name__ == "__main__":
    main()
