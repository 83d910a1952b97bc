"""int8 ONNX graphs with ONNX Runtime's quantization tools, each checked against its fp32 graph before it is
written.

- ``dynamic`` (the GPT): ``quantize_dynamic`` on MatMul/Gemm and the fused Attention (``QAttention``): int8
  weights (QInt8, per tensor), activations
  quantized per call from their own range; no calibration data.
- ``static`` (the GAN and VAE convolutions): ``quantize_static`` in the QDQ format (Quantize/Dequantize pairs
  that ORT fuses into int8 kernels): per-channel int8 weights, uint8 activations whose ranges are
  calibrated (MinMax) on batches of the run's own inputs. A family may narrow it (``static_options``): the
  diffusion UNet quantizes only its Conv/Gemm/MatMul (the time embedding's ``1000 t`` angles and the SiLU/Add
  glue stay float).
- ``weight_only`` (the GPT's cached decoder, one token a step): 8-bit weights in ``MatMulNBits``
  (``onnx_weight_only``): one node per MatMul instead of a ``DynamicQuantizeLinear`` + ``MatMulInteger`` pair.

The **scheme** (``int8_scheme``) follows the CPU that quantizes, for both methods: ONNX Runtime's u8×s8 kernels on
an x86 CPU without VNNI multiply with ``vpmaddubsw``, whose int16 sum of two uint8×int8 products saturates
(255·127·2 > 32767), so the error depends on the weights. There the weights get 7 bits (``reduce_range``:
255·63·2 fits in int16) and the graph is exact on every CPU; with VNNI (``vpdpbusd`` sums in int32), or on a
non-x86 CPU, they keep all 8. ``model.json`` records the scheme and why.

The check runs both graphs on the check feeds and compares the first output: the relative RMS error
``||int8 - fp32|| / ||fp32||`` must be at most ``tolerance``, else nothing is written and a GenexpError says by
how much it missed.
"""

from __future__ import annotations

import logging
import os
import platform
from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from genexp.deploy.latency import cpu_flags
from genexp.deploy.onnx_runtime import open_session
from genexp.deploy.onnx_weight_only import quantize_weight_only
from genexp.runtime.errors import ConfigError, GenexpError

METHODS = ("dynamic", "static", "weight_only")
SCHEMES = (
    "auto",
    "8bit",
    "7bit",
)  # auto: by the CPU's flags; 8bit / 7bit: the weights' bits, whatever the CPU
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
X86 = ("x86_64", "amd64", "i386", "i686", "x86")
DYNAMIC_OPS = ("MatMul", "Gemm", "Attention")  # Attention: onnx_attention's fused op, quantized to QAttention
Feeds = Mapping[str, np.ndarray]


@contextmanager
def _quiet() -> Any:
    """ORT's quantizer logs advice through the root logger at WARNING; keep it out of genexp's log."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


class Int8ToleranceMiss(GenexpError):
    """The int8 graph missed its tolerance against fp32; ``check`` holds the figures."""

    def __init__(self, message: str, check: dict[str, float]) -> None:
        super().__init__(message)
        self.check = check


def int8_scheme(
    requested: str = "auto", flags: Sequence[str] | None = None, machine: str | None = None
) -> dict[str, Any]:
    """The int8 weight scheme: ``{"weights_bits": 8 | 7, "reduce_range": bool, "reason": str}``.

    Args:
        requested: ``auto`` (by the CPU), ``8bit`` or ``7bit`` (as asked, e.g. for a graph that ships to another
            kind of CPU).
        flags, machine: the CPU's flags (``deploy.latency.cpu_flags``) and architecture (``platform.machine``);
            None reads this machine's.
    """
    if requested not in SCHEMES:
        raise ConfigError("int8_scheme", requested, f"one of {list(SCHEMES)}")
    if requested != "auto":
        bits = int(requested[0])
        return {
            "weights_bits": bits,
            "reduce_range": bits == 7,
            "reason": f"int8_scheme={requested} was asked for",
        }
    flags = cpu_flags() if flags is None else list(flags)
    machine = (platform.machine() if machine is None else machine).lower()
    vnni = sorted(set(VNNI_FLAGS) & set(flags))
    if machine not in X86:
        reason = f"{machine} CPU: its int8 dot products sum in int32, no saturation"
        return {"weights_bits": 8, "reduce_range": False, "reason": reason}
    if vnni:
        reason = f"x86 with {vnni[0]}: u8×s8 products sum in int32 (vpdpbusd), no saturation"
        return {"weights_bits": 8, "reduce_range": False, "reason": reason}
    known = "x86 without VNNI" if flags else "x86, CPU flags unknown"
    reason = f"{known}: u8×s8 pair sums saturate int16 (vpmaddubsw) with 8-bit weights; 7-bit weights fit"
    return {"weights_bits": 7, "reduce_range": True, "reason": reason}


class _Reader:
    """An ``onnxruntime.quantization.CalibrationDataReader`` over a list of feeds."""

    def __init__(self, feeds: Iterable[Feeds]) -> None:
        self._feeds = iter(list(feeds))

    def get_next(self) -> dict[str, np.ndarray] | None:
        item = next(self._feeds, None)
        return None if item is None else dict(item)

    def rewind(self) -> None:  # CalibrationDataReader API (not called by MinMax)
        pass


def quantize_graph(
    source: Path,
    target: Path,
    method: str,
    check_feeds: Feeds,
    calibration: Iterable[Feeds] = (),
    tolerance: float = 0.1,
    static_options: Mapping[str, Any] | None = None,
    scheme: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the int8 version of ``source`` to ``target`` once it passes the check; returns its recipe and check.

    ``static_options`` for ``static``: ``op_types`` (the op types to quantize; default all ORT supports) and
    ``float_ends`` (keep the first and last Conv in float: a network's input and output layers, where int8
    error hurts most).
    ``scheme``: an ``int8_scheme`` (default: this CPU's). A miss raises ``Int8ToleranceMiss``.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    if method not in METHODS:
        raise GenexpError(f"quantize: unknown int8 method {method!r} (expected one of {list(METHODS)})")
    scheme = dict(scheme or int8_scheme())
    reduce_range = bool(scheme["reduce_range"])
    bits = f"int8 ({7 if reduce_range else 8}-bit range)"
    tmp = target.with_name(f".{target.name}.tmp")
    with _quiet():
        if method == "weight_only":
            nodes = quantize_weight_only(source, tmp)
            recipe = {
                "method": "weight-only (MatMulNBits)",
                "weights": "int8 symmetric per block of 32 rows, 8-bit on every CPU",
                "activations": "int8, quantized per row inside MatMulNBits (accuracy_level 4)",
                "nodes": len(nodes),
            }
        elif method == "dynamic":
            quantize_dynamic(
                source,
                tmp,
                op_types_to_quantize=list(DYNAMIC_OPS),
                weight_type=QuantType.QInt8,
                reduce_range=reduce_range,
            )
            recipe = {
                "method": "dynamic",
                "ops": list(DYNAMIC_OPS),
                "weights": f"{bits} per tensor",
                "activations": "int8, dynamic",
            }
        else:
            reader = _Reader(calibration)
            CalibrationDataReader.register(_Reader)
            options = dict(static_options or {})
            narrow = {"op_types_to_quantize": list(options["op_types"])} if options.get("op_types") else {}
            float_ends = _first_and_last_conv(source) if options.get("float_ends") else []
            if float_ends:
                narrow["nodes_to_exclude"] = float_ends
            quantize_static(
                source,
                tmp,
                reader,
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                reduce_range=reduce_range,
                **narrow,
            )
            recipe = {
                "method": "static QDQ",
                "weights": f"{bits} per channel",
                "activations": "uint8, MinMax-calibrated",
                "calibration_batches": len(list(calibration)) if isinstance(calibration, list) else None,
                **({"ops": list(options["op_types"])} if options.get("op_types") else {}),
                **({"float_nodes": float_ends} if float_ends else {}),
            }
    check = compare_graphs(source, tmp, check_feeds)
    check["tolerance"] = tolerance
    if not check["relative_error"] <= tolerance:
        tmp.unlink(missing_ok=True)
        raise Int8ToleranceMiss(
            f"quantize=int8: {target.name} differs from {source.name} by a relative error of "
            f"{check['relative_error']:.4f} (tolerance {tolerance}, {scheme['weights_bits']}-bit weights); "
            "not written",
            check,
        )
    os.replace(tmp, target)
    return {**recipe, "scheme": scheme, "check": check}


def _first_and_last_conv(path: Path) -> list[str]:
    """The names of the graph's first and last Conv nodes (its input and output layers), in graph order."""
    import onnx

    convs = [node.name for node in onnx.load(str(path)).graph.node if node.op_type == "Conv"]
    return list(dict.fromkeys([convs[0], convs[-1]])) if convs else []


def compare_graphs(reference: Path, candidate: Path, feeds: Feeds) -> dict[str, float]:
    """Relative RMS error and largest absolute difference of the first output of two graphs on ``feeds``."""
    ref = open_session(reference).run(None, dict(feeds))[0].astype(np.float64)
    got = open_session(candidate).run(None, dict(feeds))[0].astype(np.float64)
    out = {
        "relative_error": float(np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-12)),
        "max_abs_diff": float(np.abs(got - ref).max()),
    }
    if ref.ndim == 3:  # logits: how often the most likely next token agrees
        out["top1_agreement"] = float((ref.argmax(-1) == got.argmax(-1)).mean())
    return out
