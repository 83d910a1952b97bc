"""The search's report: the table of trials (``trials.md``, ``trials.json``) and the Pareto plot."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FormatStrFormatter  # noqa: E402

from genexp.runtime.run_folder import write_json  # noqa: E402
from genexp.search.select import TIE  # noqa: E402
from genexp.search.settings import Settings  # noqa: E402

MARKERS = {"fp32": "o", "bf16": "D", "int8": "^"}  # per precision; torch eager a square
SUBPIXEL_MARKERS = {"fp32": "h", "bf16": "p"}  # the sub-pixel graphs: a hexagon, a pentagon
COLORS = [  # a fixed colour per backend, the same in every plot
    "torch fp32 eager",
    "onnxruntime fp32",
    "onnxruntime int8",
    "openvino fp32",
    "openvino bf16",
    "openvino int8",
    "onnxruntime fp32 subpixel",
    "openvino fp32 subpixel",
    "openvino bf16 subpixel",
]


def marker_of(backend: str) -> str:
    """The plot marker of a backend's name: its precision's, the sub-pixel graphs' own, torch's square."""
    parts = backend.split(" ")
    if parts[0] == "torch" or len(parts) < 2:
        return "s"
    table = SUBPIXEL_MARKERS if parts[-1] == "subpixel" else MARKERS
    return table.get(parts[1], "o")


def _color_index(backend: str) -> int:
    return COLORS.index(backend) if backend in COLORS else len(COLORS)


def write_table(
    rows: list[dict[str, Any]], settings: Settings, chosen: dict[str, Any] | None, out: Path
) -> None:
    """``trials.json`` (every figure) and ``trials.md`` (one line per trial, the chosen one in bold)."""
    write_json(
        out / "trials.json", {"budget": settings.budget, "objective": settings.objective, "trials": rows}
    )
    unit = "%" if settings.budget_mode == "relative" else ""
    ms = "ms/token (batch 1, cached)" if settings.objective == "tokens_per_s" else "ms"
    scale = 100.0 if settings.budget_mode == "relative" else 1.0
    lines = [
        f"budget: {settings.budget * scale:g}{unit} ({settings.budget_mode}), objective: {settings.objective}",
        "",
        f"| trial | recipe | backend | val quality | change | {ms} | base {ms} | speedup | ms @ batch 1 "
        "| base ms @ batch 1 | bytes | within budget |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for r in rows:
        mark = "**" if chosen is not None and r["number"] == chosen["number"] else ""
        lines.append(
            f"| {mark}{r['number']}{mark} | {r['label']} | {r['backend']} | {r['quality']:.4f} "
            f"| {r['quality_change'] * scale:+.2f}{unit} | {r['latency_ms']:.3f} | {r['base_latency_ms']:.3f} "
            f"| {1 / r['latency_ratio']:.2f}x | {_ms(r['backends'][r['backend']].get('batch1_ms'))} "
            f"| {_ms(r.get('base_batch1_ms'))} | {r['bytes']} | {'yes' if r['quality_change'] <= settings.budget else 'no'} |"
        )
    finalists = [r for r in rows if "final" in r]
    if finalists:
        lines += [
            "",
            f"final round: the {len(finalists)} fastest within budget timed again, side by side with the base "
            f"in the same rounds (the fastest wins; within {TIE:.0%} of it, or the same network on the same "
            "backend, the better quality):",
            "",
            f"| trial | {ms} | base {ms} | speedup |",
            "|---:|---:|---:|---:|",
        ]
        for r in finalists:
            mark = "**" if chosen is not None and r["number"] == chosen["number"] else ""
            final = r["final"]
            lines.append(
                f"| {mark}{r['number']}{mark} | {final['ms']:.3f} | {final['base_ms']:.3f} "
                f"| {1 / final['ratio']:.2f}x |"
            )
    (out / "trials.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def plot(rows: list[dict[str, Any]], settings: Settings, chosen: dict[str, Any] | None, out: Path) -> Path:
    """``pareto.png``: quality change against latency (relative to the base) or bytes, one marker per backend,
    the budget line drawn, the base at (1, 0) and the chosen trial circled."""
    rows = [r for r in rows if math.isfinite(r["quality_change"])]  # a diverged trial has no point
    fig, ax = plt.subplots(figsize=(7, 4.5))
    x_key = "bytes" if settings.objective == "size" else "latency_ratio"
    scale = 100.0 if settings.budget_mode == "relative" else 1.0
    for backend in sorted({r["backend"] for r in rows}, key=_color_index):
        mine = [r for r in rows if r["backend"] == backend]
        color = f"C{_color_index(backend) % 10}"  # OpenVINO's markers hollow, the others filled
        ax.scatter(
            [r[x_key] for r in mine],
            [r["quality_change"] * scale for r in mine],
            marker=marker_of(backend),
            s=50,
            facecolors="none" if backend.startswith("openvino") else color,
            edgecolors=color,
            label=backend,
        )
    for r in rows:
        ax.annotate(
            str(r["number"]),
            (r[x_key], r["quality_change"] * scale),
            xytext=(4, 4),
            textcoords="offset points",
            fontsize=8,
        )
    if x_key == "latency_ratio":
        ax.scatter(
            [1.0], [0.0], marker="*", s=220, color="tab:red", label="base (torch fp32 eager)", zorder=3
        )
    if chosen is not None:
        ax.scatter(
            [chosen[x_key]],
            [chosen["quality_change"] * scale],
            s=260,
            facecolors="none",
            edgecolors="black",
            label="chosen" if chosen["quality_change"] <= settings.budget else "closest (none within budget)",
        )
    xs = [r[x_key] for r in rows] + ([1.0] if x_key == "latency_ratio" else [])
    if min(xs) > 0 and max(xs) > 8 * min(xs):
        ax.set_xscale("log")
        for axis in (ax.xaxis.set_major_formatter, ax.xaxis.set_minor_formatter):
            axis(FormatStrFormatter("%g"))  # 0.2, not 2x10^-1
    ax.axhline(settings.budget * scale, color="tab:red", linestyle="--", linewidth=1, label="budget")
    changes = [abs(r["quality_change"]) * scale for r in rows]
    near = max(settings.budget * scale, 1e-9) * 2
    if changes and max(changes) > 10 * near:  # far-off trials (FID +1000%) would flatten the budget's region
        ax.set_yscale("symlog", linthresh=near)  # linear within twice the budget, logarithmic beyond
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.set_xlabel(
        {
            "latency": "latency / base latency (lower is faster)",
            "tokens_per_s": "ms per generated token / base's (batch 1, cached; lower is faster)",
        }.get(settings.objective, "bytes of the deployable")
    )
    ax.set_ylabel("quality change vs base" + (" (%)" if scale == 100.0 else "") + " (lower is better)")
    ax.set_title("genexp-optimize: trials")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "pareto.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
