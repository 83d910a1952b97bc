"""The CPU backends an export folder's ONNX graphs run on, by the names every table uses.

- ``onnxruntime fp32`` / ``onnxruntime int8``: ONNX Runtime on ``model.onnx`` / ``model.int8.onnx``.
- ``openvino fp32``, ``openvino bf16`` (where the CPU computes bf16 natively), ``openvino int8``: OpenVINO on the
  same files, when it is installed (``pip install genexp[openvino]``). Which runtime wins depends on the machine
  and the family (``docs/search.md``), so every one available is timed and the fastest recorded.
- ``... subpixel``: the fp32 and bf16 backends again on ``model.subpixel.onnx``, the graph whose strided
  transposed convs are sub-pixel convs (``onnx_conv.SubPixelConv``), when the export wrote one.

A backend that cannot read a graph (OpenVINO has no kernel for ONNX Runtime's ``com.microsoft`` quantized
attention, for instance) is left out of that export's figures with its reason (``open_backends``); it is never
an error of the export.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genexp.deploy import openvino_runtime
from genexp.deploy.onnx_runtime import open_session
from genexp.runtime.errors import GenexpError

log = logging.getLogger(__name__)
SUBPIXEL = "subpixel"  # the layout of <stem>.subpixel.onnx (onnx_conv.subpixel_copy)


@dataclass(frozen=True)
class Backend:
    """One runtime at one precision, reading an export's fp32 or int8 graph files."""

    runtime: str  # onnxruntime | openvino
    precision: str  # fp32 | bf16 | int8
    layout: str = ""  # "" (as torch.onnx writes the graph) | "subpixel" (<stem>.subpixel.onnx)

    @property
    def name(self) -> str:
        return f"{self.runtime} {self.precision}" + (f" {self.layout}" if self.layout else "")

    @property
    def int8(self) -> bool:
        return self.precision == "int8"

    @property
    def suffix(self) -> str:
        """What the file names of this backend's graphs add to the stem: ``int8``, ``subpixel`` or nothing."""
        return self.layout or ("int8" if self.int8 else "")

    def file(self, stem: str) -> str:
        """The graph file this backend reads for graph ``stem``."""
        return f"{stem}.{self.suffix}.onnx" if self.suffix else f"{stem}.onnx"

    def reads(self, file: str) -> bool:
        """Whether ``file`` (a file name in an export folder) is one of the graphs this backend reads."""
        return file == self.file(file.split(".", 1)[0])

    def files_label(self) -> str:
        """What ships for this backend, in words (``model.json``'s ``backend.files``)."""
        return f"*.{self.suffix}.onnx" if self.suffix else "*.onnx without .int8 or .subpixel"

    def how(self) -> dict[str, Any]:
        """How to run the shipped files on this backend: ``model.json``'s ``backend.runtime`` (an export) and
        ``runtime`` (``best/`` of a search)."""
        if self.runtime == "openvino":
            precision = "f32" if self.int8 else openvino_runtime.PRECISIONS[self.precision]
            config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
            return {"runtime": "openvino", "device": "CPU", "compile_config": config}
        return {"runtime": "onnxruntime", "providers": ["CPUExecutionProvider"]}

    def open(self, path: Path, key: str = "target") -> Any:
        """A session (ONNX Runtime's interface) of ``path`` on this backend."""
        if self.runtime == "openvino":
            precision = "fp32" if self.int8 else self.precision  # int8 kernels; the rest of the graph in f32
            return openvino_runtime.OpenVinoSession(path, precision, key=key)
        return open_session(path, key=key)


def onnx_backends(int8: bool, subpixel: bool = False) -> list[Backend]:
    """The backends to time here: ONNX Runtime's, then OpenVINO's when installed; int8 ones when ``int8``; the
    float ones on the sub-pixel graphs too when ``subpixel``."""
    backends = [Backend("onnxruntime", "fp32")]
    if openvino_runtime.available():
        backends += [Backend("openvino", p) for p in openvino_runtime.precisions()]
    if subpixel:
        backends += [Backend(b.runtime, b.precision, SUBPIXEL) for b in backends]
    if int8:
        backends.append(Backend("onnxruntime", "int8"))
        if openvino_runtime.available():
            backends.append(Backend("openvino", "int8"))
    return backends


def by_name(name: str) -> Backend | None:
    """The backend called ``name`` (``"openvino bf16"``, ``"openvino bf16 subpixel"``), or None for torch eager
    and unknown names."""
    parts = name.split(" ")
    if len(parts) not in (2, 3) or parts[0] not in ("onnxruntime", "openvino"):
        return None
    precision, layout = parts[1], parts[2] if len(parts) == 3 else ""
    if (precision in ("fp32", "bf16") and layout in ("", SUBPIXEL)) or (precision, layout) == ("int8", ""):
        return Backend(parts[0], precision, layout)
    return None


def open_backends(
    backends: list[Backend], folder: Path, stems: list[str]
) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """``({backend name: {stem: session}}, {backend name: why it was left out})`` for the graphs ``stems`` of
    ``folder``; a backend whose files are missing or that cannot read one of them is left out."""
    opened: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    for backend in backends:
        try:
            opened[backend.name] = {stem: backend.open(folder / backend.file(stem)) for stem in stems}
        except (GenexpError, FileNotFoundError) as err:
            skipped[backend.name] = str(err)[:300]
            log.info("%s left out: %s", backend.name, skipped[backend.name])
    return opened, skipped
