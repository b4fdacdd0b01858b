"""Learning-rate schedules of the LiteGPT recipe: MiniGPT-v2's `linear_warmup_cosine_lr` with the paper's values
or with the released code's.

LiteGPT trains with MiniGPT-v2's runner, whose scheduler sets, before optimizer step `t` of `T`:

    t <  W:  lr = min(init, warmup_start + (init - warmup_start) * t / W)
    t >= W:  lr = min_lr + (init - min_lr) * (1 + cos(pi * t / T)) / 2

with `init` the peak learning rate, `W` the warm-up steps and `T` = epochs x iterations per epoch (the cosine
runs over the whole run, measured from step 0, so it starts at step `W` already slightly decayed).

* `paper`: the paper's values, init = min = warm-up lr = 1e-5: both branches give 1e-5, a constant learning rate.
* `released_code`: the released training config's values, init 1e-5, min 1e-6, warm-up lr 1e-6.

The presets are stored as ratios of the peak rate, so the Trainer's per-group rates (the projector's own rate, see
`litegpt_train.trainer`) are scheduled alike. One departure from MiniGPT-v2: its warm-up indexes the step inside
the current epoch, so with epochs shorter than `W` (the paper's 549 iterations against 1000 warm-up steps) the
warm-up would restart at epoch 1; here it follows the global step. Under the paper's values the warm-up is flat, so
this changes nothing there; with the released code's values it is the ramp that config ran (its epochs of 3750
iterations are longer than the warm-up).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
from torch.optim.lr_scheduler import LambdaLR

TRAINER_SCHEDULE = "trainer"  # SFTConfig's own lr_scheduler_type / warmup_steps / lr_scheduler_kwargs


@dataclass(frozen=True)
class WarmupCosineRatios:
    """MiniGPT-v2's warm-up start and minimum learning rates, as ratios of the peak learning rate."""

    warmup_start: float
    minimum: float


MINIGPTV2_SCHEDULES: dict[str, WarmupCosineRatios] = {
    "paper": WarmupCosineRatios(warmup_start=1.0, minimum=1.0),  # init 1e-5, min 1e-5, warm-up lr 1e-5
    "released_code": WarmupCosineRatios(warmup_start=0.1, minimum=0.1),  # init 1e-5, min 1e-6, warm-up lr 1e-6
}
LR_SCHEDULES = (TRAINER_SCHEDULE, *MINIGPTV2_SCHEDULES)


def warmup_cosine_factor(step: int, *, warmup_steps: int, total_steps: int, warmup_start: float, minimum: float) -> float:
    """Learning rate of optimizer step `step` (0-based) as a fraction of the peak rate (see the module docstring)."""
    if step < warmup_steps:
        return min(1.0, warmup_start + (1.0 - warmup_start) * step / max(warmup_steps, 1))
    return minimum + (1.0 - minimum) * 0.5 * (1.0 + math.cos(math.pi * step / max(total_steps, 1)))


def minigptv2_scheduler(
    optimizer: torch.optim.Optimizer, schedule: str, warmup_steps: int, total_steps: int
) -> LambdaLR:
    """A `LambdaLR` over `optimizer`'s groups with the named MiniGPT-v2 schedule (`paper` or `released_code`)."""
    if schedule not in MINIGPTV2_SCHEDULES:
        raise ValueError(f"unknown MiniGPT-v2 schedule {schedule!r}; choices: {sorted(MINIGPTV2_SCHEDULES)}")
    ratios = MINIGPTV2_SCHEDULES[schedule]
    factor = partial(warmup_cosine_factor, warmup_steps=warmup_steps, total_steps=total_steps,
                     warmup_start=ratios.warmup_start, minimum=ratios.minimum)  # fmt: skip
    return LambdaLR(optimizer, factor)


__all__ = ["LR_SCHEDULES", "MINIGPTV2_SCHEDULES", "TRAINER_SCHEDULE", "WarmupCosineRatios", "minigptv2_scheduler",
           "warmup_cosine_factor"]  # fmt: skip
