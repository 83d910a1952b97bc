"""Latency and throughput of a deployable on a fixed batch: CPU (median of repeats), and GPU when present.

``cpu_latency_ms`` is the one CPU figure (``compression.json``, the report, TensorBoard and the benchmarks
use it). ``interleaved_cpu_latency`` times several modules in alternating rounds, so that a shared
machine's load drifts over all of them alike (a sweep's ratios stay honest).
"""

from __future__ import annotations

import copy
import statistics
import time
from typing import Any

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


def interleaved_cpu_latency(
    modules: list[nn.Module], examples: list[Any], repeats: int = 20, warmup: int = 3, rounds: int = 4
) -> list[float]:
    """Median CPU ms of each ``module(example)``: ``rounds`` alternating rounds of ``repeats/rounds`` calls,
    the median of the round medians."""
    per_round = max(1, repeats // rounds)
    medians: list[list[float]] = [[] for _ in modules]
    for r in range(rounds):
        for i, (module, example) in enumerate(zip(modules, examples, strict=True)):
            medians[i].append(
                cpu_latency_ms(module, example, repeats=per_round, warmup=warmup if r == 0 else 1)
            )
    return [statistics.median(m) for m in medians]


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
