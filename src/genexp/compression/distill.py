"""DistillationCallback: a teacher from an earlier genexp run trains this run's (smaller) student.

The teacher is rebuilt from its own checkpoint: the run config saved inside it (``genexp_config``) gives
its architecture, which may differ from the student's, and its data module's saved state (a GPT's
vocabulary) gives what the data fixes. It is frozen (``requires_grad=False``), kept in eval mode and run
without grad, moved to the student's device and precision (``bf16-mixed`` autocast covers it; ``*-true``
precisions convert it). It lives on this callback, never inside the LightningModule, so it is in no
student checkpoint and no optimizer; under DDP every rank holds its own copy.

For the fit the callback attaches itself as ``pl_module.distiller``; each family's training step passes
its task loss through ``GenerativeModule.with_distillation``, which returns
``(1 - alpha)·task + alpha·KD`` with ``KD = pl_module.distillation_loss(batch, teacher, temperature)``.
``alpha`` follows a ``CompressionSchedule`` from ``initial_alpha`` to ``alpha`` between ``start_epoch``
and ``end_epoch`` (inclusive) and is 0 outside them (the teacher does not run there). Resuming re-creates
the callback from the run's config, which reloads the teacher; a fresh (not resumed) fit first calls
``pl_module.start_distillation(teacher)`` (a diffusion student copies its teacher's weights); the schedule follows
``trainer.current_epoch``, so a resumed run continues on the same curve.

Bad input fails before the first training step, naming ``compression.distill.<key>``: a missing or
non-genexp teacher checkpoint (at construction), a teacher of another family, another vocabulary,
another image shape or latent size (``pl_module.check_teacher`` in ``setup``).
"""

from __future__ import annotations

import inspect
import json
import logging
import math
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_warn

from genexp.checkpoints.rebuild import load_model, run_checkpoint
from genexp.checks.values import is_int, is_number
from genexp.compression.schedule import CompressionSchedule, last_epoch
from genexp.models.base import GenerativeModule
from genexp.runtime.errors import ConfigError

log = logging.getLogger(__name__)

NO_END = 10**9  # end_epoch: null -> distil through the last epoch
REFERENCE_PREFIXES = ("val/", "test/", "fid/")  # teacher figures logged once as teacher/<name>


def load_teacher(path: str | Path, key: str = "compression.distill.teacher") -> GenerativeModule:
    """Rebuild a frozen, eval-mode teacher from a genexp checkpoint, or a run folder's ``last.ckpt``, through
    ``genexp.checkpoints.rebuild`` (its own config, trust-checked, and its data module's saved state).

    Raises CheckpointError naming ``key`` when the file is missing, not a genexp checkpoint, or its
    saved config and weights do not rebuild a model.
    """
    teacher = load_model(run_checkpoint(Path(path), key), key).model
    teacher.requires_grad_(False)
    return teacher.eval()


def teacher_metrics(path: str | Path) -> dict[str, float]:
    """The val/test figures in the teacher run's ``metrics.json`` (next to ``<run>/checkpoints/``), or {}."""
    path = Path(path)
    run = path if path.is_dir() else path.parent.parent if path.parent.name == "checkpoints" else path.parent
    file = run / "metrics.json"
    if not file.is_file():
        return {}
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError):
        return {}
    return {  # the run's final figures, not its last training step or learning rate
        k: float(v)
        for k, v in data.items()
        if k.startswith(REFERENCE_PREFIXES) and is_number(v) and math.isfinite(float(v))
    }


class DistillationCallback(Callback):
    """Mix a frozen teacher's KD term into the student's loss between ``start_epoch`` and ``end_epoch``.

    Args:
        teacher: path of a genexp checkpoint (``<run>/checkpoints/*.ckpt``) of the same model family.
        alpha: weight of the KD term, in [0, 1) (reached at ``end_epoch`` when ``initial_alpha``
            differs): the loss is ``(1 - alpha)·task + alpha·KD``; after ``end_epoch`` it is the task alone.
        initial_alpha: weight at ``start_epoch`` (null: ``alpha``, i.e. constant).
        temperature: softens the teacher's and student's distributions (GPT logits, VAE pixel
            probabilities; the KD term is multiplied by T² to keep its gradient scale).
        start_epoch, end_epoch: the epochs (0-based, inclusive) in which KD is on; ``end_epoch`` null
            distils through the last epoch.
        every_n_epochs, ramp: how ``alpha`` moves from ``initial_alpha`` to ``alpha`` (CompressionSchedule:
            ``linear``, ``cubic``, ``one_shot``).
        feature_weight: GAN only: weight of the teacher-discriminator feature match (0 turns it off).
        key_prefix: the config path named in error messages.
    """

    def __init__(
        self,
        teacher: str | Path | None = None,
        alpha: float = 0.5,
        initial_alpha: float | None = None,
        temperature: float = 2.0,
        start_epoch: int = 0,
        end_epoch: int | None = None,
        every_n_epochs: int = 1,
        ramp: str = "linear",
        feature_weight: float = 0.0,
        key_prefix: str = "compression.distill",
    ) -> None:
        super().__init__()
        p = self.key_prefix = key_prefix
        if teacher is None or (isinstance(teacher, str) and not teacher.strip()):
            raise ConfigError(
                f"{p}.teacher",
                teacher,
                "the path of the teacher's genexp checkpoint, e.g. "
                f"{p}.teacher=outputs/train/runs/<stamp>/checkpoints/last.ckpt",
            )
        if not is_number(temperature) or not temperature > 0:
            raise ConfigError(f"{p}.temperature", temperature, "a number > 0")
        if not is_number(feature_weight) or feature_weight < 0:
            raise ConfigError(f"{p}.feature_weight", feature_weight, "a number >= 0")
        if end_epoch is not None and not is_int(end_epoch):
            raise ConfigError(
                f"{p}.end_epoch", end_epoch, "an integer >= start_epoch, or null (the last epoch)"
            )
        self._end_epoch = end_epoch
        self.schedule = self._schedule(
            start_epoch,
            end_epoch if end_epoch is not None else start_epoch,
            every_n_epochs,
            initial_alpha,
            alpha,
            ramp,
        )
        self._initial_alpha, self._alpha, self._ramp = initial_alpha, alpha, ramp
        self.temperature, self.feature_weight = float(temperature), float(feature_weight)
        self.loss_options: dict[str, Any] = {"temperature": self.temperature}
        if self.feature_weight:
            self.loss_options["feature_weight"] = self.feature_weight
        self.teacher_path = Path(teacher).expanduser()
        self.teacher: GenerativeModule = load_teacher(self.teacher_path, f"{p}.teacher")  # fails before fit
        self.teacher_metrics = teacher_metrics(self.teacher_path)
        self._restored_teacher: str | None = None

    def _schedule(
        self, start: int, end: int, every: int, initial: float | None, final: float, ramp: str
    ) -> CompressionSchedule:
        return CompressionSchedule(
            start_epoch=start,
            end_epoch=end,
            every_n_epochs=every,
            initial=final if initial is None else initial,
            final=final,
            ramp=ramp,
            key_prefix=self.key_prefix,
            initial_key="alpha" if initial is None else "initial_alpha",
            final_key="alpha",
        )

    # ----- what GenerativeModule.with_distillation asks -------------------------------------------
    def alpha(self, epoch: int) -> float:
        """The KD weight in ``epoch``: the scheduled alpha inside the window, 0 outside it."""
        return self.schedule.amount(epoch) if self.schedule.is_active(epoch) else 0.0

    # ----- Lightning hooks ---------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        p = self.key_prefix
        if not isinstance(pl_module, GenerativeModule):
            raise ConfigError("model._target_", type(pl_module).__name__, f"a genexp model for {p}")
        try:
            pl_module.check_teacher(self.teacher, f"{p}.teacher")
        except ConfigError as err:  # name the file too: "expected ... (it holds a GPT over 40 characters)"
            raise ConfigError(
                f"{p}.teacher", str(self.teacher_path), f"{err.expected} (it holds {err.value})"
            ) from None
        if self.feature_weight and "feature_weight" not in _parameters(pl_module.distillation_loss):
            raise ConfigError(
                f"{p}.feature_weight",
                self.feature_weight,
                f"0 for {type(pl_module).__name__} (only the GAN has a discriminator-feature match)",
            )
        last = last_epoch(trainer.max_epochs)
        if self._end_epoch is None:  # through the last epoch
            end = max(last if last is not None else NO_END, self.schedule.start_epoch)
            self.schedule = self._schedule(
                self.schedule.start_epoch,
                end,
                self.schedule.every_n_epochs,
                self._initial_alpha,
                self._alpha,
                self._ramp,
            )
        if last is not None and self.schedule.start_epoch > last:
            rank_zero_warn(
                f"{p}.start_epoch={self.schedule.start_epoch} is after the last epoch ({last}, "
                f"trainer.max_epochs={trainer.max_epochs}): the teacher never teaches in this fit"
            )

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After the strategy's setup: the student is on its device (and wrapped for DDP) now.
        teacher = self.teacher.to(pl_module.device)
        self.teacher = trainer.precision_plugin.convert_module(teacher).eval()
        self.teacher.requires_grad_(False)
        pl_module.distiller = self  # type: ignore[assignment]
        if self._restored_teacher is None and pl_module.start_distillation(self.teacher):
            log.info("The student starts from the teacher's weights")
        if self._restored_teacher is not None and self._restored_teacher != str(self.teacher_path):
            rank_zero_warn(
                f"{self.key_prefix}.teacher={self.teacher_path}: the checkpoint being resumed was "
                f"distilled from {self._restored_teacher}"
            )
        if not trainer.is_global_zero:
            return
        if self.teacher_metrics and self._restored_teacher is None:  # once, for reference (not on resume)
            reference = {f"teacher/{k}": v for k, v in self.teacher_metrics.items()}
            for logger in trainer.loggers:
                logger.log_metrics(reference, step=0)
        log.info(
            "Distilling from %s (%s, %d parameters) at alpha %s, T=%s, epochs %d..%s",
            self.teacher_path,
            type(self.teacher).__name__,
            sum(p.numel() for p in self.teacher.parameters()),
            self._alpha,
            self.temperature,
            self.schedule.start_epoch,
            "last" if self._end_epoch is None else self._end_epoch,
        )

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.teacher.eval()  # nothing should switch it, but a stray .train() must not reach BatchNorm

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.distiller = None  # type: ignore[assignment]

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        pl_module.distiller = None  # type: ignore[assignment]

    # ----- checkpoints: only where the teacher came from (never its weights) ---------------------
    def state_dict(self) -> dict[str, Any]:
        return {"teacher": str(self.teacher_path)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored_teacher = state_dict.get("teacher")


def _parameters(function: Any) -> set[str]:
    return set(inspect.signature(function).parameters)
