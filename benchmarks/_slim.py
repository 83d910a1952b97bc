"""Physically remove pruned channels from ``nn.Sequential`` chains, so structured pruning saves time.

Masked channels cost as much as live ones: a convolution with half its filters zeroed runs at the same
speed. ``slim_sequential`` rebuilds a Sequential with narrower layers, and only where that is *exact*
(the slim network computes the same function as the masked one):

For each pair ``A -> (elementwise activations) -> B`` of Linear / Conv / ConvTranspose layers (groups=1)
inside one Sequential, channel ``c`` (an output of A, an input of B) is removed when

1. B ignores it: all of B's weights reading input ``c`` are zero (e.g. ``ln_structured`` with ``dim=1``
   on Conv/Linear, or ``dim=0`` on ConvTranspose, whose weight is ``(in, out, ...)``); or
2. A never produces it: all of A's weights writing output ``c`` are zero, A's bias there is zero (or
   absent), and every activation in between maps 0 to 0 (ReLU, GELU, SiLU, Tanh, LeakyReLU, Identity,
   Dropout). ``dim=0`` pruning of Conv/Linear keeps the bias, so those channels are *not* exactly dead
   and stay.

Layers outside a Sequential, or followed by a reshape, are left alone.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from genexp.deploy.layers import CONV_TRANSPOSE_TYPES, plain_copy

ZERO_PRESERVING = (nn.ReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.LeakyReLU, nn.Identity, nn.Dropout)
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONVT = CONV_TRANSPOSE_TYPES


def _channel_layer(m: nn.Module) -> bool:
    return isinstance(m, nn.Linear) or (isinstance(m, _CONV + _CONVT) and m.groups == 1)


def _dims(m: nn.Module) -> tuple[int, int]:
    """(output-channel dim, input-channel dim) of the weight."""
    return (1, 0) if isinstance(m, _CONVT) else (0, 1)


def _slice(m: nn.Module, dim_kind: int, keep: torch.Tensor) -> nn.Module:
    """``m`` with only the ``keep`` channels along its output (0) or input (1) channel dim."""
    out_dim, in_dim = _dims(m)
    dim = out_dim if dim_kind == 0 else in_dim
    new = copy.deepcopy(m)
    new.weight = nn.Parameter(m.weight.detach().index_select(dim, keep).clone())
    if dim_kind == 0 and m.bias is not None:
        new.bias = nn.Parameter(m.bias.detach()[keep].clone())
    count = int(keep.numel())
    if isinstance(m, nn.Linear):
        if dim_kind == 0:
            new.out_features = count
        else:
            new.in_features = count
    elif dim_kind == 0:
        new.out_channels = count
    else:
        new.in_channels = count
    return new


def slim_sequential(seq: nn.Sequential) -> tuple[nn.Sequential, int]:
    """A narrower copy of ``seq`` computing the same function; returns it and how many channels went."""
    layers = [plain_copy(m) for m in seq]
    removed = 0
    idx = [i for i, m in enumerate(layers) if _channel_layer(m)]
    for a, b in zip(idx[:-1], idx[1:], strict=True):
        between = layers[a + 1 : b]
        if not all(isinstance(m, ZERO_PRESERVING) for m in between):
            continue
        A, B = layers[a], layers[b]
        a_out, _ = _dims(A)
        _, b_in = _dims(B)
        width = A.weight.shape[a_out]
        if B.weight.shape[b_in] != width:
            continue
        unread = (B.weight.detach().movedim(b_in, 0).reshape(width, -1) == 0).all(1)
        unwritten = (A.weight.detach().movedim(a_out, 0).reshape(width, -1) == 0).all(1)
        if A.bias is not None:
            unwritten &= A.bias.detach() == 0
        dead = unread | unwritten
        if not dead.any() or dead.all():
            continue
        keep = torch.nonzero(~dead).flatten()
        layers[a], layers[b] = _slice(A, 0, keep), _slice(B, 1, keep)
        removed += int(dead.sum())
    return nn.Sequential(*layers), removed


def slim(module: nn.Module) -> tuple[nn.Module, int]:
    """A plain copy of ``module`` with every outermost Sequential in it slimmed; also returns the count removed."""
    if isinstance(module, nn.Sequential):
        return slim_sequential(module)
    out = plain_copy(module)
    removed = 0
    for name, child in list(out.named_children()):
        slimmed, count = slim(child)
        setattr(out, name, slimmed)
        removed += count
    return out, removed
