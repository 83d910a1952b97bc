"""A DCGAN (Radford et al. 2016) trained with Lightning manual optimization and two optimizers.

The generator maps ``z ~ N(0, I)`` through transposed convs to an image in [-1, 1]; the discriminator
mirrors it with strided convs down to one logit. DCGAN choices: weights ~ N(0, 0.02), BatchNorm everywhere
except the generator's output and the discriminator's input, ReLU in G, LeakyReLU(0.2) in D.

Each training batch takes one discriminator step; every ``d_steps`` batches the generator takes one. The
two optimizers (and their schedulers) are independent: G uses the optimizer group's partial, D uses
``optimizer_d`` (default: the same partial) and ``scheduler_d`` (default: the same scheduler config).
An optional EMA copy of G (``ema_decay``) is what ``sample()`` and ``deployable()`` use.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from genexp.checks.values import in_range, number_at_least, one_of, positive_int, positive_number
from genexp.models.base import GenerativeModule, OptimizerFactory
from genexp.models.dcgan import Discriminator, Generator
from genexp.models.ema import update_ema
from genexp.runtime.errors import ConfigError

LOSSES = ("nonsaturating", "hinge")


class GAN(GenerativeModule):
    """DCGAN with manual optimization.

    Args:
        image_shape: (C, H, W), given by the data module (see ``dcgan_layout`` for the sides it builds).
        latent_dim: size of z.
        g_channels, d_channels: width of G's last and D's first conv; doubled per resolution step.
        loss: ``nonsaturating`` (BCE; G maximises log D(G(z))) or ``hinge``.
        label_smoothing: one-sided: D's target for real images is ``1 - label_smoothing`` (nonsaturating).
        d_steps: discriminator steps (one per batch) per generator step.
        grad_clip: cap on each parameter tensor's root-mean-square gradient (its norm over sqrt(numel)),
            applied to G and D before their steps: with a small cap, SGD takes layer-wise normalised steps.
            Null or 0 disables it (manual optimization: ``trainer.gradient_clip_val`` does not apply).
        ema_decay: decay of the EMA copy of G used for sampling; null or 0 disables it.
        optimizer_d: the discriminator's optimizer partial (null: the same as G's).
        scheduler_d: the discriminator's Lightning scheduler dict (null: the same config as G's).
        **base: ``optimizer``, ``scheduler``, ``sample_every_n_epochs``, ``num_samples`` (GenerativeModule).
    """

    data_kind = "images"

    def __init__(
        self,
        image_shape: tuple[int, int, int] = (1, 16, 16),
        latent_dim: int = 64,
        g_channels: int = 64,
        d_channels: int = 64,
        loss: str = "nonsaturating",
        label_smoothing: float = 0.0,
        d_steps: int = 1,
        grad_clip: float | None = None,
        ema_decay: float | None = None,
        optimizer_d: OptimizerFactory | None = None,
        scheduler_d: dict[str, Any] | None = None,
        **base: Any,
    ) -> None:
        super().__init__(**base)
        for key, value in (
            ("model.latent_dim", latent_dim),
            ("model.g_channels", g_channels),
            ("model.d_channels", d_channels),
            ("model.d_steps", d_steps),
        ):
            positive_int(key, value)
        one_of("model.loss", loss, LOSSES)
        in_range("model.label_smoothing", label_smoothing, 0, 0.5)
        if loss == "hinge" and label_smoothing:
            raise ConfigError("model.label_smoothing", label_smoothing, "0 with model.loss=hinge")
        in_range("model.ema_decay", ema_decay, 0, 1, allow_none=True)
        number_at_least("model.grad_clip", grad_clip, 0, allow_none=True)
        if optimizer_d is not None and not callable(optimizer_d):
            raise ConfigError("model.optimizer_d", optimizer_d, "an optimizer config with _partial_: true")
        positive_number(
            "model.optimizer_d.lr", getattr(optimizer_d, "keywords", {}).get("lr"), allow_none=True
        )
        image_shape = tuple(image_shape)  # type: ignore[assignment]
        self.save_hyperparameters(
            ignore=["optimizer", "scheduler", "optimizer_d", "scheduler_d"], logger=False
        )
        self.automatic_optimization = False

        self.image_shape, self.latent_dim = image_shape, latent_dim
        self.loss, self.label_smoothing, self.d_steps = loss, float(label_smoothing), d_steps
        self.ema_decay, self.grad_clip = float(ema_decay or 0.0), float(grad_clip or 0.0)
        self.optimizer_d_factory = optimizer_d or self.optimizer_factory
        self.scheduler_d_config = dict(scheduler_d) if scheduler_d is not None else None

        self.generator = Generator(image_shape, latent_dim, g_channels)
        self.discriminator = Discriminator(image_shape, d_channels)
        self.generator_ema = copy.deepcopy(self.generator).requires_grad_(False) if self.ema_decay else None
        noise = torch.randn(self.num_samples, latent_dim, generator=torch.Generator().manual_seed(0))
        self.register_buffer("fixed_noise", noise)  # the TensorBoard grid: same z every epoch
        self._noise_override: torch.Tensor | None = None
        self.g_updates, self.d_updates = 0, 0
        self._monitors: dict[int, str] = {}

    # ----- losses ----------------------------------------------------------------------------
    def noise(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.latent_dim, device=self.device)

    def d_loss(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        if self.loss == "hinge":
            return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()
        real = F.binary_cross_entropy_with_logits(
            real_logits, torch.full_like(real_logits, 1 - self.label_smoothing)
        )
        return real + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))

    def g_loss(self, fake_logits: torch.Tensor) -> torch.Tensor:
        if self.loss == "hinge":
            return -fake_logits.mean()
        return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))

    def d_score(self, logits: torch.Tensor) -> torch.Tensor:
        """Mean D output as logged: a probability (nonsaturating) or the raw critic score (hinge)."""
        return (torch.sigmoid(logits) if self.loss == "nonsaturating" else logits).mean()

    # ----- training: manual optimization -------------------------------------------------------
    def training_step(self, batch: Any, batch_idx: int) -> None:
        real = batch[0] * 2 - 1
        n = real.shape[0]
        opt_g, opt_d = self.optimizers()

        # discriminator step (G frozen: fakes are detached)
        fake = self.generator(self.noise(n)).detach()
        real_logits, fake_logits = self.discriminator(real), self.discriminator(fake)
        d_loss = self.d_loss(real_logits, fake_logits)
        opt_d.zero_grad(set_to_none=True)
        self.manual_backward(d_loss)
        self._clip(self.discriminator)
        opt_d.step()
        self.d_updates += 1
        self._step_schedulers(opt_d.optimizer, "step", self.d_updates)
        logs = {
            "train/d_loss": d_loss,
            "train/d_real": self.d_score(real_logits),
            "train/d_fake": self.d_score(fake_logits),
        }

        # generator step every d_steps batches (D's grads from this step are discarded)
        if (batch_idx + 1) % self.d_steps == 0:
            g_loss = self.g_loss(self.discriminator(self.generator(self.noise(n))))
            opt_g.zero_grad(set_to_none=True)
            self.manual_backward(self.with_distillation(g_loss, batch))  # KD mixes into G's loss only
            self._clip(self.generator)
            opt_g.step()
            opt_d.zero_grad(set_to_none=True)
            self.g_updates += 1
            self._update_ema()
            self._step_schedulers(opt_g.optimizer, "step", self.g_updates)
            logs["train/g_loss"] = g_loss
        self.log_dict(logs, on_step=True, on_epoch=True, batch_size=n)

    def on_train_epoch_end(self) -> None:
        for optimizer in (opt.optimizer for opt in self.optimizers()):
            self._step_schedulers(optimizer, "epoch", self.current_epoch + 1)

    def _step_schedulers(self, optimizer: torch.optim.Optimizer, interval: str, count: int) -> None:
        """Step the schedulers of ``optimizer`` whose interval is ``interval`` (manual optimization)."""
        for config in self.trainer.lr_scheduler_configs:
            if config.scheduler.optimizer is not optimizer or config.interval != interval:
                continue
            if count % config.frequency:
                continue
            if isinstance(config.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                metrics = self.trainer.callback_metrics
                monitor = self._monitors.get(id(config.scheduler), "val/loss")  # Lightning drops it
                if monitor not in metrics:
                    raise ConfigError(
                        "scheduler.monitor", monitor, f"a metric the GAN logs: {sorted(metrics)}"
                    )
                config.scheduler.step(metrics[monitor])
            else:
                config.scheduler.step()

    def _clip(self, network: nn.Module) -> None:
        """Cap each parameter tensor's RMS gradient at ``grad_clip`` (layer-wise normalised steps when it binds)."""
        for param in network.parameters() if self.grad_clip else ():
            nn.utils.clip_grad_norm_(param, self.grad_clip * param.numel() ** 0.5)

    @torch.no_grad()
    def _update_ema(self) -> None:
        if self.generator_ema is None:
            return
        # BatchNorm statistics and structured pruning's gates are buffers: the copy takes them as they are
        update_ema(self.generator_ema, self.generator, self.ema_decay, self.g_updates, copy_buffers=True)

    def configure_optimizers(self) -> list[dict[str, Any]]:
        total = int(self.trainer.estimated_stepping_batches)
        # each optimizer's own number of updates: G steps once every d_steps batches
        g = self.build_optimizer(self.generator.parameters(), total_steps=total // self.d_steps)
        d_scheduler = self.scheduler_config if self.scheduler_d_config is None else self.scheduler_d_config
        d = self.build_optimizer(
            self.discriminator.parameters(),
            factory=self.optimizer_d_factory,
            scheduler=d_scheduler or {},
            total_steps=total,
        )
        self._monitors = {
            id(opt["lr_scheduler"]["scheduler"]): opt["lr_scheduler"].get("monitor", "val/loss")
            for opt in (g, d)
            if "lr_scheduler" in opt
        }
        return [g, d]

    # ----- validation and test: losses on held-out real images against fresh fakes ------------
    def _eval_step(self, batch: Any, stage: str) -> None:
        real = batch[0] * 2 - 1
        n = real.shape[0]
        fake_logits = self.discriminator(self.generator(self.noise(n)))
        real_logits = self.discriminator(real)
        g_loss = self.g_loss(fake_logits)
        d_loss = self.d_loss(
            real_logits, fake_logits
        )  # loss: G's (lower: G fools the current D more), not FID
        logs = {f"{stage}/loss": g_loss, f"{stage}/g_loss": g_loss, f"{stage}/d_loss": d_loss}
        logs |= {f"{stage}/d_real": self.d_score(real_logits), f"{stage}/d_fake": self.d_score(fake_logits)}
        self.log_dict(logs, on_epoch=True, prog_bar=stage == "val", batch_size=n, sync_dist=True)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    # ----- GenerativeModule hooks --------------------------------------------------------------
    def sampler(self) -> Generator:
        """The generator that samples: the EMA copy when enabled."""
        return self.generator_ema if self.generator_ema is not None else self.generator

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """``n`` images in [0, 1] (fresh noise; the fixed noise while ``log_samples`` draws the grid)."""
        z = self._noise_override[:n] if self._noise_override is not None else self.noise(n)
        return (self.sampler()(z) + 1) / 2

    @contextmanager
    def _fixed_noise(self) -> Iterator[None]:
        self._noise_override = self.fixed_noise
        try:
            yield
        finally:
            self._noise_override = None

    def log_samples(self) -> None:
        with self._fixed_noise():
            super().log_samples()

    def deployable(self) -> nn.Module:
        return self.sampler()

    def trained_source(self) -> nn.Module | None:
        return self.generator if self.generator_ema is not None else None

    def example_input(self, batch_size: int) -> torch.Tensor:
        return torch.randn(batch_size, self.latent_dim, generator=torch.Generator().manual_seed(0))

    # ----- distillation ------------------------------------------------------------------------
    def distillation_loss(
        self, batch: Any, teacher: GenerativeModule, temperature: float = 1.0, feature_weight: float = 0.0
    ) -> torch.Tensor:
        """KD term for the generator: for shared noise ``z``, the mean squared difference between the
        student's ``G(z)`` and the teacher's sampling generator's (EMA if it has one), both in [-1, 1];
        plus ``feature_weight`` times the same match on the teacher discriminator's last hidden
        features of the two images. ``temperature`` does not apply to images and is ignored.
        The student keeps its adversarial loss: ``with_distillation`` mixes this term into G's loss.
        """
        assert isinstance(teacher, GAN)
        z = self.noise(batch[0].shape[0])
        fake = self.generator(z)
        with torch.no_grad():
            target = teacher.deployable()(z)
        loss = F.mse_loss(fake, target)
        if feature_weight:
            features = teacher.discriminator.net[:-1]  # every layer but the final logit conv
            with torch.no_grad():
                target_features = features(target)
            loss = loss + feature_weight * F.mse_loss(features(fake), target_features)
        return loss

    def check_teacher(self, teacher: GenerativeModule, key: str) -> None:
        """A GAN teacher on images of this shape and with this latent size (its noise is shared)."""
        super().check_teacher(teacher, key)
        assert isinstance(teacher, GAN)
        self.check_teacher_image_shape(teacher, key)
        self.check_teacher_setting(teacher, key, "latent_dim", " (student and teacher share z)")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["gan_updates"] = {"g": self.g_updates, "d": self.d_updates}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        updates = checkpoint.get("gan_updates", {})
        self.g_updates, self.d_updates = int(updates.get("g", 0)), int(updates.get("d", 0))
