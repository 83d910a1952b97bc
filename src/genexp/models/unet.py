"""A small UNet denoiser for ``model=diffusion``: ``(z_t, t) -> prediction``, sized from ``image_shape``.

Layout (Ho et al. 2020, shrunk): a sinusoidal embedding of ``t`` through a two-layer MLP; a 3×3 input
conv; per resolution ``res_blocks`` residual blocks (GroupNorm, SiLU, 3×3 conv, the time embedding
added in between), then a stride-2 conv down; a middle block (with self-attention when ``attention``) at
the lowest resolution; the mirror image upwards with skip connections concatenated, nearest-neighbour
upsampling + 3×3 conv; GroupNorm, SiLU and a 3×3 output conv. Every weight layer is a plain ``Conv2d``
or ``Linear``, so pruning and int8 conv quantization apply to the whole denoiser.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from genexp.runtime.errors import ConfigError


def resolutions(image_shape: tuple[int, int, int], levels: int) -> list[int]:
    """The sides of each level, e.g. (1, 16, 16) with 3 levels -> [16, 8, 4].

    Raises ConfigError naming ``model.channel_mults`` when the side cannot be halved ``levels - 1`` times.
    """
    side = image_shape[-1]
    if len(image_shape) != 3 or image_shape[1] != side:
        raise ConfigError(
            "data.image_size", tuple(image_shape), "square (C, H, H) images for model=diffusion"
        )
    sides = [side]
    for _ in range(levels - 1):
        if sides[-1] % 2 or sides[-1] < 4:
            raise ConfigError(
                "model.channel_mults",
                levels,
                f"at most as many levels as a {side}×{side} image can halve through (sides stay even, >= 2)",
            )
        sides.append(sides[-1] // 2)
    return sides


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of ``1000 t`` (``t`` in [0, 1], shape (N,)) -> (N, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = 1000.0 * t.float()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(8, channels), channels)


class ResBlock(nn.Module):
    """GroupNorm → SiLU → conv, + time embedding, GroupNorm → SiLU → dropout → conv, plus a skip."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1, self.conv1 = _norm(in_ch), nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_ch)
        self.norm2, self.conv2 = _norm(out_ch), nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class Attention(nn.Module):
    """Single-head self-attention over the pixels of a (small) feature map, with a residual."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, c, h * w).transpose(-1, -2).unbind(1)
        y = F.scaled_dot_product_attention(q, k, v)  # (n, hw, c)
        return x + self.out(y.transpose(-1, -2).reshape(n, c, h, w))


class UNet(nn.Module):
    """``forward(z, t)``: noisy images ``(N, C, H, W)`` and times ``(N,)`` in [0, 1] -> ``(N, C, H, W)``.

    Args:
        image_shape: (C, H, W); H = W, halved ``len(channel_mults) - 1`` times.
        channels: width of the first level; level ``i`` has ``channels * channel_mults[i]``.
        channel_mults: one multiplier per resolution.
        res_blocks: residual blocks per level on the way down (one more on the way up).
        attention: self-attention in the middle block, at the lowest resolution.
        dropout: dropout inside the residual blocks.
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        channels: int = 32,
        channel_mults: tuple[int, ...] = (1, 2, 2),
        res_blocks: int = 1,
        attention: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        resolutions(image_shape, len(channel_mults))
        emb_dim = 4 * channels
        self.channels = channels
        self.time_mlp = nn.Sequential(nn.Linear(channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.conv_in = nn.Conv2d(image_shape[0], channels, 3, padding=1)

        widths = [channels * m for m in channel_mults]
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skips, width = [channels], channels
        for level, out in enumerate(widths):
            for _ in range(res_blocks):
                self.down.append(ResBlock(width, out, emb_dim, dropout))
                width = out
                skips.append(width)
            if level < len(widths) - 1:
                self.downsample.append(nn.Conv2d(width, width, 3, stride=2, padding=1))
                skips.append(width)
        self.mid1 = ResBlock(width, width, emb_dim, dropout)
        self.mid_attn = Attention(width) if attention else nn.Identity()
        self.mid2 = ResBlock(width, width, emb_dim, dropout)

        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for level, out in reversed(list(enumerate(widths))):
            for _ in range(res_blocks + 1):
                self.up.append(ResBlock(width + skips.pop(), out, emb_dim, dropout))
                width = out
            if level > 0:
                self.upsample.append(nn.Conv2d(width, width, 3, padding=1))
        self.norm_out = _norm(width)
        self.conv_out = nn.Conv2d(width, image_shape[0], 3, padding=1)
        self.res_blocks, self.levels = res_blocks, len(widths)

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.time_mlp(timestep_embedding(t, self.channels))
        h = self.conv_in(z)
        hs = [h]
        blocks = iter(self.down)
        for level in range(self.levels):
            for _ in range(self.res_blocks):
                h = next(blocks)(h, emb)
                hs.append(h)
            if level < self.levels - 1:
                h = self.downsample[level](h)
                hs.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        blocks = iter(self.up)
        for i, level in enumerate(reversed(range(self.levels))):
            for _ in range(self.res_blocks + 1):
                h = next(blocks)(torch.cat([h, hs.pop()], dim=1), emb)
            if level > 0:
                h = self.upsample[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))
