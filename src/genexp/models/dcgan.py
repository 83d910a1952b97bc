"""The DCGAN networks (Radford et al. 2016): a generator of transposed convs and a discriminator of strided convs.

The generator maps ``z ~ N(0, I)`` to an image in [-1, 1]; the discriminator mirrors it down to one logit. DCGAN
choices: weights ~ N(0, 0.02), BatchNorm everywhere except the generator's output and the discriminator's
input, ReLU in G, LeakyReLU(0.2) in D. ``GAN`` (``models/gan.py``) trains them.
"""

from __future__ import annotations

import torch
from torch import nn

from genexp.runtime.errors import ConfigError


def dcgan_layout(image_shape: tuple[int, ...]) -> tuple[int, int]:
    """``(start_size, upsamplings)``: G grows ``start_size`` (4..8) by ``upsamplings`` doublings to the side.

    Raises ConfigError naming ``data.image_size`` when the shape cannot be built (odd, too small,
    not square, or a start size above 8), e.g. 16 -> (4, 2), 28 -> (7, 2), 32 -> (4, 3).
    """
    if len(image_shape) != 3 or image_shape[1] != image_shape[2]:
        raise ConfigError("data.image_size", tuple(image_shape), "square (C, H, H) images for model=gan")
    size, ups = image_shape[1], 0
    while size % 2 == 0 and size // 2 >= 4:
        size, ups = size // 2, ups + 1
    if ups == 0 or size > 8:
        raise ConfigError(
            "data.image_size",
            image_shape[1],
            "a side model=gan (DCGAN) can build: even, >= 8, halving down to 4..8 (e.g. 8, 16, 28, 32, 64)",
        )
    return size, ups


def dcgan_init(module: nn.Module) -> None:
    """DCGAN init: conv weights ~ N(0, 0.02); BatchNorm scale ~ N(1, 0.02), shift 0."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class Generator(nn.Module):
    """``z (N, latent_dim)`` -> images ``(N, C, H, W)`` in [-1, 1] (tanh; no BatchNorm on the output)."""

    def __init__(self, image_shape: tuple[int, int, int], latent_dim: int, channels: int) -> None:
        super().__init__()
        start, ups = dcgan_layout(image_shape)
        width = channels * 2 ** (ups - 1)
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(latent_dim, width, start, 1, 0, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(True),
        ]
        for _ in range(ups - 1):
            layers += [
                nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(width // 2),
                nn.ReLU(True),
            ]
            width //= 2
        layers += [nn.ConvTranspose2d(width, image_shape[0], 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.latent_dim = latent_dim
        self.apply(dcgan_init)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.view(z.shape[0], self.latent_dim, 1, 1))


class Discriminator(nn.Module):
    """Images in [-1, 1] -> one logit each (no BatchNorm on the input layer; LeakyReLU 0.2)."""

    def __init__(self, image_shape: tuple[int, int, int], channels: int) -> None:
        super().__init__()
        start, ups = dcgan_layout(image_shape)
        width = channels
        layers: list[nn.Module] = [nn.Conv2d(image_shape[0], width, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        for _ in range(ups - 1):
            layers += [
                nn.Conv2d(width, width * 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(width * 2),
                nn.LeakyReLU(0.2, True),
            ]
            width *= 2
        layers.append(nn.Conv2d(width, 1, start, 1, 0))
        self.net = nn.Sequential(*layers)
        self.apply(dcgan_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten()
