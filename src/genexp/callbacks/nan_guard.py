"""NonFiniteGuard: stop (or skip the batch) when a loss or gradient turns NaN/Inf, naming the step and the term."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch import Callback

from genexp.checks.values import int_at_least, one_of
from genexp.runtime.errors import GenexpError

POLICIES = ("stop", "skip")


class NonFiniteLossError(GenexpError):
    """Training produced a NaN or Inf loss or gradient."""


def grads_finite(grads: list[torch.Tensor]) -> bool:
    """True when every gradient is finite.

    One fused 2-norm per tensor and a single check (a NaN or Inf anywhere makes its norm NaN or Inf). Only when
    that check fails does a max-abs per tensor tell a real NaN/Inf from a norm that overflowed on large finite
    values. The fused 2-norm costs ~0.13 ms on a baby GPT's 42 tensors, against ~1.2 ms for the fused inf-norm.
    """
    if not grads:
        return True
    if bool(torch.stack(torch._foreach_norm(grads)).isfinite().all()):
        return True
    return bool(torch.stack([g.abs().amax() for g in grads]).isfinite().all())


class NonFiniteGuard(Callback):
    """Checks every optimizer step before it happens.

    Args:
        policy: ``stop`` raises at the first non-finite loss term or gradient (the last good checkpoint stays
            as it was); ``skip`` drops that optimizer step (all gradients are set to None, so no optimizer moves)
            and stops only after ``max_skips`` skipped steps.
        max_skips: how many steps ``skip`` may drop in one run.
    """

    def __init__(self, policy: str = "stop", max_skips: int = 10) -> None:
        one_of("callbacks.nan_guard.policy", policy, POLICIES)
        int_at_least("callbacks.nan_guard.max_skips", max_skips, 0)
        self.policy, self.max_skips = policy, max_skips
        self.skipped = 0

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any
    ) -> None:
        bad_terms = {
            name.removesuffix("_step")
            for name, value in trainer.callback_metrics.items()
            if name.startswith("train/")
            and not name.endswith("_epoch")
            and isinstance(value, torch.Tensor)
            and not torch.isfinite(value).all()
        }
        # Under 16-mixed the GradScaler owns inf/nan gradients (it skips those steps itself).
        check_grads = "16" not in str(trainer.precision) or "bf16" in str(trainer.precision)
        bad_grads = check_grads and not grads_finite(
            [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        )
        if not bad_terms and not bad_grads:
            return
        what = (f"loss term {', '.join(sorted(bad_terms))}" if bad_terms else "a gradient") + " is NaN or Inf"
        where = f"epoch {trainer.current_epoch}, step {trainer.global_step}"
        if self.policy == "skip" and self.skipped < self.max_skips:
            self.skipped += 1
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.grad = None
            pl_module.print(
                f"genexp: {what} at {where}: skipped this batch ({self.skipped}/{self.max_skips})"
            )
            return
        hint = (
            "lower optimizer.lr, clip gradients (trainer.gradient_clip_val) or set "
            "callbacks.nan_guard.policy=skip"
        )
        if self.policy == "skip":
            hint = f"{self.max_skips} batches were already skipped (callbacks.nan_guard.max_skips)"
        raise NonFiniteLossError(f"{what} at {where}; the last good checkpoint is kept. Try: {hint}")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.skipped:
            pl_module.log("train/skipped_batches", float(self.skipped))

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = int(state_dict.get("skipped", 0))
