"""The VAE's network: a convolutional encoder to the posterior ``(mu, logvar)`` and a decoder back to image logits.

``VAENet`` holds both and is what ships (``VAE.deployable()``); ``VAE`` (``models/vae.py``) trains it.
"""

from __future__ import annotations

import torch
from torch import nn


def _downsamplings(size: int) -> int:
    """How many stride-2 convs take ``size`` down to at most 4 while it stays even."""
    steps = 0
    while size > 4 and size % 2 == 0:
        size //= 2
        steps += 1
    return max(steps, 0)


class Encoder(nn.Module):
    """Stride-2 convs down to a small map, then a linear layer to the posterior's mean and log-variance."""

    def __init__(self, image_shape: tuple[int, int, int], hidden: int, latent_dim: int) -> None:
        super().__init__()
        channels, size, _ = image_shape
        layers: list[nn.Module] = []
        for _ in range(_downsamplings(size)):
            layers += [nn.Conv2d(channels, hidden, 4, stride=2, padding=1), nn.GELU()]
            channels, hidden, size = hidden, hidden * 2, size // 2
        self.conv = nn.Sequential(*layers)
        self.feature_shape = (channels, size, size)
        self.head = nn.Linear(channels * size * size, 2 * latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.head(self.conv(x).flatten(1)).chunk(2, dim=1)
        return mu, logvar.clamp(-12, 12)


class Decoder(nn.Module):
    """A linear layer to the encoder's feature map, then stride-2 transposed convs back to the image."""

    def __init__(
        self, image_shape: tuple[int, int, int], feature_shape: tuple[int, int, int], latent_dim: int
    ) -> None:
        super().__init__()
        out_channels = image_shape[0]
        channels, size, _ = feature_shape
        self.feature_shape = feature_shape
        self.fc = nn.Linear(latent_dim, channels * size * size)
        layers: list[nn.Module] = [nn.GELU()]
        while size < image_shape[1]:
            layers += [nn.ConvTranspose2d(channels, max(channels // 2, 8), 4, stride=2, padding=1), nn.GELU()]
            channels, size = max(channels // 2, 8), size * 2
        layers.append(nn.Conv2d(channels, out_channels, 3, padding=1))
        self.deconv = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.deconv(self.fc(z).view(-1, *self.feature_shape))


class VAENet(nn.Module):
    """Encoder + decoder: the deployable part. ``forward`` reconstructs from the posterior mean."""

    def __init__(self, image_shape: tuple[int, int, int], hidden: int, latent_dim: int) -> None:
        super().__init__()
        self.encoder = Encoder(image_shape, hidden, latent_dim)
        self.decoder = Decoder(image_shape, self.encoder.feature_shape, latent_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu, _ = self.encoder(x)
        return self.decoder(mu)
