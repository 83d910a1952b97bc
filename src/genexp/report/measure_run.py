"""One row of the report: quality, size and speed of a loaded checkpoint, run or artifact.

Size comes from ``genexp.deploy.costs.measure`` on ``deployable()`` (the numbers ``compression.json``
holds): parameters, non-zeros, ``bytes_dense`` (``torch.save`` of the state dict) and ``bytes_sparse`` (the
bitmask format). ``bytes`` is what ships in genexp's smallest format: the smaller of the two, for a
checkpoint and a quantized artifact alike (an artifact's ``deployable.pt`` stores its weights in the bitmask
format, so this is the weights part of that file; ``file_bytes`` is the whole file, config included).
Speed is the CPU latency of ``deployable()`` on the fixed batch ``example_input(batch_size)`` (median of
repeats) and the throughput it implies; GPU figures are added when a GPU is present.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig

from genexp.checkpoints.rebuild import Loaded
from genexp.checks.values import int_at_least
from genexp.deploy.costs import measure
from genexp.deploy.latency import (
    cpu_latency_ms,
    cpu_name,
    gpu_latency,
    interleaved_latency,
    omp_wait_policy,
    on_device,
    throughput,
)
from genexp.deploy.onnx_runtime import session_call
from genexp.exporters.registry import exportable
from genexp.report.family import compression_of, family_of, model_class
from genexp.report.onnx_target import backend_latency, onnx_size
from genexp.report.training import training_of
from genexp.runtime.build import instantiate
from genexp.runtime.run_folder import scalar_metrics

DEFAULT_BATCH_SIZE = 16


@dataclass(frozen=True)
class SpeedSettings:
    """How latency is measured (``report.*`` in conf/eval.yaml)."""

    batch_size: int | None = None  # None: the run's compression latency_batch_size, else 16
    repeats: int = 20
    warmup: int = 3
    rounds: int = 4  # compare: alternating rounds over all runs
    gpu: bool = True
    backends: bool = True  # one target: also the per-backend table (torch eager, ORT fp32, ORT int8)

    @classmethod
    def from_config(cls, node: DictConfig | dict[str, Any] | None) -> SpeedSettings:
        node = dict(node or {})
        for key in ("repeats", "warmup", "rounds"):
            int_at_least(f"report.{key}", node.get(key, getattr(cls, key)), 0 if key == "warmup" else 1)
        size = int_at_least("report.batch_size", node.get("batch_size"), 1, allow_none=True)
        return cls(
            size,
            node.get("repeats", 20),
            node.get("warmup", 3),
            node.get("rounds", 4),
            bool(node.get("gpu", True)),
            bool(node.get("backends", True)),
        )

    def batch_for(self, loaded: Loaded) -> int:
        """The latency batch: this setting, else the run's ``compression.<name>.latency_batch_size``."""
        if self.batch_size:
            return self.batch_size
        for option in (loaded.config.get("compression") or {}).values():
            if isinstance(option, dict) and option.get("latency_batch_size"):
                return int(option["latency_batch_size"])
        return DEFAULT_BATCH_SIZE


def test_quality(
    loaded: Loaded,
    trainer_cfg: DictConfig,
    callbacks: list[Callback],
    loggers: list[Logger] | None = None,
    verbose: bool = True,
) -> dict[str, float]:
    """The test-stage metrics of ``loaded.model`` (the family's quality metrics among them)."""
    trainer = instantiate(trainer_cfg, "trainer", logger=loggers or False, callbacks=callbacks)
    return scalar_metrics(*trainer.test(loaded.model, datamodule=loaded.datamodule, verbose=verbose))


def size_of(loaded: Loaded) -> dict[str, float]:
    """Parameters, non-zeros, sparsity, dense/sparse/shipped bytes of ``deployable()`` and the file's bytes."""
    if loaded.kind == "onnx":
        return onnx_size(loaded)
    numbers = measure(loaded.model.deployable().cpu(), None, repeats=0)
    # an artifact folder ships its .pt
    file = loaded.path / "deployable.pt" if loaded.path.is_dir() else loaded.path
    file_bytes = file.stat().st_size
    shipped = min(numbers["bytes_dense"], numbers["bytes_sparse"])
    return {**numbers, "bytes": shipped, "file_bytes": file_bytes}


def example_of(loaded: Loaded, batch_size: int) -> Any:
    """The fixed latency batch of ``deployable()`` on the CPU."""
    return on_device(loaded.model.example_input(batch_size), "cpu")


def latency_call(loaded: Loaded, batch_size: int) -> Callable[[], Any]:
    """One call of what ships on the fixed latency batch: the ONNX Runtime session of an .onnx target
    (numpy in and out), else ``deployable()`` in eval mode (as ``cpu_latency_ms`` times it)."""
    example = example_of(loaded, batch_size)
    if loaded.kind == "onnx":
        name = loaded.session.get_inputs()[0].name
        return session_call(loaded.session, {name: example.numpy()})
    deployable = loaded.model.deployable().cpu().eval()
    args = example if isinstance(example, tuple) else (example,)
    return lambda: deployable(*args)


def speed_of(loaded: Loaded, settings: SpeedSettings, latency_ms: float | None = None) -> dict[str, Any]:
    """CPU latency (measured here unless given) and throughput; GPU figures when a GPU is present."""
    batch = settings.batch_for(loaded)
    deployable = loaded.model.deployable().cpu()
    example = example_of(loaded, batch)
    if latency_ms is None and loaded.kind == "onnx":
        call = {"graph": latency_call(loaded, batch)}
        latency_ms = interleaved_latency(call, settings.repeats, settings.warmup, 1)["graph"]["median_ms"]
    if latency_ms is None:
        latency_ms = cpu_latency_ms(deployable, example, repeats=settings.repeats, warmup=settings.warmup)
    out: dict[str, Any] = {
        "batch_size": batch,
        "latency_ms": latency_ms,
        "throughput_per_s": throughput(batch, latency_ms),
        "threads": torch.get_num_threads(),
        "cpu": cpu_name(),
        "omp_wait_policy": omp_wait_policy(),
    }
    if settings.gpu and loaded.kind != "onnx":
        gpu = gpu_latency(deployable, example, repeats=settings.repeats, warmup=settings.warmup)
        if "gpu_latency_ms" in gpu:
            gpu["gpu_throughput_per_s"] = throughput(batch, gpu["gpu_latency_ms"])
        out.update(gpu)
    return out


def describe(loaded: Loaded) -> dict[str, Any]:
    """Where the row comes from and what compression produced it."""
    family = family_of(loaded.config)
    compression = compression_of(loaded.config)
    if loaded.kind == "artifact" and compression["quantize"] is None:
        compression = {**compression, "quantize": "artifact", "baseline": False}
        compression["label"] = (compression["label"] + " + quantized artifact").removeprefix("dense + ")
    dense = compression["baseline"]
    if loaded.kind == "onnx":
        label = f"onnxruntime {loaded.precision}"
        compression = {**compression, "baseline": False, "label": f"{compression['label']} ({label})"}
        if loaded.precision == "int8":
            compression["quantize"] = label
    run_dir = loaded.run_dir
    return {
        "target": str(loaded.path),
        "kind": loaded.kind,
        "run_dir": str(run_dir) if run_dir else None,
        "run": run_name(run_dir) if run_dir else loaded.path.name,
        "family": family.name,
        "model": model_class(loaded.config),
        "compression": compression["label"],
        "prune_sparsity": compression["prune"] or 0.0,
        "quantize": compression["quantize"] or "none",
        "distill": compression["distill"],
        "baseline": compression["baseline"],
        "dense": dense and (loaded.kind != "onnx" or loaded.precision == "fp32"),
        "backend": loaded.backend,
        "quality_metric": family.primary,
        "quality_label": family.label,
        **training_of(loaded.config, run_dir),
        **{f"checkpoint/{k}": v for k, v in loaded.info.items()},
    }


def run_name(run_dir: Any) -> str:
    """A short name: ``<multirun time>/<job>`` for a multirun job, the folder name otherwise."""
    path = Path(run_dir)
    return f"{path.parent.name}/{path.name}" if path.name.isdigit() else path.name


def assemble(
    loaded: Loaded, metrics: dict[str, float], size: dict[str, float], speed: dict[str, Any]
) -> dict[str, Any]:
    """The report row: description, ``quality`` (the family's primary metric), metrics, size, speed."""
    row = describe(loaded)
    primary = row["quality_metric"]
    row["quality"] = metrics.get(primary, float("nan"))
    row["metrics"] = metrics
    row.update(size)
    row.update(speed)
    return row


def measure_target(
    loaded: Loaded,
    trainer_cfg: DictConfig,
    callbacks: list[Callback],
    settings: SpeedSettings,
    loggers: list[Logger] | None = None,
) -> dict[str, Any]:
    """Everything the report says about one loaded target."""
    size = size_of(loaded)
    speed = speed_of(loaded, settings)
    if settings.backends and (loaded.kind == "onnx" or exportable(loaded.model)):
        speed["latency_backends"] = backend_latency(
            loaded, speed["batch_size"], settings.repeats, settings.rounds, settings.warmup
        )
    metrics = test_quality(loaded, trainer_cfg, callbacks, loggers)
    return assemble(loaded, metrics, size, speed)
