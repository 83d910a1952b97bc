"""The run folder: never reuse a finished one; write metrics.json atomically."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from genexp.errors import GenexpError

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
