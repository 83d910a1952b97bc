"""TensorBoard HPARAMS entries: one per compared run, so a sweep can be explored in TensorBoard.

Each run gets its own event folder ``<out>/tensorboard/<nn>_<run>`` holding the hparams summary
(compression settings) and one scalar per report metric; ``tensorboard --logdir <out>/tensorboard``
shows them side by side in the HPARAMS tab.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter

NUMBERS = (
    "quality",
    "params",
    "nonzero",
    "sparsity",
    "bytes",
    "bytes_dense",
    "bytes_sparse",
    "latency_ms",
    "throughput_per_s",
    "gpu_latency_ms",
)


def hparams_of(row: dict[str, Any]) -> dict[str, Any]:
    """The settings that tell the runs apart."""
    return {
        "run": row["run"],
        "compression": row["compression"],
        "prune_sparsity": float(row["prune_sparsity"]),
        "quantize": str(row["quantize"]),
        "distill": str(row["distill"]),
        "baseline": str(row["is_baseline"]),
        "optimizer": str(row.get("optimizer")),
        "lr": float(row["lr"]) if row.get("lr") is not None else 0.0,
    }


def metrics_of(row: dict[str, Any]) -> dict[str, float]:
    """``report/<figure>`` for the size/speed figures and ``report/<metric>`` for the quality metrics."""
    out = {f"report/{k}": float(row[k]) for k in NUMBERS if isinstance(row.get(k), (int, float))}
    out.update({f"report/{k}": float(v) for k, v in row["metrics"].items()})
    out.update({f"report/train_{k}": float(v) for k, v in (row.get("cost") or {}).items()})
    for key in ("quality_ratio", "bytes_ratio", "latency_ratio"):
        if row.get(key) is not None:
            out[f"report/{key}"] = float(row[key])
    return out


def write_hparams(rows: Sequence[dict[str, Any]], folder: str | Path) -> list[Path]:
    """One event folder per row under ``folder``; returns them."""
    folder = Path(folder)
    discrete = {
        "quantize": sorted({str(r["quantize"]) for r in rows}),
        "distill": sorted({str(r["distill"]) for r in rows}),
        "baseline": ["False", "True"],
        "optimizer": sorted({str(r.get("optimizer")) for r in rows}),
    }
    written = []
    for i, row in enumerate(rows):
        logdir = folder / f"{i:02d}_{re.sub(r'[^A-Za-z0-9._-]+', '_', row['run'])}"
        with SummaryWriter(log_dir=str(logdir)) as writer:  # add_hparams writes the summary and each metric
            writer.add_hparams(
                hparams_of(row), metrics_of(row), hparam_domain_discrete=discrete, run_name="."
            )
        written.append(logdir)
    return written
