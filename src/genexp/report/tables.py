"""The report as text: a Markdown table (report.md) and a rich table (the terminal)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from genexp.report.family import FAMILIES

KIB = 1024


def fmt(value: Any) -> str:
    """A short, readable number (integers with separators, floats to 4 significant digits)."""
    if isinstance(value, bool) or value is None:
        return "" if value is None else ("yes" if value else "no")
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) >= 1000):
        return f"{int(value):,}"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def _policy(row: dict[str, Any]) -> str:
    """``, OMP_WAIT_POLICY=...`` when the measuring process had it set (PASSIVE slows torch eager, not ORT)."""
    policy = row.get("omp_wait_policy", "unset")
    return "" if policy == "unset" else f", OMP_WAIT_POLICY={policy}"


def speedup_text(item: dict[str, Any]) -> str:
    """``1.45 [1.30-1.52]``: torch eager's median over this backend's, and the same over its p90 and p10 calls."""
    low_high = item.get("speedup_p10_p90")
    spread = f" [{low_high[0]:.2f}-{low_high[1]:.2f}]" if low_high else ""
    return f"{item['speedup_vs_torch']:.2f}{spread}"


def single_rows(row: dict[str, Any]) -> list[tuple[str, str]]:
    """(figure, value) pairs describing one target."""
    rows = [
        ("target", f"{row['target']} ({row['kind']})"),
        ("model", f"{row['model']} ({row['family']})"),
        ("compression", row["compression"] + (" (dense baseline)" if row["baseline"] else "")),
        ("backend", row.get("backend", "torch")),
        (f"quality: {row['quality_metric']}", fmt(row["quality"])),
    ]
    rows += [
        (name, fmt(value))
        for name, value in row["metrics"].items()
        if name != row["quality_metric"] and "class_share/" not in name  # per-class shares: in report.json
    ]
    rows += [
        ("parameters", fmt(row["params"])),
        ("non-zeros", f"{fmt(row['nonzero'])} (sparsity {row['sparsity']:.3f})"),
        ("bytes, dense state dict", fmt(row["bytes_dense"])),
        ("bytes, sparse bitmask format", f"{fmt(row['bytes_sparse'])} ({row['sparse_ratio']:.3f} x dense)"),
        ("bytes shipped (smallest format)", fmt(row["bytes"])),
        (f"bytes of {row['kind']} file", fmt(row["file_bytes"])),
        (
            f"CPU latency, batch {row['batch_size']} (ms, median, {row.get('backend', 'torch')})",
            f"{row['latency_ms']:.3f} ({row['threads']} threads, {row.get('cpu', '?')}{_policy(row)})",
        ),
        ("CPU throughput (samples/s)", fmt(row["throughput_per_s"])),
    ]
    table = row.get("latency_backends") or {}
    for item in table.get("rows", []):
        rows.append(
            (
                f"latency {item['backend']}, batch {item['batch_size']} (ms)",
                f"{item['median_ms']:.3f} (p10 {item['p10_ms']:.3f}, p90 {item['p90_ms']:.3f}) "
                f"= {speedup_text(item)}x torch eager",
            )
        )
    for backend, speed in (table.get("generation_tokens_per_s") or {}).items():
        rows.append((f"generation {backend} (tokens/s, 256 new)", generation_text(speed)))
    rows += [(f"training: {name}", fmt(value)) for name, value in (row.get("cost") or {}).items()]
    if "gpu_latency_ms" in row:
        rows += [
            (
                f"GPU latency, batch {row['batch_size']} (ms, median)",
                f"{row['gpu_latency_ms']:.3f} ({row['gpu_name']})",
            ),
            ("GPU throughput (samples/s)", fmt(row["gpu_throughput_per_s"])),
        ]
    elif "gpu_error" in row:
        rows.append(("GPU", f"{row['gpu_name']}: not measured ({row['gpu_error']})"))
    return rows


def compare_columns(rows: Sequence[dict[str, Any]]) -> list[tuple[str, Any]]:
    """(header, row -> value) for the comparison table; quality columns follow the family."""
    family = next((f for f in FAMILIES.values() if f.name == rows[0]["family"]), None)
    metrics = list(family.metrics) if family else [rows[0]["quality_metric"]]
    metrics = [m for m in metrics if any(m in r["metrics"] for r in rows)]
    columns: list[tuple[str, Any]] = [
        ("#", lambda r: r["rank"]),
        ("run", lambda r: r["run"]),
        ("compression", lambda r: r["compression"] + (" **(baseline)**" if r["is_baseline"] else "")),
        ("backend", lambda r: r.get("backend", "torch")),
    ]
    for metric in metrics:
        columns.append((metric, lambda r, m=metric: fmt(r["metrics"].get(m, float("nan")))))
        if metric == rows[0]["quality_metric"]:
            columns.append(("x base", lambda r: _ratio(r.get("quality_ratio"))))
    columns += [
        ("params", lambda r: fmt(r["params"])),
        ("non-zeros", lambda r: fmt(r["nonzero"])),
        ("size (KiB)", lambda r: f"{r['bytes'] / KIB:.1f}"),
        ("x base", lambda r: _ratio(r.get("bytes_ratio"))),
        (f"CPU ms (batch {rows[0]['batch_size']})", lambda r: f"{r['latency_ms']:.2f}"),
        ("x base [p10-p90]", _latency_ratio),
        ("x dense, same backend", _slower),
        ("samples/s", lambda r: f"{r['throughput_per_s']:,.0f}"),
    ]
    if any("gpu_latency_ms" in r for r in rows):
        columns.append(("GPU ms", lambda r: f"{r['gpu_latency_ms']:.3f}" if "gpu_latency_ms" in r else "-"))
    return columns


def _latency_ratio(row: dict[str, Any]) -> str:
    """``1.320 [1.20-1.45]``, and ``~`` when the ratio lies inside the noise of identical networks."""
    low_high = row.get("latency_ratio_p10_p90")
    text = _ratio(row.get("latency_ratio"))
    if low_high:
        text += f" [{low_high[0]:.2f}-{low_high[1]:.2f}]"
    return text + (" ~" if row.get("latency_in_noise") and not row.get("is_baseline") else "")


def _slower(row: dict[str, Any]) -> str:
    ratio = _ratio(row.get("dense_latency_ratio"))
    return f"{ratio} **slower**" if row.get("slower_than_dense") else ratio


def training_columns(rows: Sequence[dict[str, Any]]) -> list[tuple[str, Any]]:
    """(header, row -> value) for the training table: how each run was trained and what that cost
    (the run's ``cost/`` figures); empty when no run recorded any."""
    if not any(r.get("cost") for r in rows):
        return []
    columns: list[tuple[str, Any]] = [
        ("#", lambda r: r["rank"]),
        ("run", lambda r: r["run"]),
        ("optimizer", lambda r: r.get("optimizer") or "?"),
        ("lr", lambda r: fmt(r.get("lr"))),
    ]
    columns += [
        (rows[0]["quality_metric"], lambda r: fmt(r["quality"])),
        ("x base", lambda r: _ratio(r.get("quality_ratio"))),
    ]
    rate = "tokens_per_s" if any("tokens_per_s" in r["cost"] for r in rows) else "samples_per_s"
    figures = [
        ("train s", "fit_seconds", ".1f"),
        ("step ms (median)", "step_ms_median", ".1f"),
        ("step ms (p90)", "step_ms_p90", ".1f"),
        ("train " + rate.replace("_per_s", "/s"), rate, ",.0f"),
        ("peak RSS MiB", "peak_rss_mb", ",.0f"),
    ]
    if any("peak_gpu_mb" in r["cost"] for r in rows):
        figures.append(("peak GPU MiB", "peak_gpu_mb", ",.0f"))
    if any("target_seconds" in r["cost"] for r in rows):
        figures += [("s to target", "target_seconds", ".1f"), ("steps to target", "target_step", ".0f")]
    for header, key, spec in figures:
        columns.append((header, lambda r, k=key, f=spec: _cost(r, k, f)))
    return columns


def _cost(row: dict[str, Any], key: str, spec: str) -> str:
    value = row.get("cost", {}).get(key)
    if value is None:
        return "-"
    return "never" if math.isnan(value) and key.startswith("target_") else format(value, spec)


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def markdown(headers: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    """A GitHub Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell).replace("|", "\\|") for cell in line) + " |" for line in body]
    return "\n".join(lines) + "\n"


def single_markdown(row: dict[str, Any]) -> str:
    return f"# genexp-eval report\n\n{markdown(['figure', 'value'], single_rows(row))}"


def compare_markdown(
    rows: Sequence[dict[str, Any]],
    skipped: Sequence[dict[str, str]],
    plot: str | None,
    curves: str | None = None,
    noise: dict[str, Any] | None = None,
) -> str:
    columns = compare_columns(rows)
    text = "# genexp-eval comparison\n\n"
    text += f"Sorted by {rows[0]['quality_metric']} ({rows[0]['quality_label']}); x base = value / dense baseline.\n\n"
    text += latency_noise_note(noise)
    text += markdown([h for h, _ in columns], [[get(r) for _, get in columns] for r in rows])
    if plot:
        text += f"\n![Pareto plot]({plot})\n"
    training = training_columns(rows)
    if training:
        text += "\n## Training cost\n\nThe runs' own figures (metrics.json `cost/`): fit wall seconds, step time, "
        text += "training throughput, peak memory, and when target.metric reached target.value.\n\n"
        text += markdown([h for h, _ in training], [[get(r) for _, get in training] for r in rows])
    if curves:
        text += f"\n![Validation curves against steps and wall-clock seconds]({curves})\n"
    if skipped:
        text += "\nSkipped runs:\n\n" + "".join(f"- `{s['run']}`: {s['reason']}\n" for s in skipped)
    return text


def latency_noise_note(noise: dict[str, Any] | None) -> str:
    """The sentence under a comparison that says how far apart identical networks time."""
    if not noise:
        return ""
    return (
        "Latency x base: the median call over the baseline's median, [p10-p90] of the calls. Runs with the "
        f"baseline's network ({noise['identical_runs']}, the baseline included) span {noise['low']:.2f}-"
        f"{noise['high']:.2f}x: a ratio in that band (marked ~) is timing noise, not a speed difference.\n\n"
    )


def print_single(row: dict[str, Any], console: Console | None = None) -> None:
    table = Table(title=f"genexp-eval {row['target']}")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for name, value in single_rows(row):
        table.add_row(name, value)
    (console or Console()).print(table)


def print_compare(rows: Sequence[dict[str, Any]], title: str, console: Console | None = None) -> None:
    console = console or Console(width=200)
    for columns, name in ((compare_columns(rows), title), (training_columns(rows), "training cost")):
        if not columns:
            continue
        table = Table(title=name)
        for header, _ in columns:
            table.add_column(
                header, justify="left" if header in ("run", "compression", "optimizer") else "right"
            )
        for r in rows:
            cells = [str(get(r)).replace("**", "") for _, get in columns]
            table.add_row(*cells, style="bold" if r["is_baseline"] else None)
        console.print(table)


def generation_text(speed: Any) -> str:
    """``no cache 410, cache 1,230 (3.00x)`` (a plain number from an older report as it is)."""
    if not isinstance(speed, dict):
        return f"{speed:,.0f}"
    text = f"no cache {speed['no_cache']:,.0f}"
    if "cache" in speed:
        text += f", cache {speed['cache']:,.0f} ({speed['speedup']:.2f}x)"
    return text
