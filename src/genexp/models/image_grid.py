"""Pictures for TensorBoard and the run folder: sample grids."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch


def image_grid(
    images: torch.Tensor, nrow: int | None = None, padding: int = 2, pad_value: float = 1.0
) -> torch.Tensor:
    """Tile ``(N, C, H, W)`` images in [0, 1] into one ``(C, H', W')`` image with a border between tiles."""
    images = images.detach().float().cpu().clamp(0, 1)
    n, c, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    ncol = math.ceil(n / nrow)
    grid = torch.full((c, ncol * (h + padding) + padding, nrow * (w + padding) + padding), pad_value)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[:, top : top + h, left : left + w] = images[i]
    return grid


def save_png(grid: torch.Tensor, path: str | Path, scale: int = 4) -> None:
    """Write a ``(C, H, W)`` grid in [0, 1] as a PNG, upscaled by ``scale`` so small images are visible."""
    from PIL import Image

    array = grid.clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()
    if array.shape[2] == 1:
        array = array[:, :, 0]
    image = Image.fromarray(np.ascontiguousarray(array))
    image.resize((image.width * scale, image.height * scale), Image.NEAREST).save(path)
