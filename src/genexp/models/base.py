"""GenerativeModule: what the VAE, GAN and GPT share.

It owns the optimizer/scheduler wiring from Hydra partials, sample logging to TensorBoard, the
genexp config stored inside every checkpoint, and the three hooks each family implements:

- ``sample(n)``: images ``(n, C, H, W)`` in [0, 1] or a list of strings;
- ``deployable()``: the sub-network that ships; the only thing compression touches and measures;
- ``distillation_loss(batch, teacher, temperature)``: the family's knowledge-distillation term.

Distillation hook (generic; ``compression.distill`` drives it): ``self.distiller`` is None unless a
``DistillationCallback`` attaches itself for the fit. Each family's training step passes its task loss
through ``with_distillation(task_loss, batch)``, which returns ``(1 - alpha)·task + alpha·KD`` in the
scheduled epochs and the task loss unchanged otherwise. The teacher lives on the callback, never as a
submodule here, so it is in no checkpoint and no optimizer.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Protocol

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn

from genexp.checkpoints.resize import STRUCTURE_KEY, conform
from genexp.checks.values import positive_number
from genexp.models.image_grid import image_grid, save_png
from genexp.runtime.errors import ConfigError

OptimizerFactory = Callable[..., torch.optim.Optimizer]
# torch optimizers with a fused kernel on the CPU and CUDA (the default CPU path is a per-tensor Python loop: the
# baby GPT's AdamW step takes 8.9 ms that way, 2.2 ms fused).
FUSED = (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD, torch.optim.Adagrad)
CONFIG_KEY = "genexp_config"


class GenerativeModule(L.LightningModule):
    """Base LightningModule for every genexp model family.

    Subclasses set ``data_kind`` ("images" or "text": what ``model_kwargs()`` of the data module must
    describe); ``genexp.runtime.build`` refuses a data module of the other kind with a message naming both.

    Args:
        optimizer: a partial ``torch.optim`` constructor (Hydra ``_partial_: true``) taking params.
        scheduler: Lightning's scheduler dict whose ``scheduler`` entry is a partial taking the
            optimizer (or None); ``interval``, ``frequency`` and ``monitor`` pass through to Lightning.
        sample_every_n_epochs: how often validation logs samples (0: only once, when fit ends).
        num_samples: how many samples a grid or text log shows.
    """

    data_kind: ClassVar[str | None] = None  # "images" or "text"; None accepts any data module

    def __init__(
        self,
        optimizer: OptimizerFactory | None = None,
        scheduler: dict[str, Any] | None = None,
        sample_every_n_epochs: int = 1,
        num_samples: int = 64,
    ) -> None:
        super().__init__()
        self.optimizer_factory = optimizer or partial(torch.optim.Adam, lr=1e-3)
        self.scheduler_config = dict(scheduler) if scheduler else None
        self.sample_every_n_epochs = sample_every_n_epochs
        self.num_samples = num_samples
        self.genexp_config: dict[str, Any] | None = None  # the composed run config, saved in checkpoints
        self.genexp_structure: dict[str, Any] | None = None  # set when structured pruning removed units
        self.distiller: Distiller | None = None  # set by compression.distill during fit (not a submodule)
        self._sampled_at_step = -1  # the global step of the last logged samples
        _check_lr(self.optimizer_factory)

    # ----- hooks every family implements -------------------------------------------------------
    def sample(self, n: int) -> torch.Tensor | list[str]:
        """Draw ``n`` samples: images in [0, 1] or strings."""
        raise NotImplementedError

    def deployable(self) -> nn.Module:
        """The sub-network that ships (and that compression prunes, quantizes and measures)."""
        raise NotImplementedError

    def trained_source(self) -> nn.Module | None:
        """The network that trains when ``deployable()`` is its EMA copy (GAN, diffusion), else None: structured
        pruning gates and removes the same units there, so it fine-tunes under the gates and its EMA keeps up."""
        return None

    def example_input(self, batch_size: int) -> Any:
        """A fixed input for ``deployable()``: used to measure latency and to calibrate quantization."""
        raise NotImplementedError

    def distillation_loss(
        self, batch: Any, teacher: GenerativeModule, temperature: float = 1.0
    ) -> torch.Tensor:
        """The family's knowledge-distillation term between this student and a frozen ``teacher``."""
        raise NotImplementedError(f"{type(self).__name__} does not support distillation yet")

    def check_teacher(self, teacher: GenerativeModule, key: str) -> None:
        """Raise a ConfigError naming ``key`` when ``teacher`` cannot teach this model (before training).

        The default asks for the same family; families add what their ``distillation_loss`` needs
        (same vocabulary, same image shape, same latent size...).
        """
        if type(teacher) is not type(self):
            raise ConfigError(
                key,
                f"a {type(teacher).__name__}",
                f"a checkpoint of this run's model family ({type(self).__name__})",
            )

    def check_teacher_image_shape(self, teacher: GenerativeModule, key: str) -> None:
        """Image families: the teacher was trained on images of this run's ``image_shape``."""
        theirs, ours = tuple(getattr(teacher, "image_shape", ())), tuple(getattr(self, "image_shape", ()))
        if theirs != ours:
            raise ConfigError(
                key,
                f"a {type(teacher).__name__} on images of shape {theirs}",
                f"a teacher trained on images of this run's shape {ours} (same data.name and data.image_size)",
            )

    def check_teacher_setting(self, teacher: GenerativeModule, key: str, name: str, why: str = "") -> None:
        """The teacher's ``name`` (a constructor setting, e.g. ``latent_dim``) is this run's ``model.<name>``."""
        theirs, ours = getattr(teacher, name, None), getattr(self, name, None)
        if theirs != ours:
            raise ConfigError(
                key,
                f"a {type(teacher).__name__} with {name} {theirs}",
                f"a teacher with this run's model.{name}={ours}{why}",
            )

    def start_distillation(self, teacher: GenerativeModule) -> bool:
        """Called once when a fresh (not resumed) distillation fit starts; returns True when this model
        took weights from ``teacher`` (diffusion: the student starts as its teacher). Default: nothing."""
        return False

    def with_distillation(self, task_loss: torch.Tensor, batch: Any) -> torch.Tensor:
        """``(1 - alpha)·task_loss + alpha·distillation_loss`` while ``self.distiller`` is active.

        Outside the scheduled epochs, or without a distiller, returns ``task_loss`` untouched (the
        teacher does not run). Logs ``train/task_loss``, ``train/kd_loss``, ``train/kd_alpha``.
        """
        distiller = self.distiller
        alpha = distiller.alpha(self.current_epoch) if distiller is not None else 0.0
        if alpha == 0.0:
            return task_loss
        kd = self.distillation_loss(batch, distiller.teacher, **distiller.loss_options)
        first = batch[0] if isinstance(batch, (tuple, list)) else batch
        self.log_dict(
            {"train/task_loss": task_loss.detach(), "train/kd_loss": kd.detach(), "train/kd_alpha": alpha},
            on_step=True,
            on_epoch=True,
            batch_size=first.shape[0] if isinstance(first, torch.Tensor) else None,
        )
        return (1.0 - alpha) * task_loss + alpha * kd

    # ----- optimizers ----------------------------------------------------------------------------
    def optimizer_param_groups(self) -> Iterable[Any]:
        """Parameters (or param-group dicts) handed to the optimizer; GPT splits weight decay here."""
        return self.parameters()

    def build_optimizer(
        self,
        params: Iterable[Any],
        factory: OptimizerFactory | None = None,
        scheduler: dict[str, Any] | None = None,
        total_steps: int | None = None,
    ) -> dict[str, Any]:
        """One optimizer and its optional Lightning scheduler dict, from the configured partials.

        A schedule that takes ``total_steps`` and leaves it null gets this optimizer's number of updates:
        ``total_steps`` when given (at least 1), else the Trainer's ``estimated_stepping_batches``.
        """
        make = factory or self.optimizer_factory
        optimizer = make(params, **self._fused(make))
        scheduler = self.scheduler_config if scheduler is None else scheduler
        if not scheduler or scheduler.get("scheduler") is None:
            return {"optimizer": optimizer}
        make = scheduler["scheduler"]
        kwargs: dict[str, Any] = {}
        keywords = getattr(make, "keywords", {})
        accepts = inspect.signature(make).parameters
        if "total_steps" in accepts and keywords.get("total_steps") is None:
            steps = (
                int(self.trainer.estimated_stepping_batches) if total_steps is None else max(1, total_steps)
            )
            kwargs["total_steps"] = steps
        lr_scheduler = {k: v for k, v in scheduler.items() if k != "scheduler" and v is not None}
        lr_scheduler["scheduler"] = make(optimizer, **kwargs)
        return {"optimizer": optimizer, "lr_scheduler": lr_scheduler}

    def _fused(self, make: OptimizerFactory) -> dict[str, bool]:
        """``fused=True`` for a torch optimizer that has the kernel, unless the config sets ``fused``/``foreach``,
        or mixed precision runs (Lightning refuses gradient clipping with an optimizer that unscales itself)."""
        keywords = getattr(make, "keywords", {})
        if getattr(make, "func", make) not in FUSED or "fused" in keywords or "foreach" in keywords:
            return {}
        precision = str(self.trainer.precision) if self._trainer is not None else "32-true"
        return (
            {"fused": True} if precision in ("32-true", "32") and self.device.type in ("cpu", "cuda") else {}
        )

    def configure_optimizers(self) -> dict[str, Any]:
        return self.build_optimizer(self.optimizer_param_groups())

    # ----- samples in TensorBoard ----------------------------------------------------------------
    def tensorboard(self) -> Any | None:
        """The TensorBoard SummaryWriter, if a TensorBoard logger is attached."""
        for logger in self.loggers:
            if isinstance(logger, TensorBoardLogger):
                return logger.experiment
        return None

    def on_validation_epoch_end(self) -> None:
        every = self.sample_every_n_epochs
        if every and self.current_epoch % every == 0 and not self.trainer.sanity_checking:
            if self.trainer.is_global_zero:
                self.log_samples()
                self._sampled_at_step = self.global_step

    def on_train_end(self) -> None:
        """Samples of the model as fit ends, unless the last validation logged them."""
        if self.trainer.is_global_zero and self.num_samples and self._sampled_at_step != self.global_step:
            self.log_samples()
            self._sampled_at_step = self.global_step

    @torch.no_grad()
    def log_samples(self) -> None:
        """Log a grid of samples to TensorBoard and write ``samples.png`` into the run folder."""
        was_training = self.training
        self.eval()
        images = self.sample(self.num_samples)
        self.train(was_training)
        if not isinstance(images, torch.Tensor):
            return
        grid = image_grid(images)
        writer = self.tensorboard()
        if writer is not None:
            writer.add_image("samples", grid, self.global_step)
        if self.trainer.default_root_dir:
            save_png(grid, Path(self.trainer.default_root_dir) / "samples.png")

    # ----- the run config travels inside every checkpoint ----------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.genexp_config is not None:
            checkpoint[CONFIG_KEY] = self.genexp_config
        if self.genexp_structure is not None:
            checkpoint[STRUCTURE_KEY] = self.genexp_structure

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.genexp_config = checkpoint.get(CONFIG_KEY, self.genexp_config)
        self.conform_to(checkpoint)

    def conform_to(self, checkpoint: dict[str, Any]) -> None:
        """Narrow the layers to a structured-pruned checkpoint's shapes (``genexp.checkpoints.resize``), before its
        weights load; a checkpoint of the full-width network changes nothing."""
        record = checkpoint.get(STRUCTURE_KEY)
        if record is not None and "state_dict" in checkpoint:
            conform(self, checkpoint["state_dict"], record)
            self.genexp_structure = record


class Distiller(Protocol):
    """What ``with_distillation`` needs from ``compression.distill`` (``DistillationCallback``)."""

    teacher: GenerativeModule
    loss_options: dict[str, Any]

    def alpha(self, epoch: int) -> float: ...


def _check_lr(factory: OptimizerFactory) -> None:
    positive_number("optimizer.lr", getattr(factory, "keywords", {}).get("lr"), allow_none=True)
