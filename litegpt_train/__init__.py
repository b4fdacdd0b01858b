"""Library side of `train_sft.py`.

* `arguments` - the run's argument groups (TRL's `ModelConfig` with LiteGPT's defaults and ours) and their checks;
* `stages` - planning, resuming, training and finishing the stages of a run;
* `data` - a stage's training rows from the dataset builders;
* `model` - loading the base, attaching (or continuing) the LoRA adapter, checking what trains;
* `trainer`, `lm_head`, `schedule`, `precision`, `feature_cache`, `callbacks` - the `SFTTrainer` subclass and what
  it adds: per-role learning rates, loss normalisation, the answer-only LM head, MiniGPT-v2's schedules, CPU bf16,
  the projector-input cache, the CSV log;
* `base` - the base checkpoint: assemble, save, build, describe and push it;
* `hub` - the Hub file sets (derived from the remote code's imports), model cards and uploads.
"""
