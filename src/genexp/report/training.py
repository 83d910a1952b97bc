"""How a run was trained and what its training cost: the optimizer, its learning rate, the run's ``cost/...``
figures (``genexp.callbacks.training_cost.TrainingCost``, in the run's ``metrics.json``) and its validation curve
(``train_curve.csv``), and the learning-curve plot of a comparison.

The plot has two panels, the validation metric against optimizer steps and against wall-clock seconds since
fit start, with one line per training setting (optimizer and compression) at its best learning rate: the
question an optimizer study asks is which optimizer, each well tuned, gets there first.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CURVE_FILE = "train_curve.csv"
COST_PREFIX = "cost/"


def training_of(config: dict[str, Any], run_dir: Path | None) -> dict[str, Any]:
    """``optimizer`` (class name), ``lr``, ``cost`` (the run's ``cost/`` figures, prefix dropped) and ``curve``
    (the path of its validation curve, or None)."""
    optimizer = config.get("optimizer") or {}
    target = str(optimizer.get("_target_", "?")).rsplit(".", 1)[-1]
    if target == "SGD" and optimizer.get("momentum"):
        target = "SGD+momentum"
    cost: dict[str, float] = {}
    curve = None
    if run_dir is not None:
        try:
            saved = json.loads((Path(run_dir) / "metrics.json").read_text())
        except (OSError, ValueError):
            saved = {}
        cost = {k.removeprefix(COST_PREFIX): float(v) for k, v in saved.items() if k.startswith(COST_PREFIX)}
        curve = Path(run_dir) / CURVE_FILE if (Path(run_dir) / CURVE_FILE).is_file() else None
    lr, factor = optimizer.get("lr"), config.get("lr_factor") or 1.0
    return {
        "optimizer": target,
        "lr": float(lr) * factor if isinstance(lr, (int, float)) else None,
        "cost": cost,
        "curve": str(curve) if curve else None,
    }


def setting_label(row: dict[str, Any]) -> str:
    """``Adam lr 0.001`` (plus the compression when there is one)."""
    label = row["optimizer"] + (f" lr {row['lr']:g}" if row.get("lr") is not None else "")
    return label if row["baseline"] else f"{label}, {row['compression']}"


def read_curve(path: str | Path) -> list[dict[str, float]]:
    """The rows of a ``train_curve.csv`` as numbers (empty cells are NaN)."""
    with Path(path).open(newline="") as f:
        return [{k: _float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def best_per_setting(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each (optimizer, compression), the run with the best quality among its learning rates."""
    best: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        if not row.get("curve"):
            continue
        key = (row["optimizer"], row["compression"])
        quality = row["quality"] if math.isfinite(row["quality"]) else math.inf
        if key not in best or quality < best[key]["quality"]:
            best[key] = row
    return sorted(best.values(), key=lambda r: r["quality"])


def curve_metric(rows: Sequence[dict[str, Any]]) -> str:
    """The validation metric the curves show: the quality metric's ``val/`` twin when the curves hold it."""
    wanted = "val/" + rows[0]["quality_metric"].split("/", 1)[-1]
    header = read_curve(rows[0]["curve"])[:1]
    if header and wanted in header[0]:
        return wanted
    return "val/loss"


def curves_plot(rows: Sequence[dict[str, Any]], path: str | Path, title: str) -> Path | None:
    """Validation metric vs steps and vs seconds, one line per setting at its best lr; None without curves."""
    chosen = best_per_setting(rows)
    if not chosen:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = curve_metric(chosen)
    fig, (by_step, by_time) = plt.subplots(1, 2, figsize=(12, 4.8), constrained_layout=True)
    values: list[float] = []
    for row in chosen:
        points = [p for p in read_curve(row["curve"]) if math.isfinite(p.get(metric, math.nan))]
        if not points:
            continue
        ys = [p[metric] for p in points]
        values += ys
        label = setting_label(row)
        by_step.plot([p["step"] for p in points], ys, marker=".", label=label)
        by_time.plot([p["seconds"] for p in points], ys, marker=".", label=label)
    if values:  # the first epochs of a slow optimizer would squash the rest: show up to the 90th percentile
        ordered = sorted(values)
        low, high = ordered[0], ordered[int(0.9 * (len(ordered) - 1))]
        pad = 0.05 * (high - low or abs(high) or 1.0)
        for ax in (by_step, by_time):
            ax.set_ylim(low - pad, high + pad)
    by_step.set_xlabel("optimizer steps")
    by_time.set_xlabel("wall-clock seconds since fit start")
    for ax in (by_step, by_time):
        ax.set_ylabel(metric)
        ax.grid(True, alpha=0.3)
    by_time.legend(fontsize=8, loc="best")
    fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _float(value: str | None) -> float:
    try:
        return float(value) if value not in (None, "") else math.nan
    except ValueError:
        return math.nan
