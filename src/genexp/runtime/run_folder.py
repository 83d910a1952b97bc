"""The run folder: what one is and where its checkpoint is; never reuse a finished one; write metrics.json
atomically."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from genexp.runtime.errors import CheckpointError, GenexpError

FINISHED_MARKER = "metrics.json"
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"


def ensure_fresh(output_dir: str | Path) -> Path:
    """Refuse to run in a folder that already holds a finished run."""
    path = Path(output_dir)
    if (path / FINISHED_MARKER).exists():
        raise GenexpError(
            f"hydra.run.dir={path}: holds a finished run ({FINISHED_MARKER} exists); "
            "choose a new folder (the default is unique per launch) instead of overwriting it"
        )
    return path


def resume_checkpoint(output_dir: str | Path) -> str | None:
    """``<run>/checkpoints/last.ckpt`` when ``output_dir`` holds an unfinished run, else None.

    A SLURM job that submitit requeues after a preemption or timeout restarts in the same folder; resuming
    from its last checkpoint loses at most the epoch in progress. Finished folders never get here
    (`ensure_fresh` refuses them).
    """
    last = Path(output_dir) / LAST_CHECKPOINT
    return str(last) if last.is_file() else None


def write_json(path: str | Path, payload: Mapping[str, Any]) -> Path:
    """Write JSON to ``path`` through a temporary file and a rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)
    return path


def update_json(path: str | Path, payload: Mapping[str, Any]) -> Path:
    """Merge ``payload``'s top-level keys into the JSON object at ``path`` (created if absent), atomically.

    Lets several writers share one file (``compression.json``: pruning's numbers and quantization's
    ``quantize`` section) in any order without dropping each other's keys.
    """
    path = Path(path)
    existing: dict[str, Any] = {}
    if path.is_file():
        try:
            loaded = json.loads(path.read_text())
            existing = loaded if isinstance(loaded, dict) else {}
        except (OSError, ValueError):
            existing = {}
    return write_json(path, {**existing, **payload})


def scalar_metrics(*sources: Mapping[str, Any]) -> dict[str, float]:
    """Flatten metric dicts (tensors or numbers) into one ``{"stage/name": float}`` mapping."""
    out: dict[str, float] = {}
    for source in sources:
        for key, value in source.items():
            try:
                number = float(value.item() if hasattr(value, "item") else value)
            except (TypeError, ValueError):
                continue
            out[key] = number if math.isfinite(number) else float("nan")
    return dict(sorted(out.items()))


COMPRESSION_FILE = "compression.json"


def record_compression(
    trainer: Any,
    report: dict[str, Any],
    *,
    section: str | None = None,
    timings: Mapping[tuple[str, ...], tuple[Any, Any]] | None = None,
    repeats: int = 20,
    scalars: Mapping[str, tuple[str, ...]] | None = None,
) -> dict[str, Any]:
    """The one writer of a compression callback's figures (rank 0 only); returns ``report`` completed.

    ``timings`` maps a place in ``report`` (a key path) to ``(module, example)``: the CPU latency of each is
    measured here (``genexp.deploy.latency.cpu_latency_ms``, ``repeats`` calls; skipped when 0 or without an
    example) and stored there. The report then goes into ``<run>/compression.json`` (merged under ``section``,
    or at the top level), and ``scalars`` (TensorBoard name -> key path) to every logger at the current step.
    """
    from genexp.deploy.latency import cpu_latency_ms

    for path, (module, example) in (timings or {}).items():
        if example is not None and repeats > 0:
            _place(report, path, cpu_latency_ms(module, example, repeats=repeats))
    if trainer.default_root_dir:
        update_json(
            Path(trainer.default_root_dir) / COMPRESSION_FILE, {section: report} if section else report
        )
    values = {name: _find(report, path) for name, path in (scalars or {}).items()}
    values = {k: float(v) for k, v in values.items() if isinstance(v, (int, float))}
    if values:
        for logger in trainer.loggers:
            logger.log_metrics(values, step=trainer.global_step)
    return report


def _place(report: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = report
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value


def _find(report: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = report
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


# ----- reading: what is a run folder, and where is its checkpoint -----------------------------------
def is_run_folder(path: Path) -> bool:
    """True for a ``genexp-train`` run folder (its ``.hydra/config.yaml`` composes a model)."""
    config = path / ".hydra" / "config.yaml"
    if not config.is_file():
        return False
    try:
        return "model" in (OmegaConf.load(config) or {})
    except Exception:
        return True  # a run folder whose config is damaged: reported when it is loaded


def run_folder_of(path: Path) -> Path | None:
    """The run folder holding ``path`` (itself, or a parent up to two levels up), if any."""
    for candidate in (path, *list(path.parents)[:3]):
        if candidate.is_dir() and is_run_folder(candidate):
            return candidate
    return None


def find_checkpoint(run_dir: Path, key: str) -> Path:
    """``checkpoints/last.ckpt``, else the newest checkpoint of the run folder."""
    last = run_dir / LAST_CHECKPOINT
    folder = last.parent
    if last.is_file():
        return last
    found = sorted(folder.glob("*.ckpt"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []
    if not found:
        raise CheckpointError(
            f"{key}={run_dir}: no checkpoint in {folder} (the run may have failed before its first epoch ended)"
        )
    return found[-1]
