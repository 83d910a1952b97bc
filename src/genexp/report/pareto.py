"""The Pareto plot: quality against bytes and against CPU latency, the frontier drawn, the baseline marked.

Lower is better on every axis, so a run is on the frontier when no other run is at least as small (or
fast) and strictly better in quality.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

KIB = 1024


def frontier(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated points (lower x and lower y are better), ordered by x."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    best, kept = float("inf"), []
    for i in order:
        if points[i][1] < best:
            kept.append(i)
            best = points[i][1]
    return kept


def _panel(ax: Any, xs: list[float], ys: list[float], rows: Sequence[dict[str, Any]], xlabel: str) -> None:
    on_front = frontier(list(zip(xs, ys, strict=True)))
    fx, fy = [xs[i] for i in on_front], [ys[i] for i in on_front]
    others = [i for i in range(len(xs)) if not rows[i]["is_baseline"]]
    ax.scatter(
        [xs[i] for i in others], [ys[i] for i in others], s=36, color="tab:blue", label="runs", zorder=2
    )
    for i, row in enumerate(rows):
        if row["is_baseline"]:
            ax.scatter([xs[i]], [ys[i]], marker="*", s=260, color="tab:red", label="dense baseline", zorder=3)
        ax.annotate(row["short"], (xs[i], ys[i]), textcoords="offset points", xytext=(6, 5), fontsize=8)
    ax.scatter(fx, fy, s=110, facecolors="none", edgecolors="tab:orange", linewidths=1.8, zorder=5)
    log = max(xs) > 8 * min(xs) > 0
    if log:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.xaxis.set_minor_formatter(
            FuncFormatter(lambda value, _: f"{value:g}" if f"{value:e}"[0] in "25" else "")
        )
    else:  # show at least +-5% around the values: differences smaller than that are noise, not a trade-off
        middle, half = (max(xs) + min(xs)) / 2, max((max(xs) - min(xs)) * 0.6, 0.05 * max(xs))
        ax.set_xlim(middle - half, middle + half)
    (x_low, x_high), (y_low, y_high) = ax.get_xlim(), ax.get_ylim()
    # room on the right for the labels of the largest (or slowest) runs
    x_high = x_high * (x_high / x_low) ** 0.1 if log else x_high + 0.1 * (x_high - x_low)
    # The staircase bounding the dominated region, extended to the plot's edges (visible for a single point too).
    ax.step(
        [fx[0], *fx, x_high],
        [y_high, *fy, fy[-1]],
        where="post",
        color="tab:orange",
        linewidth=1.5,
        label="Pareto frontier",
        zorder=1,
    )
    ax.set_xlim(x_low, x_high)
    ax.set_ylim(y_low, y_high)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(rows[0]["quality_label"])
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")


def _backends(rows: Sequence[dict[str, Any]]) -> str:
    """The latency axis names its backends: torch eager, ONNX Runtime (rows labelled ORT), or both."""
    names = {r.get("backend", "torch") for r in rows}
    if names == {"torch"}:
        return "torch eager"
    if names == {"onnxruntime"}:
        return "ONNX Runtime"
    return "torch eager; ORT rows: ONNX Runtime"


def pareto_plot(rows: Sequence[dict[str, Any]], path: str | Path, title: str) -> Path:
    """Write the two-panel PNG (quality vs size, quality vs CPU latency) to ``path``."""
    path = Path(path)
    ys = [float(r["quality"]) for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8), constrained_layout=True)
    _panel(left, [r["bytes"] / KIB for r in rows], ys, rows, "deployable size on disk, smallest format (KiB)")
    _panel(
        right,
        [float(r["latency_ms"]) for r in rows],
        ys,
        rows,
        f"CPU latency, batch of {rows[0]['batch_size']} (ms, median; {_backends(rows)})",
    )
    fig.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
