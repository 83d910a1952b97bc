"""The layers a compressed deployable is made of, and the module surgery that puts them in place.

- ``Int8WeightConv``: a Conv/ConvTranspose layer storing int8 weights with one float32 scale per output
  channel, dequantized in each forward (torchao's ``quantize_`` is Linear-only);
- ``cast_half``: a float16/bfloat16 copy whose layers take and return float32 at their boundary;
- ``restructure``: re-apply an artifact recipe's module swaps to a freshly built float deployable;
- ``plain_copy``: a copy with any ``torch.nn.utils.prune`` reparametrization folded into plain weights;
- ``is_qkv_attention``: the attention shape that structured pruning slices by head and the ONNX export fuses.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

CONV_TRANSPOSE_TYPES: tuple[type[nn.Module], ...] = (
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)
CONV_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, *CONV_TRANSPOSE_TYPES)
HALF_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


class Int8WeightConv(nn.Module):
    """A Conv/ConvTranspose layer storing its weight as int8 plus a float32 scale per output channel.

    Symmetric: ``weight ~= weight_int8 * weight_scale`` with ``|weight_int8| <= 127``; zeros stay zero.
    The weight is dequantized in every forward (float compute; the saving is in bytes).
    """

    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        weight = conv.weight.detach().float()
        dim = 1 if isinstance(conv, CONV_TRANSPOSE_TYPES) else 0
        amax = weight.abs().movedim(dim, 0).flatten(1).amax(1).clamp(min=1e-12)
        shape = [1] * weight.dim()
        shape[dim] = -1
        scale = (amax / 127.0).view(shape)
        layer = copy.deepcopy(conv)
        del layer.weight  # the float weight goes; forward sets a dequantized one
        self.layer = layer
        self.register_buffer("weight_int8", torch.round(weight / scale).clamp(-127, 127).to(torch.int8))
        self.register_buffer("weight_scale", scale)

    def dequantized_weight(self) -> torch.Tensor:
        return self.weight_int8.to(self.weight_scale.dtype) * self.weight_scale

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        self.layer.weight = self.dequantized_weight()
        try:
            return self.layer(*args, **kwargs)
        finally:
            del self.layer.weight


def _cast_floats(value: Any, dtype: torch.dtype) -> Any:
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.to(dtype)
    if isinstance(value, tuple):
        return tuple(_cast_floats(v, dtype) for v in value)
    return value


def cast_half(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Cast ``module`` to ``dtype`` in place; each layer with weights takes and returns float32."""
    module.to(dtype)
    for layer in module.modules():
        if any(True for _ in layer.parameters(recurse=False)) or any(
            True for _ in layer.buffers(recurse=False)
        ):
            layer.register_forward_pre_hook(lambda m, args, d=dtype: _cast_floats(args, d))
            layer.register_forward_hook(lambda m, args, out: _cast_floats(out, torch.float32))
    return module


def is_qkv_attention(module: nn.Module) -> bool:
    """Multi-head attention with ``n_head``, a fused ``qkv`` Linear (q, k, v stacked) and a ``proj`` Linear."""
    return (
        isinstance(getattr(module, "n_head", None), int)
        and isinstance(getattr(module, "qkv", None), nn.Linear)
        and isinstance(getattr(module, "proj", None), nn.Linear)
        and module.qkv.out_features == 3 * module.proj.in_features
    )


def set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule ``name`` (dotted) of ``root`` by ``module``."""
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def restructure(deployable: nn.Module, recipe: dict[str, Any]) -> nn.Module:
    """Apply the recipe's module swaps to a fresh float deployable (before its state dict is assigned)."""
    if recipe["mode"] == "half":
        return cast_half(deployable, HALF_DTYPES[recipe["dtype"]])
    for name, layer in recipe["layers"].items():
        if layer["how"].startswith("Int8WeightConv"):
            set_submodule(deployable, name, Int8WeightConv(deployable.get_submodule(name)))
    return deployable


def plain_copy(m: nn.Module) -> nn.Module:
    """A copy of ``m`` with any pruning reparametrization folded into plain parameters."""
    memo = {  # the masked ``weight`` a pruning hook leaves behind is a non-leaf tensor: copy it detached
        id(v): v.detach().clone()
        for module in m.modules()
        for v in vars(module).values()
        if isinstance(v, torch.Tensor) and not v.is_leaf
    }
    fresh = copy.deepcopy(m, memo)
    for module in fresh.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod):
                prune.remove(module, hook._tensor_name)
    return fresh
