"""The ONNX export of a deployable's graphs: opset checks, a float copy to export, the export itself, what a
graph file holds (inputs, outputs, weights), and the export folder's name. Which graphs each model family
ships, and how their outputs become samples, is ``genexp.exporters.registry``.

Graphs are written by ``torch.onnx.export`` (the TorchScript exporter: it exports the small genexp
networks in under a second and needs no onnxscript), with a dynamic batch axis on every input and output,
and a dynamic sequence axis for the GPT's tokens and logits:

- GPT: ``model.onnx``: ``tokens`` int64 (batch, sequence <= block_size) -> ``logits`` float32
  (batch, sequence, vocab);
- GAN: ``model.onnx``: the sampling generator (EMA when the run has one), ``z`` float32 (batch, latent) ->
  ``images`` float32 (batch, C, H, W) in [-1, 1];
- VAE: ``model.onnx``: ``images`` in [0, 1] -> ``logits`` of the reconstruction from the posterior mean,
  ``mu`` and ``logvar``; ``decoder.onnx``: ``z`` -> ``logits`` (samples: sigmoid of the logits);
- Diffusion: ``model.onnx``: the EMA denoiser, ``z_t`` float32 (batch, C, H, W) and ``t`` float32 (batch,) ->
  its prediction ``v`` or ``eps`` (batch, C, H, W).

The network exported is a float copy of ``deployable()``: pruning folded into plain weights (a checkpoint
already holds them), a torch int8 artifact dequantized, hooks removed.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from genexp.deploy.layers import Int8WeightConv, plain_copy, set_submodule
from genexp.deploy.onnx_attention import DOMAIN, FusedAttention
from genexp.runtime.errors import ConfigError, GenexpError, first_line

log = logging.getLogger(__name__)

OPSET_MIN = 14  # scaled_dot_product_attention exports from opset 14
TORCH_MAX_OPSET = 20  # torch.onnx's TorchScript exporter writes up to opset 20
FORMAT = "genexp-onnx/1"
ONNX_DTYPES = {1: "float32", 7: "int64", 10: "float16", 16: "bfloat16", 3: "int8", 2: "uint8", 6: "int32"}


@dataclass
class Family:
    """What one model family exports (built by ``genexp.exporters.registry.family_of``).

    ``graphs(batch)`` gives the graphs on example inputs of that batch (the main graph first); ``inputs(count,
    batch)`` batches for the main graph's input from the run's data (calibration and the int8 check);
    ``feeds(graph, batches)`` those batches as that graph's feeds; ``int8`` the ONNX Runtime method (``dynamic``
    or ``static``); ``usage`` what model.json says about sampling; ``text`` ``(prompt ids, block_size)`` for
    generation throughput, or None; ``cached`` the stem of a cached decoder graph (``tokens`` and ``past_<i>``
    in, ``logits`` and ``present_<i>`` out), or None; ``static_options`` narrow the static int8 (``onnx_quantize.quantize_graph``).
    """

    name: str
    model: str
    graphs: Any
    inputs: Any
    feeds: Any
    int8: str
    usage: dict[str, Any]
    text: tuple[Any, int] | None = None
    cached: str | None = None  # the stem of the cached decoder graph (past in, present out), if any
    static_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Graph:
    """One graph to export: its file stem, the module, an example input and its named, dynamic axes."""

    stem: str  # "model" -> model.onnx (and model.int8.onnx)
    module: nn.Module
    example: tuple[torch.Tensor, ...]
    inputs: list[str]
    outputs: list[str]
    dynamic: dict[str, dict[int, str]] = field(default_factory=dict)
    int8: str | None = (
        None  # this graph's int8 method when it differs from the family's (onnx_quantize.METHODS)
    )

    @property
    def file(self) -> str:
        return f"{self.stem}.onnx"

    def int8_file(self) -> str:
        return f"{self.stem}.int8.onnx"


def check_opset(opset: Any, key: str = "opset") -> int:
    """``opset`` when this torch and the installed onnx can both write it, else a ConfigError naming ``key``."""
    highest = min(TORCH_MAX_OPSET, onnx.defs.onnx_opset_version())
    if not isinstance(opset, int) or isinstance(opset, bool) or not OPSET_MIN <= opset <= highest:
        raise ConfigError(
            key,
            opset,
            f"an ONNX opset in [{OPSET_MIN}, {highest}] (the installed onnx {onnx.__version__} writes up to "
            f"{onnx.defs.onnx_opset_version()}, torch's exporter up to {TORCH_MAX_OPSET})",
        )
    return opset


def float_copy(module: nn.Module) -> nn.Module:
    """A plain float32 copy of ``module`` for export: pruning folded (``layers.plain_copy``), torch int8 weights
    dequantized (``Int8WeightConv`` back to its conv, torchao weights through ``dequantize()``), no hooks."""
    fresh = plain_copy(module)
    for name, m in list(fresh.named_modules()):
        if isinstance(m, Int8WeightConv):
            m.layer.weight = nn.Parameter(m.dequantized_weight().detach().float())
            set_submodule(fresh, name, m.layer)
    for m in fresh.modules():
        m._forward_pre_hooks.clear()  # a half cast's dtype hooks
        m._forward_hooks.clear()
        for pname, p in list(m._parameters.items()):
            if p is not None and type(p.data) is not torch.Tensor and hasattr(p.data, "dequantize"):
                m._parameters[pname] = nn.Parameter(p.data.dequantize().float(), requires_grad=False)
    return fresh.float().cpu().eval().requires_grad_(False)


def export_graph(graph: Graph, path: Path, opset: int) -> Path:
    """Write ``graph`` to ``path`` with ``torch.onnx.export`` and check it with ``onnx.checker``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(
                graph.module,
                graph.example,
                str(path),
                input_names=graph.inputs,
                output_names=graph.outputs,
                dynamic_axes=graph.dynamic,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
                custom_opsets=_custom_opsets(graph.module),
            )
        onnx.checker.check_model(str(path))
    except Exception as err:  # noqa: BLE001 - any exporter failure means the same to the user
        path.unlink(missing_ok=True)
        raise GenexpError(f"opset={opset}: exporting {path.name} failed: {first_line(err)[:300]}") from err
    return path


def _custom_opsets(module: nn.Module) -> dict[str, int]:
    """``com.microsoft`` when the graph holds onnx_attention's fused Attention (declaring it unused makes the
    exporter warn)."""
    return {DOMAIN: 1} if any(isinstance(m, FusedAttention) for m in module.modules()) else {}


def io_of(path: str | Path) -> dict[str, Any]:
    """Input and output names, dtypes and shapes (dynamic axes by name) of an ONNX file."""
    model = onnx.load(str(path), load_external_data=False)

    def describe(values: Any) -> list[dict[str, Any]]:
        out = []
        for value in values:
            tensor = value.type.tensor_type
            shape = [d.dim_param or d.dim_value for d in tensor.shape.dim]
            out.append(
                {
                    "name": value.name,
                    "dtype": ONNX_DTYPES.get(tensor.elem_type, str(tensor.elem_type)),
                    "shape": shape,
                }
            )
        return out

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    return {"inputs": describe(model.graph.input), "outputs": describe(model.graph.output), "opset": opset}


def initializer_counts(path: str | Path) -> dict[str, int]:
    """Numbers of weights (initializer elements) and non-zero weights in an ONNX file."""
    from onnx import numpy_helper

    model = onnx.load(str(path))
    params = nonzero = 0
    for init in model.graph.initializer:
        array = numpy_helper.to_array(init)
        if array.size > 1:  # scalars are scales, zero points and shape constants
            params += int(array.size)
            nonzero += int((array != 0).sum())
    return {"params": params, "nonzero": nonzero}


def export_folder(base: Path) -> Path:
    """``base`` when it does not exist yet, else ``base-2``, ``base-3``...: an export never overwrites another."""
    if not base.exists():
        return base
    n = 2
    while (base.parent / f"{base.name}-{n}").exists():
        n += 1
    return base.parent / f"{base.name}-{n}"
