"""int8 ONNX graphs with ONNX Runtime's quantization tools, each checked against its fp32 graph before it is
written.

- ``dynamic`` (the GPT): ``quantize_dynamic`` on MatMul/Gemm and the fused Attention (``QAttention``): int8
  weights (QInt8, per tensor), activations
  quantized per call from their own range; no calibration data.
- ``static`` (the GAN and VAE convolutions): ``quantize_static`` in the QDQ format (Quantize/Dequantize pairs
  that ORT fuses into int8 kernels): per-channel int8 weights, uint8 activations whose ranges are
  calibrated (MinMax) on batches of the run's own inputs. A family may narrow it (``static_options``): the
  diffusion UNet quantizes only its Conv/Gemm/MatMul (the time embedding's ``1000 t`` angles and the SiLU/Add
  glue stay float) with ``reduce_range`` (7-bit weights): ORT's fused u8×s8 x86 kernels saturate their int16
  pair sums on its input conv (0.40 relative error from that conv alone, 0.02 with QDQ simulated in float).

The check runs both graphs on the check feeds and compares the first output: the relative RMS error
``||int8 - fp32|| / ||fp32||`` must be at most ``tolerance``, else nothing is written and a GenexpError says by
how much it missed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from genexp.deploy.onnx_runtime import open_session
from genexp.runtime.errors import GenexpError

METHODS = ("dynamic", "static")
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
) -> dict[str, Any]:
    """Write the int8 version of ``source`` to ``target`` once it passes the check; returns its recipe and check.

    ``static_options``: ``op_types`` (the op types to quantize; default all ORT supports) and ``reduce_range``
    (7-bit weights) for ``static``.
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
    tmp = target.with_name(f".{target.name}.tmp")
    with _quiet():
        if method == "dynamic":
            quantize_dynamic(source, tmp, op_types_to_quantize=list(DYNAMIC_OPS), weight_type=QuantType.QInt8)
            recipe = {
                "method": "dynamic",
                "ops": list(DYNAMIC_OPS),
                "weights": "int8 per tensor",
                "activations": "int8, dynamic",
            }
        else:
            reader = _Reader(calibration)
            CalibrationDataReader.register(_Reader)
            options = dict(static_options or {})
            narrow = {"op_types_to_quantize": list(options["op_types"])} if options.get("op_types") else {}
            quantize_static(
                source,
                tmp,
                reader,
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                reduce_range=bool(options.get("reduce_range", False)),
                **narrow,
            )
            recipe = {
                "method": "static QDQ",
                "weights": "int8 per channel",
                "activations": "uint8, MinMax-calibrated",
                "calibration_batches": len(list(calibration)) if isinstance(calibration, list) else None,
                **({"ops": list(options["op_types"])} if options.get("op_types") else {}),
                **({"reduce_range": True} if options.get("reduce_range") else {}),
            }
    check = compare_graphs(source, tmp, check_feeds)
    check["tolerance"] = tolerance
    if not check["relative_error"] <= tolerance:
        tmp.unlink(missing_ok=True)
        raise GenexpError(
            f"quantize=int8: {target.name} differs from {source.name} by a relative error of "
            f"{check['relative_error']:.4f} (tolerance {tolerance}); not written"
        )
    os.replace(tmp, target)
    return {**recipe, "check": check}


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
