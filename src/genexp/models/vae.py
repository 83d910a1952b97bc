"""A convolutional VAE (Kingma & Welling 2014) with a Bernoulli or Gaussian likelihood.

Losses are per image, in nats: ``nelbo = recon + kl``; training minimises ``recon + beta * kl``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from genexp.checks.values import number_at_least, one_of, positive_int
from genexp.models.base import GenerativeModule
from genexp.models.vae_net import VAENet

LIKELIHOODS = ("bernoulli", "gaussian")


class VAE(GenerativeModule):
    """Convolutional VAE.

    Args:
        image_shape: (C, H, W), given by the data module.
        latent_dim: size of z.
        hidden_channels: channels of the first conv, doubled at each downsampling.
        beta: weight of the KL term (1 gives the ELBO).
        likelihood: ``bernoulli`` (logits) or ``gaussian`` (mean plus a learned global log-scale).
    """

    data_kind = "images"

    def __init__(
        self,
        image_shape: tuple[int, int, int] = (1, 16, 16),
        latent_dim: int = 16,
        hidden_channels: int = 32,
        beta: float = 1.0,
        likelihood: str = "bernoulli",
        **base: Any,
    ) -> None:
        super().__init__(**base)
        positive_int("model.latent_dim", latent_dim)
        positive_int("model.hidden_channels", hidden_channels)
        number_at_least("model.beta", beta, 0)
        one_of("model.likelihood", likelihood, LIKELIHOODS)
        image_shape = tuple(image_shape)  # type: ignore[assignment]
        self.save_hyperparameters(ignore=["optimizer", "scheduler"], logger=False)
        self.image_shape, self.latent_dim, self.beta, self.likelihood = (
            image_shape,
            latent_dim,
            beta,
            likelihood,
        )
        self.net = VAENet(image_shape, hidden_channels, latent_dim)
        self.log_scale = nn.Parameter(torch.zeros(())) if likelihood == "gaussian" else None

    # ----- the model -------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder output: Bernoulli logits or Gaussian means (pre-activation)."""
        return self.net.decoder(z)

    def mean_image(self, out: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(out) if self.likelihood == "bernoulli" else out.clamp(0, 1)

    def reconstruction_nll(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """-log p(x|z) per image, in nats."""
        if self.likelihood == "bernoulli":
            nll = F.binary_cross_entropy_with_logits(out, x, reduction="none")
        else:
            log_scale = self.log_scale.clamp(-7, 2)
            nll = 0.5 * ((x - out) * torch.exp(-log_scale)) ** 2 + log_scale + 0.5 * math.log(2 * math.pi)
        return nll.flatten(1).sum(1)

    def losses(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        recon = self.reconstruction_nll(self.decode(z), x).mean()
        kl = (0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)).sum(1).mean()
        return {"loss": recon + self.beta * kl, "nelbo": recon + kl, "recon": recon, "kl": kl}

    def _step(self, batch: Any, stage: str) -> torch.Tensor:
        x = batch[0]
        terms = self.losses(x)
        self.log_dict(
            {f"{stage}/{k}": v for k, v in terms.items()},
            on_step=stage == "train",
            on_epoch=True,
            prog_bar=stage != "train",
            batch_size=x.shape[0],
            sync_dist=stage != "train",
        )
        return terms["loss"]

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.with_distillation(self._step(batch, "train"), batch)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "test")

    # ----- GenerativeModule hooks --------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        z = torch.randn(n, self.latent_dim, device=self.device)
        return self.mean_image(self.decode(z))

    def deployable(self) -> nn.Module:
        return self.net

    def example_input(self, batch_size: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(0)
        return torch.rand(batch_size, *self.image_shape, generator=generator)

    # ----- distillation ------------------------------------------------------------------------
    def distillation_loss(
        self, batch: Any, teacher: GenerativeModule, temperature: float = 1.0
    ) -> torch.Tensor:
        """KD term in nats per image: match the teacher's posterior and its reconstruction.

        - posterior: ``KL(q_teacher(z|x) || q_student(z|x))`` between the diagonal Gaussians, summed over
          z (only when both have the same ``latent_dim``: latents of different sizes share no space);
        - decoded outputs: the student's reconstruction from its posterior mean against the teacher's,
          as a divergence of the likelihood (Bernoulli: KL between the temperature-softened pixel
          probabilities, times T²; Gaussian: squared error of the means scaled by the student's scale).
        """
        assert isinstance(teacher, VAE)
        x = batch[0]
        mu, logvar = self.encode(x)
        with torch.no_grad():
            t_mu, t_logvar = teacher.encode(x)
            t_out = teacher.decode(t_mu)
        out = self.decode(mu)
        if self.likelihood == "bernoulli":
            target = torch.sigmoid(t_out / temperature)
            match = F.binary_cross_entropy_with_logits(out / temperature, target, reduction="none")
            match = match - F.binary_cross_entropy_with_logits(t_out / temperature, target, reduction="none")
            match = match * temperature**2
        else:
            log_scale = self.log_scale.clamp(-7, 2)
            match = 0.5 * ((out - t_out) * torch.exp(-log_scale)) ** 2
        loss = match.flatten(1).sum(1).mean()
        if t_mu.shape == mu.shape:
            kl = 0.5 * (logvar - t_logvar + (t_logvar.exp() + (t_mu - mu) ** 2) / logvar.exp() - 1.0)
            loss = loss + kl.sum(1).mean()
        return loss

    def check_teacher(self, teacher: GenerativeModule, key: str) -> None:
        """A VAE teacher on images of this shape, with the same likelihood."""
        super().check_teacher(teacher, key)
        assert isinstance(teacher, VAE)
        self.check_teacher_image_shape(teacher, key)
        self.check_teacher_setting(teacher, key, "likelihood")
