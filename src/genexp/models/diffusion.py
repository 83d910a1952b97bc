"""A denoising diffusion model (Ho et al. 2020) with a DDIM sampler and progressive distillation.

Noise schedule: continuous-time cosine (Nichol & Dhariwal 2021), ``alpha_t = cos(pi t / 2)``,
``sigma_t = sin(pi t / 2)`` for ``t`` in [0, 1], with the log-SNR kept in [-20, 20] so neither is
exactly 0. Training draws ``t ~ U(0, 1)`` and ``z_t = alpha_t x + sigma_t eps`` (images scaled to
[-1, 1]) and regresses the UNet's output on ``eps`` (``prediction=eps``) or on
``v = alpha_t eps - sigma_t x`` (``prediction=v``, Salimans & Ho 2022); the loss is that mean squared
error. An EMA copy of the denoiser (``ema_decay``) samples and ships.

Sampling is deterministic DDIM (Song et al. 2021) on the uniform grid ``t_i = i / sample_steps``:
``x̂ = clip(x̂(z_t), -1, 1)``, ``z_s = alpha_s x̂ + sigma_s (z_t - alpha_t x̂) / sigma_t``.

Distillation is progressive distillation (Salimans & Ho 2022, "Progressive Distillation for Fast
Sampling of Diffusion Models", Algorithm 2), generalised from 2 to ``k`` teacher steps: the student
(``sample_steps = N``) starts from the teacher's weights and learns, on its own grid ``t = i / N``, to
reach in one DDIM step where ``k = teacher.sample_steps / N`` DDIM steps of the frozen teacher go. The
target is the ``x̃`` that makes one student step land on the teacher's ``z_{t - 1/N}``; the loss is the
student's ``x̂`` against it weighted by ``1 + SNR(t)`` (the mean squared error in ``v`` units, the
same scale as the task loss). Halve the steps per round (k = 2, the paper), or take k = 4 at once.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from genexp.checks.values import boolean, in_range, is_int, one_of, positive_int
from genexp.models.base import GenerativeModule
from genexp.models.ema import update_ema
from genexp.models.unet import UNet
from genexp.runtime.errors import ConfigError

PREDICTIONS = ("eps", "v")
LOGSNR_MIN, LOGSNR_MAX = -20.0, 20.0
_T_MIN = 2 / math.pi * math.atan(math.exp(-LOGSNR_MAX / 2))
_T_MAX = 2 / math.pi * math.atan(math.exp(-LOGSNR_MIN / 2))
SAMPLE_CHUNK = 250  # images per denoiser call while sampling


def alpha_sigma(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine schedule: ``(alpha_t, sigma_t)`` shaped (N, 1, 1, 1) for times ``t`` (N,) in [0, 1]."""
    angle = (math.pi / 2) * (_T_MIN + t.float() * (_T_MAX - _T_MIN))
    return angle.cos().view(-1, 1, 1, 1), angle.sin().view(-1, 1, 1, 1)


def ddim_step(z: torch.Tensor, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """One deterministic DDIM step from time ``t`` to ``s`` given the clean-image estimate ``x``."""
    a_t, s_t = alpha_sigma(t)
    a_s, s_s = alpha_sigma(s)
    return a_s * x + s_s * (z - a_t * x) / s_t


class Diffusion(GenerativeModule):
    """DDPM training, DDIM sampling, progressive distillation.

    Args:
        image_shape: (C, H, W), given by the data module.
        prediction: what the UNet predicts: ``eps`` (the noise) or ``v`` (``alpha eps - sigma x``).
        channels, channel_mults, res_blocks, attention, dropout: the UNet (``genexp.models.unet``).
        sample_steps: DDIM steps of ``sample()``; a distillation student's must divide its teacher's.
        ema_decay: decay of the EMA denoiser that samples and ships; 0 or null samples with the raw one.
        **base: ``optimizer``, ``scheduler``, ``sample_every_n_epochs``, ``num_samples`` (GenerativeModule).
    """

    data_kind = "images"

    def __init__(
        self,
        image_shape: tuple[int, int, int] = (1, 16, 16),
        prediction: str = "v",
        channels: int = 32,
        channel_mults: tuple[int, ...] = (1, 2, 2),
        res_blocks: int = 1,
        attention: bool = True,
        dropout: float = 0.0,
        sample_steps: int = 32,
        ema_decay: float | None = 0.999,
        **base: Any,
    ) -> None:
        super().__init__(**base)
        one_of("model.prediction", prediction, PREDICTIONS)
        positive_int("model.channels", channels)
        positive_int("model.res_blocks", res_blocks)
        positive_int("model.sample_steps", sample_steps)
        boolean("model.attention", attention)
        if not channel_mults or not all(is_int(m) and m >= 1 for m in channel_mults):
            raise ConfigError("model.channel_mults", channel_mults, "a non-empty list of positive integers")
        in_range("model.dropout", dropout, 0, 1)
        in_range("model.ema_decay", ema_decay, 0, 1, allow_none=True)
        image_shape = tuple(image_shape)  # type: ignore[assignment]
        channel_mults = tuple(channel_mults)
        self.save_hyperparameters(ignore=["optimizer", "scheduler"], logger=False)
        self.image_shape, self.prediction, self.sample_steps = image_shape, prediction, sample_steps
        self.ema_decay = float(ema_decay or 0.0)
        self.net = UNet(image_shape, channels, channel_mults, res_blocks, attention, float(dropout))
        self.ema = copy.deepcopy(self.net).requires_grad_(False) if self.ema_decay else None
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))
        self._grid_seed: int | None = None

    # ----- the model -------------------------------------------------------------------------
    def sampler(self) -> nn.Module:
        """The denoiser that samples and ships: the EMA copy when enabled."""
        return self.ema if self.ema is not None else self.net

    def predict_x(self, net: nn.Module, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The clean-image estimate ``x̂(z_t)`` from ``net``'s eps or v output (not clipped)."""
        out = net(z, t)
        a, s = alpha_sigma(t)
        return a * z - s * out if self.prediction == "v" else (z - s * out) / a

    def denoising_loss(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Mean squared error of the UNet's eps or v against the truth, at ``t ~ U(0, 1)``."""
        x = images * 2 - 1
        t = torch.rand(x.shape[0], generator=generator).to(x.device)
        eps = torch.randn(x.shape, generator=generator).to(x.device)
        a, s = alpha_sigma(t)
        out = self.net(a * x + s * eps, t)
        return F.mse_loss(out, eps if self.prediction == "eps" else a * eps - s * x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = self.denoising_loss(batch[0])
        self.log("train/loss", loss, on_step=True, on_epoch=True, batch_size=batch[0].shape[0])
        return self.with_distillation(loss, batch)

    def _eval_step(self, batch: Any, batch_idx: int, stage: str) -> None:
        generator = torch.Generator().manual_seed(batch_idx)  # the same t and noise every epoch
        loss = self.denoising_loss(batch[0], generator)
        self.log(
            f"{stage}/loss", loss, on_epoch=True, prog_bar=True, batch_size=batch[0].shape[0], sync_dist=True
        )

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "test")

    def on_test_epoch_end(self) -> None:
        self.log_dict(
            {"test/images_per_s": self.images_per_second(), "test/sample_steps": float(self.sample_steps)},
            sync_dist=True,
        )

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._update_ema()

    @torch.no_grad()
    def _update_ema(self) -> None:
        if self.ema is None:
            return
        self.ema_updates += 1
        update_ema(self.ema, self.net, self.ema_decay, int(self.ema_updates))

    # ----- sampling ---------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, steps: int | None = None, seed: int | None = None) -> torch.Tensor:
        """``n`` images in [0, 1] in ``steps`` (default ``sample_steps``) deterministic DDIM steps.

        A ``seed`` fixes the starting noise, so the same seed gives the same images.
        """
        steps = positive_int("steps", steps or self.sample_steps)
        seed = self._grid_seed if seed is None else seed
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        noise = torch.randn((n, *self.image_shape), generator=generator)
        net = self.sampler()
        chunks = [self._ddim(net, z.to(self.device), steps) for z in noise.split(SAMPLE_CHUNK)]
        return (torch.cat(chunks) + 1) / 2

    def _ddim(self, net: nn.Module, z: torch.Tensor, steps: int) -> torch.Tensor:
        x = z
        for i in range(steps, 0, -1):
            t = torch.full((z.shape[0],), i / steps, device=z.device)
            x = self.predict_x(net, z, t).clamp(-1, 1)
            z = ddim_step(z, x, t, t - 1 / steps)
        return x

    def images_per_second(self, n: int = 64, steps: int | None = None, repeats: int = 3) -> float:
        """Sampling throughput: ``n`` images in ``steps`` DDIM steps, the best of ``repeats`` timings."""
        self.sample(min(n, 8), steps, seed=0)  # warm-up
        best = math.inf
        for _ in range(repeats):
            start = time.perf_counter()
            self.sample(n, steps, seed=0)
            best = min(best, time.perf_counter() - start)
        return n / best

    def log_samples(self) -> None:
        self._grid_seed = 0  # the same starting noise for every epoch's grid
        try:
            super().log_samples()
        finally:
            self._grid_seed = None

    # ----- GenerativeModule hooks ---------------------------------------------------------------
    def deployable(self) -> nn.Module:
        return self.sampler()

    def trained_source(self) -> nn.Module | None:
        return self.net if self.ema is not None else None

    def example_input(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z_t, t)``: noisy images and times in [0, 1], the denoiser's two inputs."""
        generator = torch.Generator().manual_seed(0)
        z = torch.randn(batch_size, *self.image_shape, generator=generator)
        return z, torch.rand(batch_size, generator=generator)

    # ----- progressive distillation -------------------------------------------------------------
    def distillation_loss(
        self, batch: Any, teacher: GenerativeModule, temperature: float = 1.0
    ) -> torch.Tensor:
        """Progressive distillation: one student DDIM step matches ``k`` teacher DDIM steps.

        On the student's grid, ``t = i / N`` with ``i ~ U{1..N}``; the frozen teacher's sampler takes
        ``k = teacher.sample_steps / N`` DDIM steps from ``z_t`` to ``z_{t'}``, ``t' = t - 1/N``; the
        target ``x̃ = (z_{t'} - (sigma_t'/sigma_t) z_t) / (alpha_t' - (sigma_t'/sigma_t) alpha_t)`` is what
        the student's one DDIM step needs. Loss: ``(1 + SNR_t) (x̂_student - x̃)²`` (v-space MSE).
        ``temperature`` does not apply and is ignored.
        """
        assert isinstance(teacher, Diffusion)
        x = batch[0] * 2 - 1
        steps = self.sample_steps
        t = torch.randint(1, steps + 1, (x.shape[0],), device=x.device).float() / steps
        a, s = alpha_sigma(t)
        z = a * x + s * torch.randn_like(x)
        target = self.distillation_target(teacher, z, t)
        x_hat = self.predict_x(self.net, z, t)
        return ((x_hat - target) ** 2 / s**2).mean()

    @torch.no_grad()
    def distillation_target(self, teacher: Diffusion, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The ``x̃`` for which one student DDIM step from ``(z, t)`` to ``t - 1/N`` lands where
        ``teacher.sample_steps / N`` teacher DDIM steps land."""
        steps = self.sample_steps
        k = teacher.sample_steps // steps
        net, z_next, now = teacher.sampler(), z, t
        for j in range(1, k + 1):
            then = t - j / (k * steps)
            z_next = ddim_step(z_next, teacher.predict_x(net, z_next, now).clamp(-1, 1), now, then)
            now = then
        a, s = alpha_sigma(t)
        a_next, s_next = alpha_sigma(now)
        ratio = s_next / s
        return (z_next - ratio * z) / (a_next - ratio * a)

    def check_teacher(self, teacher: GenerativeModule, key: str) -> None:
        """A Diffusion teacher on this image shape whose ``sample_steps`` are a multiple (>= 2) of ours."""
        super().check_teacher(teacher, key)
        assert isinstance(teacher, Diffusion)
        self.check_teacher_image_shape(teacher, key)
        if teacher.sample_steps <= self.sample_steps or teacher.sample_steps % self.sample_steps:
            raise ConfigError(
                key,
                f"a teacher sampling in {teacher.sample_steps} steps",
                f"a teacher whose sample_steps are a multiple (>= 2x) of this student's "
                f"model.sample_steps={self.sample_steps}, e.g. model.sample_steps={teacher.sample_steps // 2}",
            )

    def start_distillation(self, teacher: GenerativeModule) -> bool:
        """Start from the teacher's sampling weights (raw and EMA denoiser) when the UNets and the
        prediction match (the paper's initialisation); otherwise train from this run's own init."""
        assert isinstance(teacher, Diffusion)
        state = teacher.sampler().state_dict()
        if teacher.prediction != self.prediction or {k: v.shape for k, v in state.items()} != {
            k: v.shape for k, v in self.net.state_dict().items()
        }:
            return False
        self.net.load_state_dict(state)
        if self.ema is not None:
            self.ema.load_state_dict(state)
        return True
