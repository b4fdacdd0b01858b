"""`SFTTrainer` with a learning rate and a start step per parameter role (LLaVA's projector learning rate and
feature-alignment phase) and a choice of loss divisor."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch.optim.lr_scheduler import LambdaLR
from trl import SFTTrainer

from .arguments import LOSS_NORMALIZATIONS
from .lm_head import add_answer_only_lm_head, unwrapped_causal_lm
from .model import parameter_role
from .schedule import LR_SCHEDULES, TRAINER_SCHEDULE, minigptv2_scheduler

logger = logging.getLogger(__name__)

NORMALIZER_SAMPLE_ROWS = 2048
# Trainer samplers that read per-row lengths from `args.length_column_name`.
LENGTH_SAMPLERS = ("group_by_length", "batch_rebalance")


def mean_loss_tokens_per_row(collator: Any, dataset: Any, seed: int, sample_rows: int = NORMALIZER_SAMPLE_ROWS) -> float:
    """Mean number of loss tokens (shifted, unmasked labels) per training row, on up to `sample_rows` random rows.

    Dividing a batch's summed token loss by `rows x this` instead of by the batch's own token count gives every
    answer token the same weight over the dataset. The per-batch count makes the weight of a token depend on the
    other answers in its batch: with small batches, the first token of a short answer ("No finding") outweighs the
    first token of a long one (a list of boxes), which biases that decision towards the short answer.
    """
    rows = np.random.default_rng(seed).permutation(len(dataset))[:sample_rows].tolist()
    tokens = 0
    for start in range(0, len(rows), 64):
        batch = collator([dataset[i] for i in rows[start:start + 64]])
        tokens += int(batch["labels"][..., 1:].ne(-100).sum())
    if not rows or tokens == 0:
        raise ValueError("no training row has an answer token to learn from")
    return tokens / len(rows)


def split_param_groups_by_role(
    optimizer: torch.optim.Optimizer, names: dict[int, str], role_learning_rates: dict[str, float]
) -> torch.optim.Optimizer:
    """Split the optimizer's groups, in place and before any step, by `parameter_role`, each role at its lr.

    The weight-decay split the Trainer made is kept (a group keeps its `weight_decay`); roles absent from
    `role_learning_rates` keep the group's learning rate. Each group records its `role`. Empty groups are dropped.
    """
    groups = []
    for group in optimizer.param_groups:
        by_role: dict[str, list[torch.nn.Parameter]] = {}
        for param in group["params"]:
            by_role.setdefault(parameter_role(names.get(id(param), "")), []).append(param)
        for role, params in by_role.items():
            settings = {key: value for key, value in group.items() if key != "params"}
            settings["lr"] = role_learning_rates.get(role, group["lr"])
            settings["role"] = role
            groups.append({**settings, "params": params})
    optimizer.param_groups = []
    for group in groups:
        optimizer.add_param_group(group)
    return optimizer


def hold_roles_until(scheduler: LambdaLR, role_start_steps: dict[str, int]) -> LambdaLR:
    """Make `scheduler` give the groups of each role in `role_start_steps` a learning rate of 0 before that step.

    From the start step on, a held group follows the run's schedule (warmup, decay) at that step's value, as the
    other groups do. Needs groups tagged by `split_param_groups_by_role` and a `LambdaLR` (all of transformers'
    step-based schedules). The hold is a plain function, so checkpoints store nothing for it and a resumed run
    rebuilds it from the same settings.
    """
    if not isinstance(scheduler, LambdaLR):
        raise TypeError(f"holding parameter roles needs a LambdaLR schedule, got {type(scheduler).__name__}")
    for index, group in enumerate(scheduler.optimizer.param_groups):
        start = role_start_steps.get(group.get("role"), 0)
        if start <= 0:
            continue

        def held(step: int, schedule=scheduler.lr_lambdas[index], start: int = start) -> float:
            return 0.0 if step < start else schedule(step)

        scheduler.lr_lambdas[index] = held
        group["lr"] = scheduler.base_lrs[index] * held(scheduler.last_epoch)
    return scheduler


class LiteGPTSFTTrainer(SFTTrainer):
    """`SFTTrainer` whose optimizer gives some parameter roles (projector, vision) their own learning rate, whose
    schedule can hold some roles (LoRA) at 0 for the first steps, and whose loss divisor is either each batch's own
    answer-token count (`loss_normalization="batch"`, the default) or rows x the dataset's mean answer tokens per
    row (`"dataset"`, see `mean_loss_tokens_per_row`).

    The Trainer's scheduler multiplies each group's initial learning rate, so warmup and decay apply to every role
    alike; checkpoints save and restore the groups with the optimizer's state.

    With `answer_only_lm_head` (the default) the LM head projects only the answer positions on every device; TRL's
    own fused head does so on CUDA/XPU only and projects every position elsewhere (see `litegpt_train.lm_head`).

    `lr_schedule`: `"trainer"` (default) uses `args.lr_scheduler_type`; `"paper"` / `"released_code"` use MiniGPT-v2's
    warm-up + cosine schedule with those values (`litegpt_train.schedule`), over `args.warmup_steps` and the run's
    optimizer steps.
    """

    def __init__(
        self,
        *args: Any,
        role_learning_rates: dict[str, float] | None = None,
        role_start_steps: dict[str, int] | None = None,
        loss_normalization: str = "batch",
        answer_only_lm_head: bool = True,
        lr_schedule: str = TRAINER_SCHEDULE,
        **kwargs: Any,
    ):
        if loss_normalization not in LOSS_NORMALIZATIONS:
            raise ValueError(f"loss_normalization must be one of {LOSS_NORMALIZATIONS}, got {loss_normalization!r}")
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {lr_schedule!r}")
        self.lr_schedule = lr_schedule
        self.role_learning_rates = {role: lr for role, lr in (role_learning_rates or {}).items() if lr is not None}
        self.role_start_steps = {role: int(step) for role, step in (role_start_steps or {}).items() if step}
        if any(step < 0 for step in self.role_start_steps.values()):
            raise ValueError(f"role start steps must be >= 0, got {self.role_start_steps}")
        super().__init__(*args, **kwargs)
        if answer_only_lm_head:  # on top of the fused head SFTTrainer.__init__ has just added
            add_answer_only_lm_head(unwrapped_causal_lm(self.model))
        self.loss_tokens_per_row = (
            mean_loss_tokens_per_row(self.data_collator, self.train_dataset, self.args.seed)
            if loss_normalization == "dataset" else None
        )

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> torch.Tensor | int | None:
        counted = super()._get_num_items_in_batch(batch_samples, device)
        if self.loss_tokens_per_row is None or counted is None:
            return counted
        # Same token-mean scale, but a constant per row instead of this batch's count: a batch of short answers
        # no longer weighs its tokens more than a batch of long ones (see `mean_loss_tokens_per_row`).
        rows = sum(len(batch["labels"]) for batch in batch_samples)
        fixed = torch.tensor(rows * self.loss_tokens_per_row, dtype=torch.float32, device=device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            fixed = self.accelerator.gather(fixed).sum()
        return fixed

    def _set_signature_columns_if_needed(self) -> None:
        # TRL keeps only the prompt-completion and image columns of vision rows; a length-grouping sampler also
        # needs the length column (see `litegpt_train.data.add_length_column`).
        super()._set_signature_columns_if_needed()
        if self.args.train_sampling_strategy in LENGTH_SAMPLERS and self.args.length_column_name not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, self.args.length_column_name]

    def create_optimizer(self, model: torch.nn.Module | None = None) -> torch.optim.Optimizer:
        optimizer = super().create_optimizer(model)
        if not self.role_learning_rates and not self.role_start_steps:
            return optimizer
        names = {id(param): name for name, param in (model or self.model).named_parameters()}
        self.optimizer = split_param_groups_by_role(optimizer, names, self.role_learning_rates)
        logger.info("learning rate per role: %s (others %s)", self.role_learning_rates, self.args.learning_rate)
        if self.role_start_steps:
            logger.info("parameter roles held at learning rate 0 until step: %s", self.role_start_steps)
        return self.optimizer

    def create_scheduler(
        self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None
    ) -> torch.optim.lr_scheduler.LRScheduler:
        created = self.lr_scheduler is None
        if created and self.lr_schedule != TRAINER_SCHEDULE:
            self.lr_scheduler = minigptv2_scheduler(optimizer or self.optimizer, self.lr_schedule,
                                                    self.args.get_warmup_steps(num_training_steps), num_training_steps)
            self._created_lr_scheduler = True  # the Trainer rebuilds it when train() is called again
        scheduler = super().create_scheduler(num_training_steps, optimizer)
        if created and self.role_start_steps:
            hold_roles_until(scheduler, self.role_start_steps)
            never = sorted(role for role, step in self.role_start_steps.items() if step >= num_training_steps)
            if never:
                logger.warning("roles %s start at or after the last of %d steps: they will not train", never,
                               num_training_steps)
        return scheduler
