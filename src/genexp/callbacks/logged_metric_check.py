"""LoggedMetricCheck: a config key that names a validation metric the run never logs fails before training.

``target.metric`` (time to target) and ``optimized_metric`` (what a sweep optimizes) name metrics by string; a
typo would otherwise train to the end and leave ``cost/target_seconds`` NaN, or fail only after fit. Lightning's
sanity check runs validation before the first training step: at its end the check compares each named ``val/``
metric with what validation logged, plus what callbacks log later in validation (``SampleQuality``'s
``val/fid`` every N epochs, through their ``val_metric_names``). Without a sanity check
(``trainer.num_sanity_val_steps=0``) it runs at the end of the first validation instead.
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch import Callback

from genexp.runtime.errors import ConfigError


class LoggedMetricCheck(Callback):
    """Raise a ``ConfigError`` naming the key when a ``val/`` metric it names is not logged.

    Args:
        names: config key -> the metric it names (``{"target.metric": "val/loss"}``); keys whose metric is
            None, or not a ``val/`` metric, are not checked here.
    """

    def __init__(self, names: dict[str, str | None]) -> None:
        super().__init__()
        self.names = {
            key: metric for key, metric in names.items() if metric and str(metric).startswith("val/")
        }
        self.checked = False

    def on_sanity_check_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._check(trainer)

    def _check(self, trainer: L.Trainer) -> None:
        if self.checked or not self.names:
            return
        self.checked = True
        logged = {name for name in trainer.callback_metrics if name.startswith("val/")}
        for callback in trainer.callbacks:  # metrics a callback logs in later validations only
            logged |= set(getattr(callback, "val_metric_names", ()))
        for key, metric in self.names.items():
            if metric not in logged:
                raise ConfigError(
                    key, metric, f"a metric the run logs in validation: {', '.join(sorted(logged))}"
                )
