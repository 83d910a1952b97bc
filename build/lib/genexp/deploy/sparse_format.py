"""genexp's weight format: plain state dicts with pruning folded in, and the bitmask encoding of zeros.

Sizes everywhere (``costs.measure``, the artifact, the report) are real ``torch.save`` bytes of the
*deployable* state dict: a pruning reparametrization (``weight_orig`` and ``weight_mask``) is folded into the
plain ``weight`` first, so the numbers describe what ships, not the training-time bookkeeping.

Sparse format (``sparse_state_dict``), chosen per tensor, whichever is smaller:

- dense: the tensor as is;
- bitmask: ``{"shape": [...], "bitmask": uint8 tensor, "values": 1-D tensor}`` where ``bitmask`` packs
  one bit per element (row-major, most significant bit first, 1 = non-zero) and ``values`` holds the
  non-zero elements in the same order. A float32 tensor costs ``numel / 8 + 4 * nnz`` bytes, so it pays
  off below ~97% density; at 80% sparsity it is ~0.23x the dense size.

Integer weights take the same bitmask (an int8 tensor pays off below 87.5% density), and a quantized
tensor subclass (torchao's ``Int8Tensor``) is taken apart through the subclass protocol
(``__tensor_flatten__``) into ``{"subclass": "<module>.<class>", "inner": {name: entry}, "ctx": ...,
"shape": [...], "stride": [...]}``, each inner tensor (int8 ``qdata``, ``scale``...) encoded as above. So a
pruned, then int8-quantized network keeps both savings: its zeros cost a bit each, its non-zeros a byte.
A tensor tied to an earlier key (a GPT head tied to its embedding) is stored once, as ``{"tied": key}``.

``load_sparse_state_dict`` turns it back into an ordinary state dict (subclasses rebuilt with
``__tensor_unflatten__``; only torchao's classes are accepted).
"""

from __future__ import annotations

import importlib
import io
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

SparseEntry = dict[str, Any]
TRUSTED_SUBCLASS_MODULES = ("torchao.",)
_BITS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


def folded_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict with every ``<name>_orig`` / ``<name>_mask`` pair folded into ``<name>``."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.endswith("_mask") and key[: -len("_mask")] + "_orig" in state_dict:
            continue
        if key.endswith("_orig") and key[: -len("_orig")] + "_mask" in state_dict:
            base = key[: -len("_orig")]
            out[base] = value * state_dict[base + "_mask"].to(value.dtype)
        else:
            out[key] = value
    return out


def deployable_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """``module.state_dict()`` as it ships: detached, on the CPU, pruning masks folded in, keys sorted.

    Sorted, because ``torch.save``'s size depends on the key order (its records are aligned), and that
    order changes when pruning is made permanent: the same weights must give the same bytes.
    """
    folded = folded_state_dict(module.state_dict())
    return {k: folded[k].detach().cpu() for k in sorted(folded)}


def serialized_bytes(obj: Any) -> int:
    """Bytes ``torch.save`` writes for ``obj``."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getbuffer().nbytes


def pack_bits(flags: torch.Tensor) -> torch.Tensor:
    """Pack a boolean tensor (flattened, row-major) into uint8, most significant bit first."""
    flat = flags.flatten().to(torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return (flat.view(-1, 8) * _BITS).sum(1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, numel: int) -> torch.Tensor:
    """Inverse of ``pack_bits``: a flat boolean tensor of ``numel`` elements."""
    return ((packed.unsqueeze(1) & _BITS) != 0).flatten()[:numel]


def sparse_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor | SparseEntry]:
    """Each floating or int8 tensor as bitmask + non-zero values where that is smaller, else as it is;
    quantized subclasses through their inner tensors; a tied tensor (the same storage as an earlier key,
    e.g. a GPT's head tied to its embedding) as ``{"tied": <earlier key>}``, stored once as ``torch.save`` would."""
    out: dict[str, torch.Tensor | SparseEntry] = {}
    first_key: dict[tuple[Any, ...], str] = {}
    for key, tensor in folded_state_dict(state_dict).items():
        tensor = tensor.detach().cpu()
        if is_plain(tensor) and tensor.numel() > 0:
            storage = tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tensor.dtype
            identity = (*storage, tuple(tensor.shape), tuple(tensor.stride()))
            if identity in first_key:
                out[key] = {"tied": first_key[identity]}
                continue
            first_key[identity] = key
        out[key] = _encode(tensor)
    return out


def _encode(tensor: torch.Tensor) -> torch.Tensor | SparseEntry:
    if not is_plain(tensor) and hasattr(tensor, "__tensor_flatten__"):
        names, ctx = tensor.__tensor_flatten__()
        cls = type(tensor)
        return {
            "subclass": f"{cls.__module__}.{cls.__qualname__}",
            "inner": {name: _encode(getattr(tensor, name)) for name in names},
            "ctx": ctx,
            "shape": list(tensor.shape),
            "stride": list(tensor.stride()),
        }
    if is_plain(tensor) and _sparse_dtype(tensor) and tensor.numel() > 0:
        nonzero = tensor != 0
        nnz = int(nonzero.sum())
        if (tensor.numel() + 7) // 8 + nnz * tensor.element_size() < tensor.numel() * tensor.element_size():
            return {
                "shape": list(tensor.shape),
                "bitmask": pack_bits(nonzero),
                "values": tensor[nonzero].clone(),
            }
    return tensor.clone()


def _sparse_dtype(tensor: torch.Tensor) -> bool:
    return tensor.is_floating_point() or tensor.dtype == torch.int8


def load_sparse_state_dict(sparse: Mapping[str, torch.Tensor | SparseEntry]) -> dict[str, torch.Tensor]:
    """An ordinary state dict from ``sparse_state_dict``'s format (plain tensors pass through).

    Raises:
        ValueError: an entry names a tensor subclass outside torchao.
    """
    out: dict[str, torch.Tensor] = {}
    for key, entry in sparse.items():
        out[key] = out[entry["tied"]] if isinstance(entry, dict) and "tied" in entry else _decode(entry)
    return out


def _decode(entry: torch.Tensor | SparseEntry) -> torch.Tensor:
    if isinstance(entry, torch.Tensor):
        return entry
    if "subclass" in entry:
        module_name, _, class_name = entry["subclass"].rpartition(".")
        if not module_name.startswith(TRUSTED_SUBCLASS_MODULES):
            raise ValueError(f"tensor subclass {entry['subclass']} is not one of torchao's")
        cls = getattr(importlib.import_module(module_name), class_name)
        inner = {name: _decode(value) for name, value in entry["inner"].items()}
        return cls.__tensor_unflatten__(
            inner, entry["ctx"], torch.Size(entry["shape"]), tuple(entry["stride"])
        )
    shape = torch.Size(entry["shape"])
    flags = unpack_bits(entry["bitmask"], shape.numel())
    dense = entry["values"].new_zeros(shape.numel())
    dense[flags] = entry["values"]
    return dense.view(shape)


def is_plain(tensor: torch.Tensor) -> bool:
    """False for tensor subclasses such as torchao's quantized ``Int8Tensor``."""
    return type(tensor) in (torch.Tensor, nn.Parameter)


def values_of(tensor: torch.Tensor) -> torch.Tensor:
    """The values a tensor stands for: ``dequantize()`` of a quantized subclass, else the tensor."""
    return tensor if is_plain(tensor) or not hasattr(tensor, "dequantize") else tensor.dequantize()
