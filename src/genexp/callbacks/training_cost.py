"""TrainingCost: what a run cost to train — time, throughput, peak memory and time to a target quality.

One callback, on in every run (``callbacks.train_cost``). At fit end it holds (``metrics()``, which
``genexp-train`` merges into ``metrics.json``):

- ``cost/fit_seconds``: wall seconds from fit start to fit end (sanity check, validation, checkpoints included);
- ``cost/step_ms_median``, ``cost/step_ms_p90``: one training batch, from ``on_train_batch_start`` to
  ``on_train_batch_end`` (forward, backward, optimizer step and the batch hooks; on CUDA after a synchronize);
- ``cost/samples_per_s`` (and ``cost/tokens_per_s`` for token batches): training samples over the summed
  step time — the rate of the hot loop;
- ``cost/peak_rss_mb``: the process's resident-memory high-water mark during fit (Linux: the mark is reset at
  fit start, so runs of one process are measured apart), ``cost/start_rss_mb`` the resident memory then;
- ``cost/peak_gpu_mb``: ``torch.cuda.max_memory_allocated`` during fit, the largest over the devices (one key
  per rank too, ``cost/peak_gpu_mb/rank<r>``, under DDP);
- with ``target_metric`` and ``target_value``: ``cost/target_seconds`` and ``cost/target_step``, the wall
  seconds and optimizer step at which the validated metric first reached the value (NaN when it never did).

Every ``log_every_n_steps`` steps the loggers get ``cost/step_ms`` and ``cost/rss_mb`` (``cost/gpu_mb`` on
CUDA): TensorBoard plots them. After every validation, one row goes to ``curve_path`` (CSV: epoch, step,
seconds since fit start, and each ``val/`` metric), the learning curve against steps and wall-clock time.
"""

from __future__ import annotations

import csv
import math
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import EarlyStopping

from genexp.runtime.errors import ConfigError

MODES = ("min", "max")
MB = 2**20


class TrainingCost(Callback):
    """Measure fit time, step time, throughput, peak memory and time to target.

    Args:
        target_metric: a validated metric (e.g. ``val/loss``); with ``target_value``, time-to-target is recorded.
        target_value: the value ``target_metric`` has to reach.
        target_mode: ``min`` (reached when metric <= value) or ``max`` (metric >= value).
        curve_path: CSV file for the validation curve (None: no file).
    """

    def __init__(
        self,
        target_metric: str | None = None,
        target_value: float | None = None,
        target_mode: str = "min",
        curve_path: str | Path | None = None,
    ) -> None:
        check_target(target_metric, target_value, target_mode)
        self.target_metric, self.target_value, self.target_mode = target_metric, target_value, target_mode
        self.curve_path = Path(curve_path) if curve_path else None
        self.step_seconds: list[float] = []
        self.samples = self.tokens = 0
        self.fit_start = self.fit_seconds = math.nan
        self.start_rss_mb = self.peak_rss_mb = math.nan
        self.peak_gpu_mb: list[float] = []
        self.target_seconds = self.target_step = math.nan
        self._batch_start = 0.0
        self._cuda = False

    # ----- hooks ------------------------------------------------------------------------------------
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._cuda = pl_module.device.type == "cuda"
        if self._cuda:
            torch.cuda.reset_peak_memory_stats(pl_module.device)
        reset_peak_rss()
        self.start_rss_mb = current_rss_mb()
        self.fit_start = time.perf_counter()

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._cuda:
            torch.cuda.synchronize(pl_module.device)
        self._batch_start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._cuda:
            torch.cuda.synchronize(pl_module.device)
        seconds = time.perf_counter() - self._batch_start
        self.step_seconds.append(seconds)
        samples, tokens = batch_size_of(batch)
        self.samples += samples
        self.tokens += tokens
        every = max(1, trainer.log_every_n_steps)
        if len(self.step_seconds) % every == 0 and trainer.loggers:
            scalars = {"cost/step_ms": 1e3 * seconds, "cost/rss_mb": current_rss_mb()}
            if self._cuda:
                scalars["cost/gpu_mb"] = torch.cuda.max_memory_allocated(pl_module.device) / MB
            for logger in trainer.loggers:
                logger.log_metrics(scalars, step=trainer.global_step)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        seconds = time.perf_counter() - self.fit_start
        metrics = {k: _number(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        if self.target_metric and math.isnan(self.target_step):
            value = metrics.get(self.target_metric, math.nan)
            if reached(value, self.target_value, self.target_mode):  # type: ignore[arg-type]
                self.target_seconds, self.target_step = seconds, float(trainer.global_step)
        if self.curve_path is not None and trainer.is_global_zero:
            row = {"epoch": trainer.current_epoch, "step": trainer.global_step, "seconds": round(seconds, 4)}
            append_csv(self.curve_path, {**row, **metrics})

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.fit_seconds = time.perf_counter() - self.fit_start
        self.peak_rss_mb = peak_rss_mb()
        if self._cuda:
            peak = torch.tensor(
                [torch.cuda.max_memory_allocated(pl_module.device) / MB], device=pl_module.device
            )
            self.peak_gpu_mb = [float(v) for v in trainer.strategy.all_gather(peak).flatten().cpu()]

    # ----- the figures ------------------------------------------------------------------------------
    def metrics(self) -> dict[str, float]:
        """The ``cost/...`` figures of the last fit (empty before one)."""
        if math.isnan(self.fit_seconds):
            return {}
        steps = self.step_seconds[1:] or self.step_seconds  # the first batch pays one-off set-up costs
        train_seconds = sum(self.step_seconds)
        out = {
            "cost/fit_seconds": self.fit_seconds,
            "cost/train_batches": float(len(self.step_seconds)),
            "cost/step_ms_median": 1e3 * statistics.median(steps) if steps else math.nan,
            "cost/step_ms_p90": 1e3 * percentile(steps, 0.9) if steps else math.nan,
            "cost/samples_per_s": self.samples / train_seconds if train_seconds else math.nan,
            "cost/start_rss_mb": self.start_rss_mb,
            "cost/peak_rss_mb": self.peak_rss_mb,
        }
        if self.tokens:
            out["cost/tokens_per_s"] = self.tokens / train_seconds
        if self.peak_gpu_mb:
            out["cost/peak_gpu_mb"] = max(self.peak_gpu_mb)
            if len(self.peak_gpu_mb) > 1:
                out.update({f"cost/peak_gpu_mb/rank{r}": v for r, v in enumerate(self.peak_gpu_mb)})
        if self.target_metric:
            out["cost/target_seconds"] = self.target_seconds
            out["cost/target_step"] = self.target_step
        return out


def check_target(metric: Any, value: Any, mode: Any) -> None:
    """Raise a ConfigError naming ``target.*`` for a malformed target."""
    if metric is not None and (not isinstance(metric, str) or not metric):
        raise ConfigError("target.metric", metric, "a validated metric name such as val/loss, or null")
    if metric is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)):
        raise ConfigError("target.value", value, f"a number for target.metric={metric} to reach")
    if mode not in MODES:
        raise ConfigError("target.mode", mode, f"one of {list(MODES)}")


def target_stopper(metric: str | None, value: float | None, mode: str = "min") -> EarlyStopping:
    """Lightning's EarlyStopping that ends the fit once ``metric`` reaches ``value`` (``target.stop=true``)."""
    if metric is None:
        raise ConfigError("target.metric", None, "a validated metric name when target.stop=true")
    check_target(metric, value, mode)
    return EarlyStopping(
        monitor=metric, mode=mode, stopping_threshold=value, patience=sys.maxsize, check_finite=False
    )


def reached(value: float, target: float, mode: str) -> bool:
    return math.isfinite(value) and (value <= target if mode == "min" else value >= target)


def batch_size_of(batch: Any) -> tuple[int, int]:
    """(samples, tokens) of a batch: its first tensor's rows, and its elements when they are token ids."""
    first = batch[0] if isinstance(batch, (tuple, list)) and batch else batch
    if not isinstance(first, torch.Tensor) or first.dim() == 0:
        return 0, 0
    tokens = first.numel() if not first.is_floating_point() and first.dim() == 2 else 0
    return int(first.shape[0]), int(tokens)


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (linear interpolation) of ``values``."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def reset_peak_rss() -> None:
    """Reset the kernel's resident-memory high-water mark of this process (Linux >= 4.0; else a no-op)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    """This process's resident-memory high-water mark in MiB (``getrusage``; KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MB if sys.platform == "darwin" else peak / 1024


def current_rss_mb() -> float:
    """This process's resident memory now, in MiB (``/proc/self/statm``; the peak where that is missing)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return peak_rss_mb()
    return pages * resource.getpagesize() / MB


def append_csv(path: Path, row: dict[str, Any]) -> None:
    """Append ``row`` to the CSV at ``path`` (header first; a row with new columns rewrites the file with them)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    if path.is_file():
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    fields = list(dict.fromkeys([*(rows[0] if rows else {}), *row]))
    if rows and list(rows[0]) == fields:
        with path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=fields).writerow(row)
        return
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows([*rows, row])


def _number(value: Any) -> float:
    try:
        return float(value.item() if hasattr(value, "item") else value)
    except (TypeError, ValueError):
        return math.nan
