"""The exponential moving average of a network's weights, shared by the GAN (its generator) and diffusion (its
denoiser): the EMA copy samples and ships."""

from __future__ import annotations

import torch
from torch import nn


def warmed_decay(decay: float, updates: int) -> float:
    """``decay``, lowered over the first updates (``(1 + n) / (10 + n)``) so the copy leaves its random start."""
    return min(decay, (1 + updates) / (10 + updates))


@torch.no_grad()
def update_ema(
    ema: nn.Module, source: nn.Module, decay: float, updates: int, copy_buffers: bool = False
) -> None:
    """Move ``ema``'s parameters towards ``source``'s by ``1 - warmed_decay(decay, updates)``.

    Parameters are matched by name (a pruned EMA layer holds ``weight_orig``); ``copy_buffers`` also copies
    ``source``'s buffers (BatchNorm statistics, structured pruning's gates).
    """
    rate = 1 - warmed_decay(decay, updates)
    params = dict(ema.named_parameters())
    for name, param in source.named_parameters():
        params.get(name, params.get(f"{name}_orig", param)).lerp_(param.detach(), rate)
    if copy_buffers:
        buffers = dict(ema.named_buffers())
        for name, buf in source.named_buffers():
            buffers[name].copy_(buf)
