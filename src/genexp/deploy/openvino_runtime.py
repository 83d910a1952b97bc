"""OpenVINO on the CPU, as one more backend of an export's ONNX graphs (optional: ``pip install genexp[openvino]``).

OpenVINO reads ``model.onnx`` itself (no conversion step, no new file) and compiles it with oneDNN's kernels.
``OpenVinoSession`` gives a compiled model the part of ONNX Runtime's ``InferenceSession`` that genexp uses
(``get_inputs()``, ``run(None, feeds)``), so ``OrtModule``, ``session_call`` and every family exporter's
``install`` run through it unchanged: quality is measured with the family's own metric code, as for ONNX Runtime.

Precision is explicit. OpenVINO's CPU plugin computes in bf16 by default on a CPU with AVX-512 BF16 or AMX;
``openvino fp32`` pins f32 so that its quality is the fp32 graph's, and ``openvino bf16`` (offered only where the
CPU has bf16 instructions) is a separate backend whose quality is measured on its own.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from genexp.deploy.latency import cpu_flags
from genexp.runtime.errors import GenexpError, first_line

PRECISIONS = {"fp32": "f32", "bf16": "bf16"}


def available() -> bool:
    """Whether OpenVINO is installed (``pip install genexp[openvino]``)."""
    return importlib.util.find_spec("openvino") is not None


def precisions() -> list[str]:
    """The OpenVINO precisions worth timing on this CPU: fp32, and bf16 where the CPU computes it natively."""
    native_bf16 = {"avx512_bf16", "amx_bf16"} & set(cpu_flags())
    return ["fp32", "bf16"] if native_bf16 else ["fp32"]


def reason(err: Exception) -> str:
    """The line of an OpenVINO error that says what went wrong (its first lines name only source files)."""
    lines = [line.strip() for line in str(err).splitlines()]
    useful = [
        line for line in lines if line and not line.startswith(("Exception from", "Check '", "Summary"))
    ]
    return (useful[-1] if useful else first_line(err))[:200]


class OpenVinoSession:
    """An OpenVINO compiled model behind ONNX Runtime's session interface (``get_inputs``, ``run``).

    Args:
        path: an ONNX graph.
        precision: ``fp32`` or ``bf16`` (OpenVINO's ``INFERENCE_PRECISION_HINT``).
        threads: intra-op threads (torch's count by default, so every backend gets the same cores).
        key: the config key named by the error when OpenVINO cannot read ``path``.
    """

    def __init__(
        self, path: str | Path, precision: str = "fp32", threads: int | None = None, key: str = "target"
    ) -> None:
        if precision not in PRECISIONS:
            raise GenexpError(f"openvino: precision={precision}: expected one of {list(PRECISIONS)}")
        if not available():
            raise GenexpError("openvino: not installed; pip install 'genexp[openvino]'")
        import openvino as ov

        config = {
            "INFERENCE_NUM_THREADS": threads or torch.get_num_threads(),
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": PRECISIONS[precision],
        }
        try:
            self.compiled = ov.Core().compile_model(str(path), "CPU", config)
        except Exception as err:  # noqa: BLE001 - OpenVINO raises its own RuntimeError for every bad file
            raise GenexpError(f"{key}={path}: not an ONNX graph OpenVINO can run: {reason(err)}") from err
        self.request = self.compiled.create_infer_request()
        self.inputs = [
            SimpleNamespace(
                name=port.get_any_name(),
                shape=[d.get_length() if d.is_static else "?" for d in port.get_partial_shape()],
            )
            for port in self.compiled.inputs
        ]

    def get_inputs(self) -> list[SimpleNamespace]:
        """The graph's inputs, each with a ``name`` and a ``shape`` (a dynamic axis as a string), as ONNX
        Runtime's ``NodeArg``."""
        return list(self.inputs)

    def run(self, output_names: Any, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Every output of one call on ``feeds`` (``output_names`` must be None, as genexp calls it)."""
        if output_names is not None:
            raise GenexpError("openvino: run() returns every output; pass None")
        results = self.request.infer(dict(feeds))
        return [np.array(results[port]) for port in self.compiled.outputs]
