"""ONNX Runtime on the CPU: sessions, a torch shim that lets a genexp model compute through a graph, and
latency that can be compared across backends.

- ``open_session(path, threads)``: a CPU ``InferenceSession`` with ``threads`` intra-op threads (torch's count
  by default, so the two backends get the same cores) and one inter-op thread. A file ONNX Runtime cannot
  read raises ``GenexpError`` naming ``key`` and the file.
- ``OrtModule``: an ``nn.Module`` whose forward feeds its tensors to a session and returns its outputs as
  tensors, so ``trainer.test`` measures an exported graph with the family's own metric code.
- ``session_call``: a session on fixed feeds, for ``genexp.deploy.latency.interleaved_latency``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from genexp.runtime.errors import GenexpError, first_line


def open_session(path: str | Path, threads: int | None = None, key: str = "target") -> Any:
    """A CPU ``onnxruntime.InferenceSession`` for ``path`` with ``threads`` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001 - ORT raises its own pybind types for every bad file
        raise GenexpError(
            f"{key}={path}: not an ONNX graph ONNX Runtime can run: {first_line(err)[:200]}"
        ) from err


class OrtModule(nn.Module):
    """An ONNX Runtime session behind an ``nn.Module`` forward: tensors in, tensors out (CPU).

    Args:
        session: an ``InferenceSession``; its inputs are fed from the positional arguments in order.
        outputs: which outputs to return (indices): one gives a tensor, several a tuple.
    """

    def __init__(self, session: Any, outputs: tuple[int, ...] = (0,)) -> None:
        super().__init__()
        self.session, self.outputs = session, outputs
        self.input_names = [i.name for i in session.get_inputs()]

    def forward(self, *args: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        feeds = {name: arg.detach().cpu().numpy() for name, arg in zip(self.input_names, args, strict=True)}
        results = self.session.run(None, feeds)
        out = tuple(torch.from_numpy(np.ascontiguousarray(results[i])) for i in self.outputs)
        return out[0] if len(out) == 1 else out


def session_call(session: Any, feeds: Mapping[str, np.ndarray]) -> Callable[[], Any]:
    """A no-argument call running ``session`` on fixed ``feeds`` (for ``interleaved_latency``)."""
    feeds = dict(feeds)
    return lambda: session.run(None, feeds)
