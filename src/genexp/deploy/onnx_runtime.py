"""ONNX Runtime on the CPU: sessions, a torch shim that lets a genexp model compute through a graph, and
latency that can be compared across backends.

- ``open_session(path, threads)``: a CPU ``InferenceSession`` with ``threads`` intra-op threads (torch's count
  by default, so the two backends get the same cores) and one inter-op thread. A file ONNX Runtime cannot
  read raises ``GenexpError`` naming ``key`` and the file.
- ``OrtModule``: an ``nn.Module`` whose forward feeds its tensors to a session and returns its outputs as
  tensors, so ``trainer.test`` measures an exported graph with the family's own metric code.
- ``interleaved_latency(calls)``: every call timed in alternating rounds in this process (a shared
  machine's load drifts over all of them alike): median and spread in ms.
- ``tokens_per_s``: text generation throughput for a next-token function (no KV cache on either backend).
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from genexp.errors import GenexpError, first_line


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
        raise GenexpError(f"{key}={path}: not an ONNX graph ONNX Runtime can run: {first_line(err)[:200]}") from err


def cpu_name() -> str:
    """The CPU model (``lscpu``'s model name), e.g. ``AMD EPYC``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The CPU flags that decide int8 and bf16 speed (AVX2, AVX-512, VNNI, BF16, AMX) present here."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")
    return [f for f in wanted if f in flags]


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


def torch_call(module: nn.Module, example: Any) -> Callable[[], Any]:
    """A no-argument call running ``module(example)`` in eager mode without autograd."""
    args = example if isinstance(example, tuple) else (example,)
    module = module.eval()

    def call() -> Any:
        with torch.inference_mode():
            return module(*args)

    return call


def interleaved_latency(
    calls: Mapping[str, Callable[[], Any]], repeats: int = 20, warmup: int = 3, rounds: int = 4
) -> dict[str, dict[str, float]]:
    """ms per call of each entry: ``rounds`` alternating rounds of ``repeats // rounds`` timed calls each.

    Returns ``{name: {"median_ms", "p10_ms", "p90_ms", "spread"}}`` over all timed calls, where
    ``spread = (p90 - p10) / median``.
    """
    per_round = max(1, repeats // rounds)
    times: dict[str, list[float]] = {name: [] for name in calls}
    for call in calls.values():
        for _ in range(warmup):
            call()
    for _ in range(rounds):
        for name, call in calls.items():
            call()  # one untimed call: the cache now holds this entry's weights, not the previous one's
            for _ in range(per_round):
                start = time.perf_counter()
                call()
                times[name].append((time.perf_counter() - start) * 1e3)
    return {name: _summary(values) for name, values in times.items()}


def _summary(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    median = statistics.median(values)
    low, high = values[int(0.1 * (len(values) - 1))], values[int(round(0.9 * (len(values) - 1)))]
    return {"median_ms": median, "p10_ms": low, "p90_ms": high, "spread": (high - low) / median if median else 0.0}


def tokens_per_s(
    next_logits: Callable[[np.ndarray], np.ndarray], prompt: np.ndarray, new_tokens: int, block_size: int
) -> float:
    """Greedy generation throughput: ``new_tokens`` tokens appended one by one to ``prompt`` (1, T), the
    context cropped to ``block_size``; ``next_logits(ids)`` returns the logits of the last position."""
    ids = prompt.astype(np.int64)
    start = time.perf_counter()
    for _ in range(new_tokens):
        logits = next_logits(ids[:, -block_size:])
        ids = np.concatenate([ids, logits.argmax(-1).reshape(1, 1).astype(np.int64)], axis=1)
    return new_tokens / (time.perf_counter() - start)
