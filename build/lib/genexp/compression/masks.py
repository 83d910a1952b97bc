"""Which weights a pruning step keeps: boolean masks (True = kept) from scores, with exact counts."""

from __future__ import annotations

import math

import torch


def keep_largest(scores: torch.Tensor, prune_count: int) -> torch.Tensor:
    """Boolean mask of ``scores``' shape keeping all but the ``prune_count`` smallest (ties: lower index)."""
    keep = torch.ones(scores.numel(), dtype=torch.bool)
    if prune_count > 0:
        order = torch.argsort(scores.flatten(), stable=True)
        keep[order[:prune_count]] = False
    return keep.view(scores.shape)


def global_channels(
    channels: dict[str, torch.Tensor], sizes_of: dict[str, int], sparsity: float
) -> dict[str, torch.Tensor]:
    """Prune the lowest-scoring channels of all layers until the pruned weights are closest to ``sparsity``.

    ``channels`` holds each layer's per-channel score (-inf: already pruned), ``sizes_of`` its weight's numel.
    """
    sizes = torch.cat(
        [
            torch.full((s.numel(),), sizes_of[name] // s.numel(), dtype=torch.long)
            for name, s in channels.items()
        ]
    )
    flat = torch.cat(list(channels.values()))
    order = torch.argsort(flat, stable=True)
    cumulative = torch.cat([torch.zeros(1, dtype=torch.long), sizes[order].cumsum(0)])
    goal = sparsity * int(sizes.sum())
    already = int((flat == -math.inf).sum())
    count = max(int(torch.argmin((cumulative.double() - goal).abs())), already)
    keep = torch.ones_like(flat, dtype=torch.bool)
    keep[order[:count]] = False
    out, offset = {}, 0
    for name, s in channels.items():
        out[name] = keep[offset : offset + s.numel()]
        offset += s.numel()
    return out
