"""CompressionSchedule: "is this epoch active, and how much?" for every compression callback.

One vocabulary shared by pruning, quantization and distillation (as in SparseML recipes):

- ``start_epoch`` .. ``end_epoch`` (inclusive) is the window in which the amount ramps;
- ``every_n_epochs`` is how often it is updated inside the window (``end_epoch`` is always an update);
- ``ramp`` goes from ``initial`` to ``final``:

  - ``cubic`` (Zhu & Gupta 2017, the default): ``s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt))**3``,
    fast at first and gentle near the end, where ``t0 = start_epoch`` and ``n * dt = end_epoch - start_epoch``;
  - ``linear``: ``s_t = s_i + (s_f - s_i) * (t - t0) / (n * dt)``;
  - ``one_shot``: ``final`` from ``start_epoch`` on.

``amount(epoch)`` is the amount in effect during ``epoch``: 0 before ``start_epoch`` (nothing applied
yet), the value of the latest update epoch inside the window (held between updates), and ``final``
after ``end_epoch``. Callbacks apply ``amount(trainer.current_epoch)`` at the start of each epoch, which
also makes resuming from any epoch land on the same curve.
"""

from __future__ import annotations

from dataclasses import dataclass

from genexp.checks.values import fraction, int_at_least, one_of
from genexp.runtime.errors import ConfigError

RAMPS = ("cubic", "linear", "one_shot")


def last_epoch(max_epochs: int | None) -> int | None:
    """The last 0-based epoch of a fit of ``trainer.max_epochs`` epochs (None: unbounded)."""
    return max_epochs - 1 if max_epochs is not None and max_epochs >= 0 else None


@dataclass(frozen=True)
class CompressionSchedule:
    """When and how much a compression callback applies.

    Args:
        start_epoch: first epoch of the ramp (0-based, as ``trainer.current_epoch``).
        end_epoch: epoch at which ``final`` is reached (inclusive; >= ``start_epoch``).
        every_n_epochs: update the amount every n epochs inside the window.
        initial: amount at ``start_epoch`` (a fraction in [0, 1)).
        final: amount from ``end_epoch`` on (a fraction in [0, 1)).
        ramp: ``cubic``, ``linear`` or ``one_shot``.
        key_prefix: config path used in error messages, e.g. ``compression.prune``.
        initial_key, final_key: the config names of ``initial``/``final`` (``initial_sparsity``...).

    Raises:
        ConfigError: naming ``<key_prefix>.<key>`` for a bad value.
    """

    start_epoch: int = 0
    end_epoch: int = 10
    every_n_epochs: int = 1
    initial: float = 0.0
    final: float = 0.5
    ramp: str = "cubic"
    key_prefix: str = "compression"
    initial_key: str = "initial"
    final_key: str = "final"

    def __post_init__(self) -> None:
        p = self.key_prefix
        int_at_least(f"{p}.start_epoch", self.start_epoch, 0)
        int_at_least(f"{p}.end_epoch", self.end_epoch, 0)
        if self.start_epoch > self.end_epoch:
            raise ConfigError(
                f"{p}.start_epoch", self.start_epoch, f"an epoch <= {p}.end_epoch={self.end_epoch}"
            )
        int_at_least(f"{p}.every_n_epochs", self.every_n_epochs, 1)
        for key, value in ((self.initial_key, self.initial), (self.final_key, self.final)):
            fraction(f"{p}.{key}", value)
        one_of(f"{p}.ramp", self.ramp, RAMPS)

    def update_epochs(self) -> list[int]:
        """The epochs at which the amount changes: every n epochs from start, plus ``end_epoch``."""
        epochs = list(range(self.start_epoch, self.end_epoch + 1, self.every_n_epochs))
        if epochs[-1] != self.end_epoch:
            epochs.append(self.end_epoch)
        return epochs

    def is_active(self, epoch: int) -> bool:
        """True inside the window ``start_epoch <= epoch <= end_epoch``."""
        return self.start_epoch <= epoch <= self.end_epoch

    def is_update(self, epoch: int) -> bool:
        """True at the epochs where the amount changes (see ``update_epochs``)."""
        return self.is_active(epoch) and (
            (epoch - self.start_epoch) % self.every_n_epochs == 0 or epoch == self.end_epoch
        )

    def amount(self, epoch: int) -> float:
        """The amount in effect during ``epoch`` (0 before the window, ``final`` after it)."""
        if epoch < self.start_epoch:
            return 0.0
        if epoch >= self.end_epoch:
            return float(self.final)
        t = max(e for e in self.update_epochs() if e <= epoch)  # hold the latest update
        return self.ramp_value(t)

    def ramp_value(self, t: float) -> float:
        """The continuous ramp at (possibly fractional) epoch ``t`` inside the window."""
        if self.ramp == "one_shot":
            return float(self.final)
        span = self.end_epoch - self.start_epoch
        progress = 1.0 if span == 0 else min(max((t - self.start_epoch) / span, 0.0), 1.0)
        si, sf = float(self.initial), float(self.final)
        if self.ramp == "linear":
            return si + (sf - si) * progress
        return sf + (si - sf) * (1.0 - progress) ** 3
