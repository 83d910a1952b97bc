"""The numerics of quantization: torchao configs, the QAT prepare/convert flow, and a quantized copy.

torchao is imported lazily (it takes seconds to import). ``quantize_copy`` returns a quantized copy of a
float deployable: Linear layers through torchao's ``quantize_`` (int8 weight-only, or int8 weights with
int8 dynamic per-token activations), Conv/ConvTranspose layers as ``deploy.layers.Int8WeightConv``, or a
half-precision cast of the whole copy. ``take_pruning``/``give_pruning`` move a ``torch.nn.utils.prune``
reparametrization across QAT's module swap (``FakeQuantizedLinear`` shares the float layer's Parameters).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from genexp.deploy.layers import HALF_DTYPES, Int8WeightConv, cast_half, set_submodule

SCHEMES = ("int8_weight_only", "int8_dynamic")
UNSUPPORTED_SCHEMES = {  # known names, refused with the reason
    "int4_weight_only": "int4 weight-only has no CPU kernel in torchao 0.18 (it needs CUDA int4 kernels)",
    "int4_dynamic": "int4 activations have no CPU kernel in torchao 0.18",
    "float8": "float8 needs a GPU with float8 tensor cores (H100 or newer); there is no CPU kernel",
}


def take_pruning(module: nn.Module) -> tuple[nn.Parameter, torch.Tensor, Any] | None:
    """Detach a ``torch.nn.utils.prune`` reparametrization of ``weight``: expose ``weight_orig`` as ``weight``."""
    for key, hook in list(module._forward_pre_hooks.items()):
        if isinstance(hook, prune.BasePruningMethod) and hook._tensor_name == "weight":
            del module._forward_pre_hooks[key]
            orig = module._parameters.pop("weight_orig")
            mask = module._buffers.pop("weight_mask")
            delattr(module, "weight")
            module.weight = orig
            return orig, mask, hook
    return None


def give_pruning(module: nn.Module, taken: tuple[nn.Parameter, torch.Tensor, Any]) -> None:
    """Re-install a reparametrization taken by ``take_pruning`` on ``module`` (which shares ``weight_orig``)."""
    orig, mask, hook = taken
    del module._parameters["weight"]
    module.register_parameter("weight_orig", orig)
    module.register_buffer("weight_mask", mask)
    module.register_forward_pre_hook(hook)
    module.weight = hook.apply_mask(module)


# ----- torchao configs (imported lazily: torchao takes seconds to import) --------------------------------
def torchao_config(scheme: str) -> Any:
    """The torchao post-training config of ``scheme`` (no global inductor settings changed)."""
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, MappingType

    if scheme == "int8_dynamic":  # asymmetric activations: what QAT's per-token fake quantizer simulates
        return Int8DynamicActivationInt8WeightConfig(
            act_mapping_type=MappingType.ASYMMETRIC, set_inductor_config=False
        )
    return Int8WeightOnlyConfig(set_inductor_config=False)


def qat_prepare_config(scheme: str) -> Any:
    """torchao's QAT prepare config with ``scheme``'s numerics: symmetric per-channel int8 weights and, for
    int8_dynamic, asymmetric per-token int8 activations (torchao's fake quantizer has no symmetric per-token)."""
    from torchao.quantization.qat import IntxFakeQuantizeConfig, QATConfig

    weight = IntxFakeQuantizeConfig(torch.int8, "per_channel", is_symmetric=True)
    activation = (
        IntxFakeQuantizeConfig(torch.int8, "per_token", is_symmetric=False)
        if scheme == "int8_dynamic"
        else None
    )
    return QATConfig(activation_config=activation, weight_config=weight, step="prepare")


def unfake(module: nn.Module) -> nn.Module:
    """Swap every torchao fake-quantized layer in ``module`` back to its plain float layer, in place."""
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig
    from torchao.quantization.qat.linear import FakeQuantizedLinear

    if any(isinstance(m, FakeQuantizedLinear) for m in module.modules()):
        quantize_(
            module, QATConfig(step="convert"), filter_fn=lambda m, fqn: isinstance(m, FakeQuantizedLinear)
        )
    return module


def quantize_copy(
    module: nn.Module, mode: str, scheme: str, dtype: str, linears: Sequence[str], convs: Sequence[str]
) -> tuple[nn.Module, dict[str, dict[str, str]]]:
    """A quantized copy of the float ``module`` and ``{layer: {"type", "how"}}``.

    ``linears`` and ``convs`` are the names (inside ``module``) of the Linear and Conv layers to
    quantize; ``half`` casts the whole copy instead.
    """
    out = copy.deepcopy(module).eval()
    if mode == "half":
        cast_half(out, HALF_DTYPES[dtype])
        return out, {
            "*": {"type": type(module).__name__, "how": f"{dtype} cast, float32 at each layer's boundary"}
        }
    layers: dict[str, dict[str, str]] = {}
    if linears:
        from torchao.quantization import quantize_

        config = torchao_config(scheme)
        wanted = set(linears)
        quantize_(out, config, filter_fn=lambda m, fqn: fqn in wanted and isinstance(m, nn.Linear))
        how = f"torchao {type(config).__name__} ({scheme}: int8 per-channel weights"
        how += (
            ", int8 asymmetric per-token dynamic activations)"
            if scheme == "int8_dynamic"
            else ", float activations)"
        )
        if mode == "qat":
            how = "QAT fake-quant, then " + how
        layers.update({name: {"type": "Linear", "how": how} for name in linears})
    for name in convs:
        conv = out.get_submodule(name)
        set_submodule(out, name, Int8WeightConv(conv))
        layers[name] = {
            "type": type(conv).__name__,
            "how": "Int8WeightConv (int8 per-output-channel weights, dequantized per forward; no fake-quant)",
        }
    for p in out.parameters():
        p.requires_grad_(False)
    return out, layers
