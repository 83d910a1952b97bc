"""What a deployable costs: parameters, non-zeros and bytes (``measure``), and how far a compressed copy's
outputs move from the original's (``fidelity``).

The same numbers go to ``compression.json``, TensorBoard, the report and the benchmarks. Quantized weights
count too: a torchao tensor subclass is measured through its ``dequantize()`` values, and int8 buffers (the
``Int8WeightConv`` weights of ``deploy.layers``) count as parameters. Latency is ``deploy.latency``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from genexp.deploy.latency import cpu_latency_ms
from genexp.deploy.layers import Int8WeightConv
from genexp.deploy.sparse_format import deployable_state_dict, serialized_bytes, sparse_state_dict, values_of


def layer_stats(module: nn.Module) -> dict[str, dict[str, float]]:
    """``{parameter name: {"params", "nonzero", "sparsity"}}`` over the deployable state dict
    (floating tensors, quantized subclasses and int8 tensors)."""
    stats: dict[str, dict[str, float]] = {}
    for key, tensor in deployable_state_dict(module).items():
        if not (tensor.is_floating_point() or tensor.dtype == torch.int8):
            continue
        tensor = values_of(tensor)
        numel = tensor.numel()
        nonzero = int(torch.count_nonzero(tensor))
        stats[key] = {"params": numel, "nonzero": nonzero, "sparsity": 1 - nonzero / numel if numel else 0.0}
    return stats


def measure(
    module: nn.Module,
    example_input: Any = None,
    *,
    repeats: int = 20,
    warmup: int = 3,
    per_layer: bool = False,
) -> dict[str, float]:
    """Flat numbers describing ``module`` as it ships.

    Returns:
        ``params``, ``nonzero`` and ``sparsity`` (over all floating parameters and buffers),
        ``bytes_dense`` (``torch.save`` of the folded state dict), ``bytes_sparse`` (the bitmask
        format above), ``sparse_ratio`` (sparse / dense), and ``latency_ms`` (median CPU ms on
        ``example_input``) when an input is given and ``repeats > 0``. With ``per_layer=True`` also
        ``layers/<parameter>/params|nonzero|sparsity``.
    """
    state = deployable_state_dict(module)
    stats = layer_stats(module)
    params = sum(int(s["params"]) for s in stats.values())
    nonzero = sum(int(s["nonzero"]) for s in stats.values())
    bytes_dense = serialized_bytes(state)
    bytes_sparse = serialized_bytes(sparse_state_dict(state))
    out: dict[str, float] = {
        "params": params,
        "nonzero": nonzero,
        "sparsity": 1 - nonzero / params if params else 0.0,
        "bytes_dense": bytes_dense,
        "bytes_sparse": bytes_sparse,
        "sparse_ratio": bytes_sparse / bytes_dense,
    }
    if example_input is not None and repeats > 0:
        out["latency_ms"] = cpu_latency_ms(module, example_input, repeats=repeats, warmup=warmup)
    if per_layer:
        for name, layer in stats.items():
            for key, value in layer.items():
                out[f"layers/{name}/{key}"] = value
    return out


def _output(module: nn.Module, example: Any) -> torch.Tensor:
    args = example if isinstance(example, tuple) else (example,)
    with torch.no_grad():
        out = module(*args)
    return (out[0] if isinstance(out, tuple) else out).detach().float()


def fidelity(reference: nn.Module, compressed: nn.Module, example: Any) -> dict[str, float]:
    """How far ``compressed``'s outputs are from ``reference``'s on ``example``: max abs and relative RMS error."""
    ref, out = _output(reference, example), _output(compressed, example)
    err = out - ref
    return {
        "max_abs_error": float(err.abs().max()),
        "relative_rmse": float(err.pow(2).mean().sqrt() / ref.pow(2).mean().sqrt().clamp(min=1e-12)),
    }


def weight_bytes(module: nn.Module, kinds: tuple[type[nn.Module], ...]) -> int:
    """Serialized bytes of the ``weight`` (or int8 weight + scales) of every layer of ``kinds`` in ``module``."""
    state = deployable_state_dict(module)
    names = [n for n, m in module.named_modules() if isinstance(m, kinds) or _wraps(m, kinds)]
    keys = [
        k for k in state for n in names if k.rpartition(".")[0] == n and "bias" not in k.rpartition(".")[2]
    ]
    return serialized_bytes({k: state[k] for k in keys}) if keys else 0


def _wraps(module: nn.Module, kinds: tuple[type[nn.Module], ...]) -> bool:
    return isinstance(module, Int8WeightConv) and isinstance(module.layer, kinds)


def zero_fraction(module: nn.Module, names: Sequence[str]) -> float:
    """Fraction of zeros among the weights of the named layers (dequantized; int8 conv weights as stored)."""
    total = zeros = 0
    for name in names:
        layer = module.get_submodule(name)
        weight = layer.weight_int8 if isinstance(layer, Int8WeightConv) else values_of(layer.weight.detach())
        total += weight.numel()
        zeros += int((weight == 0).sum())
    return zeros / total if total else 0.0
