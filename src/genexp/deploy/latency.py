"""Latency and throughput of a deployable on a fixed batch: CPU (median of repeats), and GPU when present.

``cpu_latency_ms`` is the one CPU figure of a module (``compression.json``, the report, TensorBoard and the
benchmarks use it). ``interleaved_latency`` times several calls (torch modules, ONNX Runtime sessions) in
alternating rounds in one process, so that a shared machine's load drifts over all of them alike (a sweep's
ratios stay honest): median and p10/p90 spread. ``tokens_per_s`` is text generation throughput
(``tokens_per_s_cached`` with a key/value cache);
``cpu_name``, ``cpu_flags`` and ``omp_wait_policy`` say which CPU measured it, and how.
"""

from __future__ import annotations

import copy
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn


@torch.no_grad()
def cpu_latency_ms(module: nn.Module, example_input: Any, repeats: int = 20, warmup: int = 3) -> float:
    """Median wall-clock milliseconds of ``module(example_input)`` in eval mode (after ``warmup`` calls).

    The module and input must be on the CPU; a tuple input is unpacked into positional arguments.
    """
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    was_training = module.training
    module.eval()
    try:
        for _ in range(warmup):
            module(*args)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            module(*args)
            times.append((time.perf_counter() - start) * 1e3)
    finally:
        module.train(was_training)
    return statistics.median(times)


def on_device(example: Any, device: torch.device | str) -> Any:
    """``example`` (a tensor or a tuple of them) moved to ``device``."""
    if isinstance(example, tuple):
        return tuple(x.to(device) if isinstance(x, torch.Tensor) else x for x in example)
    return example.to(device) if isinstance(example, torch.Tensor) else example


def throughput(batch_size: int, latency_ms: float) -> float:
    """Samples per second for one batch of ``batch_size`` taking ``latency_ms``."""
    return batch_size / (latency_ms / 1e3) if latency_ms > 0 else float("inf")


def torch_call(module: nn.Module, example: Any) -> Callable[[], Any]:
    """A no-argument call running ``module(example)`` in eager mode without autograd."""
    args = example if isinstance(example, tuple) else (example,)
    module = module.eval()

    def call() -> Any:
        with torch.inference_mode():
            return module(*args)

    return call


def interleaved_latency(
    calls: Mapping[str, Callable[[], Any]],
    repeats: int = 20,
    warmup: int = 3,
    rounds: int = 4,
    settle_s: float = 0.05,
) -> dict[str, dict[str, float]]:
    """ms per call of each entry: ``rounds`` alternating rounds of ``repeats // rounds`` timed calls each, with
    ``settle_s`` idle seconds before each, so that no other entry's thread pool still spins on the cores.

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
            time.sleep(
                settle_s
            )  # the previous entry's spinning worker threads (OpenMP, ONNX Runtime) go idle
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
    return {
        "median_ms": median,
        "p10_ms": low,
        "p90_ms": high,
        "spread": (high - low) / median if median else 0.0,
    }


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


def tokens_per_s_cached(
    step: Callable[[np.ndarray, list[np.ndarray]], tuple[np.ndarray, list[np.ndarray]]],
    empty_past: list[np.ndarray],
    prompt: np.ndarray,
    new_tokens: int,
    block_size: int,
) -> float:
    """``tokens_per_s`` with a key/value cache: ``step(new_ids, past) -> (logits, present)`` sees only the ids
    not yet cached; when the next would not fit in ``block_size``, the cache re-fills from the last
    ``block_size // 2`` ids (``genexp.models.kv_cache``'s strategy, in numpy)."""
    ids = prompt.astype(np.int64)
    past, new = empty_past, ids[:, -block_size:]
    start = time.perf_counter()
    for _ in range(new_tokens):
        if past[0].shape[3] + new.shape[1] > block_size:
            past, new = empty_past, ids[:, -max(1, block_size // 2) :]
        logits, past = step(new, past)
        new = logits[:, -1].argmax(-1).reshape(1, 1).astype(np.int64)
        ids = np.concatenate([ids, new], axis=1)
    return new_tokens / (time.perf_counter() - start)


def cpu_name() -> str:
    """The CPU model (``lscpu``'s model name), e.g. ``AMD EPYC``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def omp_wait_policy() -> str:
    """``OMP_WAIT_POLICY`` as this process sees it (``unset`` when it is not set). It belongs next to every CPU
    latency: ``PASSIVE`` puts torch's OpenMP threads to sleep after each op, which slows torch eager by 20-90% on
    these small models and leaves ONNX Runtime (its own thread pool) as it is."""
    return os.environ.get("OMP_WAIT_POLICY", "unset")


def cpu_flags() -> list[str]:
    """The CPU flags that decide int8 and bf16 speed (AVX2, AVX-512, VNNI, BF16, AMX) present here.

    Read from CPUID through torch (``torch.cpu.get_capabilities``, where this torch has it), so they are the
    flags the kernels dispatch on (also on macOS, or under an emulator that hides some), else ``/proc/cpuinfo``.
    """
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")
    capabilities = getattr(torch.cpu, "get_capabilities", None)
    if capabilities is not None:
        found = {name.replace("avx512_f", "avx512f") for name, on in capabilities().items() if on is True}
        return [f for f in wanted if f in found]
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []
    )
    return [f for f in wanted if f in flags]


@torch.no_grad()
def gpu_latency(module: nn.Module, example: Any, repeats: int = 20, warmup: int = 3) -> dict[str, Any]:
    """Median CUDA ms of a copy of ``module`` on the GPU (CUDA events), or ``{}`` without a GPU.

    A module that cannot run there (e.g. a CPU-only int8 kernel) gives ``{"gpu_error": "..."}``.
    """
    if not torch.cuda.is_available():
        return {}
    device = torch.device("cuda")
    try:
        gpu_module = copy.deepcopy(module).to(device).eval()
        args = on_device(example, device)
        args = args if isinstance(args, tuple) else (args,)
        for _ in range(warmup):
            gpu_module(*args)
        torch.cuda.synchronize()
        times = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            gpu_module(*args)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
    except Exception as err:  # noqa: BLE001 - reported, not fatal: the CPU figures still stand
        return {"gpu_name": torch.cuda.get_device_name(), "gpu_error": str(err).splitlines()[0][:200]}
    finally:
        torch.cuda.empty_cache()
    return {"gpu_name": torch.cuda.get_device_name(), "gpu_latency_ms": statistics.median(times)}
