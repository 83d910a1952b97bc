"""Rebuild a network that structured pruning made smaller: the config builds the full-width model, and a saved
state dict whose tensors are narrower resizes its layers before the weights load.

``STRUCTURE_KEY`` in a checkpoint (or a torch artifact) holds the record of
``genexp.compression.structured.remove_units``: attributes that are not tensor shapes (an attention's ``n_head``).
Everything else follows the saved tensors' shapes: a Linear, Conv, ConvTranspose, BatchNorm or LayerNorm whose
saved weight is narrower gets empty tensors of the saved shapes and the matching size attributes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

STRUCTURE_KEY = "genexp_structure"
SIZE_ATTRIBUTES = (  # layer type -> (attribute, weight dim that gives it); transposed convs before convs
    (nn.Linear, (("out_features", 0), ("in_features", 1))),
    (nn.modules.conv._ConvTransposeNd, (("in_channels", 0), ("out_channels", 1))),
    (nn.modules.conv._ConvNd, (("out_channels", 0), ("in_channels", 1))),
    (nn.modules.batchnorm._BatchNorm, (("num_features", 0),)),
)


def conform(
    root: nn.Module, state_dict: Mapping[str, torch.Tensor], record: Mapping[str, Any] | None
) -> bool:
    """Resize ``root``'s layers to the shapes of ``state_dict`` and apply ``record``'s attributes (prefixes are
    module names inside ``root``); returns whether anything changed. Tensors of another rank are left alone
    (``load_state_dict`` then names the mismatch)."""
    changed = False
    for name, module in root.named_modules():
        prefix = f"{name}." if name else ""
        for kind in ("_parameters", "_buffers"):
            for key, tensor in list(getattr(module, kind).items()):
                saved = state_dict.get(prefix + key)
                if (
                    tensor is None
                    or saved is None
                    or saved.shape == tensor.shape
                    or saved.dim() != tensor.dim()
                ):
                    continue
                fresh = torch.empty(saved.shape, dtype=tensor.dtype, device=tensor.device)
                getattr(module, kind)[key] = (
                    nn.Parameter(fresh, tensor.requires_grad) if kind == "_parameters" else fresh
                )
                changed = True
        _sizes(module)
    for name, attributes in ((record or {}).get("attributes") or {}).items():
        module = root.get_submodule(name)
        for attribute, value in attributes.items():
            changed |= getattr(module, attribute, None) != value
            setattr(module, attribute, value)
    return changed


def _sizes(module: nn.Module) -> None:
    """Size attributes from the weight's shape (genexp's convs have ``groups=1``)."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        return
    for kind, attributes in SIZE_ATTRIBUTES:
        if isinstance(module, kind):
            for attribute, dim in attributes:
                setattr(module, attribute, int(weight.shape[dim]))
            break
    if isinstance(module, nn.LayerNorm):
        module.normalized_shape = tuple(weight.shape)
