"""A trial measured on this machine: quality on the validation split, its export, and the latency of every
backend interleaved with the base model in this one process.

Timing happens here, in the ``genexp-optimize`` process, after the trial's fine-tune has exited and before the
next one starts, under an exclusive lock on ``<out>/measure.lock`` (a second search on the same folder waits):
no training shares the cores while a backend is timed. The base model's torch eager graph is timed in the same
alternating rounds as the trial's backends, so every speedup is a ratio taken under the same conditions.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from genexp.checkpoints.rebuild import Loaded, load_any
from genexp.deploy.latency import cpu_flags, cpu_name, interleaved_latency, torch_call
from genexp.deploy.onnx_package import write_package
from genexp.deploy.onnx_runtime import open_session, session_call
from genexp.exporters.registry import family_of, graphs_of, install_graphs
from genexp.runtime.build import instantiate
from genexp.runtime.errors import GenexpError
from genexp.runtime.run_folder import scalar_metrics

BASE_BACKEND = "base torch fp32 eager"
TORCH, ORT_FP32, ORT_INT8 = "torch fp32 eager", "onnxruntime fp32", "onnxruntime int8"


@contextlib.contextmanager
def measuring(out: Path) -> Iterator[None]:
    """Hold ``<out>/measure.lock`` exclusively: one trial is timed at a time."""
    with open(out / "measure.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def quality(loaded: Loaded, metric: str, split: str = "val") -> float:
    """The family's ``metric`` of ``loaded.model`` on ``split`` (``val`` or ``test``), with the run's trainer."""
    trainer_cfg = dict(loaded.config.get("trainer") or {})
    trainer_cfg.update(accelerator="cpu", devices=1, strategy="auto", enable_progress_bar=False)
    trainer_cfg.update(enable_model_summary=False, num_nodes=1)
    from omegaconf import OmegaConf

    trainer = instantiate(OmegaConf.create(trainer_cfg), "trainer", logger=False, callbacks=[])
    run = trainer.validate if split == "val" else trainer.test
    metrics = scalar_metrics(*run(loaded.model, datamodule=loaded.datamodule, verbose=False))
    name = f"{split}/{metric}"
    if name not in metrics:
        raise GenexpError(f"space: metric={metric}: the model logs no {name} (it logs {sorted(metrics)})")
    return metrics[name]


def through_int8(loaded: Loaded, folder: Path) -> Loaded:
    """A copy of ``loaded`` whose deployable computes through the int8 graphs of ``folder``."""
    sessions = {g.stem: open_session(folder / f"{g.stem}.int8.onnx") for g in graphs_of(loaded.model)}
    model = install_graphs(copy.deepcopy(loaded.model), sessions)
    return Loaded(**{**loaded.__dict__, "model": model})


def measure_trial(
    run: Path, base: Loaded, metric: str, batch_size: int, int8: bool, timing: dict[str, int]
) -> dict[str, Any]:
    """Export the trial in ``run`` to ``run/export`` and measure it; returns the figures of every backend."""
    loaded = load_any(run, key="trial")
    folder = run / "export"
    info = write_package(
        family_of(loaded.model, loaded.datamodule),
        folder,
        quantize="int8" if int8 else "none",
        batch_size=batch_size,
        timing={"repeats": 0},
    )
    fp32_quality = quality(loaded, metric)
    main = family_of(loaded.model, loaded.datamodule).graphs(batch_size)[0]
    files = {TORCH: folder / main.file, ORT_FP32: folder / main.file}
    qualities = {TORCH: fp32_quality, ORT_FP32: fp32_quality}
    if "int8" in info["variants"]:
        files[ORT_INT8] = folder / main.int8_file()
        qualities[ORT_INT8] = quality(through_int8(loaded, folder), metric)
    base_main = family_of(base.model, base.datamodule).graphs(batch_size)[0]
    feeds = {name: x.numpy() for name, x in zip(main.inputs, main.example, strict=True)}
    calls = {
        BASE_BACKEND: torch_call(base_main.module, base_main.example),
        TORCH: torch_call(main.module, main.example),
    }
    calls.update({name: session_call(open_session(files[name]), feeds) for name in files if name != TORCH})
    times = interleaved_latency(
        calls, timing.get("repeats", 20), timing.get("warmup", 3), timing.get("rounds", 4)
    )
    return {
        "backends": {
            name: {
                "median_ms": times[name]["median_ms"],
                "quality": qualities[name],
                "bytes": files[name].stat().st_size,
            }
            for name in files
        },
        "base_ms": times[BASE_BACKEND]["median_ms"],
        "batch_size": batch_size,
        "int8": info.get("int8", {}),
        "export": str(folder),
    }


def machine() -> dict[str, Any]:
    """The CPU the figures were taken on."""
    return {"cpu": cpu_name(), "cpu_flags": cpu_flags()}
