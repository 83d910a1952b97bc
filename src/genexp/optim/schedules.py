"""Learning-rate schedules that need the run length, built as LambdaLR/OneCycleLR factories.

`total_steps=None` is filled in by `GenerativeModule` with the Trainer's ``estimated_stepping_batches``.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, OneCycleLR

from genexp.runtime.errors import ConfigError


def warmup_cosine(
    optimizer: Optimizer, warmup_steps: int = 100, total_steps: int | None = None, min_lr: float = 0.0
) -> LambdaLR:
    """Linear warm-up over ``warmup_steps``, then cosine decay to ``min_lr`` at ``total_steps``."""
    if total_steps is None or total_steps < 1:
        raise ConfigError(
            "scheduler.scheduler.total_steps", total_steps, "a positive number of optimizer steps"
        )
    if not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise ConfigError("scheduler.scheduler.warmup_steps", warmup_steps, "an integer >= 0")
    base_lrs = [group["lr"] for group in optimizer.param_groups]

    def factor(base_lr: float):
        floor = min_lr / base_lr if base_lr > 0 else 0.0

        def fn(step: int) -> float:
            if step < warmup_steps:
                return (step + 1) / (warmup_steps + 1)
            if step >= total_steps:
                return floor
            progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

        return fn

    return LambdaLR(optimizer, [factor(lr) for lr in base_lrs])


def one_cycle(
    optimizer: Optimizer, max_lr: float | None = None, total_steps: int | None = None, pct_start: float = 0.3
) -> OneCycleLR:
    """OneCycleLR whose peak defaults to the optimizer's configured learning rate."""
    if total_steps is None or total_steps < 1:
        raise ConfigError(
            "scheduler.scheduler.total_steps", total_steps, "a positive number of optimizer steps"
        )
    peak = max_lr if max_lr is not None else [group["lr"] for group in optimizer.param_groups]
    # Cycle momentum only where the optimizer has one (Adam-style betas or a non-zero SGD/RMSprop momentum).
    cycle_momentum = "betas" in optimizer.defaults or optimizer.defaults.get("momentum", 0) > 0
    return OneCycleLR(
        optimizer, max_lr=peak, total_steps=total_steps, pct_start=pct_start, cycle_momentum=cycle_momentum
    )
