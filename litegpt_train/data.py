"""Training rows of a stage: the project's builders, TRL's prompt-completion columns, checked against the processor."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import datasets

from codec_litegpt import messages_text

from .arguments import STAGE_SOURCES, DataArguments

logger = logging.getLogger(__name__)

TRL_COLUMNS = ["images", "prompt", "completion"]


@dataclass
class StageData:
    """A stage's training (and validation) rows plus what the model card records about them."""

    stage: str
    train: datasets.Dataset
    validation: datasets.Dataset | None
    sources: list[dict[str, Any]] = field(default_factory=list)


def build_task_dataset(
    data_args: DataArguments, task: str, num_proc: int | None = None
) -> tuple[datasets.DatasetDict, dict[str, Any]]:
    """Prepare one task with its builder; returns the splits and a JSON-ready description of the source."""
    family, config_name = STAGE_SOURCES[task]
    if family == "vindr_cxr":
        from datasets_scripts.vindr_cxr import VinDrCXR as Builder
    else:
        from datasets_scripts.mimic_cxr import MIMICCXR as Builder
    data_dir, settings = data_args.source(family)
    try:
        builder = Builder(config_name=config_name, data_dir=data_dir, cache_dir=data_args.dataset_cache_dir, **settings)
    except TypeError as err:  # an unknown setting name
        raise ValueError(f"{family} settings {sorted(settings)}: {err}") from None
    builder.download_and_prepare(num_proc=num_proc)
    splits = builder.as_dataset()
    source = {
        "dataset": family,
        "config": config_name,
        "builder_version": str(builder.config.version),
        "fingerprint": builder.config_id,
        "settings": builder.settings,
        "rows": {name: len(split) for name, split in splits.items()},
        "skipped": _count_skips(builder),
    }
    return splits, source


def _count_skips(builder: Any) -> dict[str, int]:
    try:
        return {key: len(items) if isinstance(items, list) else items for key, items in builder.skipped.items()}
    except Exception:  # the log is informative only
        return {}


def check_rows_match_processor(rows: datasets.Dataset, processor: Any, task: str) -> None:
    """The rows' task token must be the processor's (a model trained on `[grounding]` answers `[grounding]` only)."""
    if len(rows) == 0:
        return
    prompt_text = messages_text(rows[0]["prompt"])
    token = processor.task_tokens.get(task)
    if token and not prompt_text.startswith(token):
        raise ValueError(
            f"{task} rows start with {prompt_text.split(' ')[0]!r} but the processor's task token is {token!r}: "
            "set the builder's task_token and the processor's task_tokens alike"
        )


def load_stage_data(data_args: DataArguments, stage: str, processor: Any, num_proc: int | None = None) -> StageData:
    """Rows of `stage` plus the tasks `mix` adds to it, as TRL prompt-completion columns; errors if empty."""
    tasks = data_args.tasks_of(stage)
    train_parts, validation_parts, sources = [], [], []
    for task in tasks:
        splits, source = build_task_dataset(data_args, task, num_proc)
        sources.append(source)
        if "train" not in splits or len(splits["train"]) == 0:
            raise ValueError(
                f"stage {stage!r}: task {task!r} has no training rows in {source['dataset']} "
                f"({source['rows']}, skipped {source['skipped']})"
            )
        check_rows_match_processor(splits["train"], processor, task)
        train_parts.append(splits["train"].select_columns(TRL_COLUMNS))
        if "validation" in splits and len(splits["validation"]):
            validation_parts.append(splits["validation"].select_columns(TRL_COLUMNS))
    # Mixed tasks are interleaved once with a fixed seed; the trainer's sampler reshuffles every epoch.
    train = _concatenate(train_parts, seed=0)
    if data_args.max_train_samples:
        train = train.select(range(min(data_args.max_train_samples, len(train))))
    validation = _concatenate(validation_parts, seed=0) if validation_parts else None
    logger.info("stage %s: %d training rows from %s", stage, len(train), tasks)
    return StageData(stage=stage, train=train, validation=validation, sources=sources)


def add_length_column(rows: datasets.Dataset, processor: Any, column: str = "length") -> datasets.Dataset:
    """`rows` plus `column`: text tokens of prompt + completion per row, what the Trainer's `group_by_length` sampler
    sorts by (TRL vision rows have no `input_ids` to measure). Image tokens, the same for every row, are left out.
    An existing column is kept."""
    if column in rows.column_names:
        return rows
    tokenizer = processor.tokenizer
    texts = [messages_text(prompt) + " " + messages_text(completion) for prompt, completion in zip(rows["prompt"], rows["completion"])]
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    return rows.add_column(column, lengths)


def _concatenate(parts: list[datasets.Dataset], seed: int) -> datasets.Dataset:
    if len(parts) == 1:
        return parts[0]
    features = parts[0].features
    aligned = [part.cast(features) if part.features != features else part for part in parts]
    return datasets.concatenate_datasets(aligned).shuffle(seed=seed)


__all__ = ["TRL_COLUMNS", "StageData", "add_length_column", "build_task_dataset", "check_rows_match_processor", "load_stage_data"]
