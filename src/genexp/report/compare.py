"""``genexp-eval compare=...``: every run of a sweep in one table, ranked by quality, against the dense baseline.

Given a multirun folder (or any folder holding run folders), a list of run folders, checkpoints or
artifacts, it loads each one (``genexp.checkpoints.rebuild.load_any``), tests its quality, measures its size, and times all of
them in alternating rounds (so a shared machine's load drifts over every run alike). A run that fails to
load or test is reported and skipped. The **dense baseline** is the run without compression (no pruning or
sparsity 0, no quantization, no distillation); ratios are ``value / baseline``.

Writes into ``out_dir``: ``report.json`` (every row, the baseline, skipped runs), ``report.md`` (the
table and the plots), ``pareto.png``, ``curves.png`` (validation curves against steps and wall-clock seconds,
``genexp.report.training``) and ``tensorboard/`` (HPARAMS entries).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback
from omegaconf import DictConfig

from genexp.checkpoints.rebuild import Loaded
from genexp.deploy.artifact import is_artifact
from genexp.deploy.latency import interleaved_latency
from genexp.report.family import family_of
from genexp.report.hparams import write_hparams
from genexp.report.measure_run import SpeedSettings, assemble, latency_call, size_of, speed_of, test_quality
from genexp.report.onnx_target import load_target
from genexp.report.pareto import pareto_plot
from genexp.report.tables import compare_markdown
from genexp.report.training import curves_plot
from genexp.runtime.errors import GenexpError, first_line
from genexp.runtime.run_folder import is_run_folder, write_json

log = logging.getLogger(__name__)


def discover(targets: Sequence[str | Path], key: str = "compare") -> list[Path]:
    """The run folders, checkpoints and artifacts named by ``targets`` (folders are searched for runs)."""
    found: list[Path] = []
    for target in targets:
        path = Path(target)
        if not path.exists():
            raise GenexpError(f"{key}={path}: no such file or folder")
        if path.is_file() or is_run_folder(path) or is_artifact(path):
            found.append(path)
            continue
        runs = sorted({p.parent for p in path.rglob(".hydra") if is_run_folder(p.parent)}, key=_natural)
        if not runs:
            raise GenexpError(
                f"{key}={path}: no genexp runs in this folder (expected run folders with .hydra/config.yaml "
                "and checkpoints/, e.g. a multirun folder outputs/train/multiruns/<time>)"
            )
        found.extend(runs)
    return list(dict.fromkeys(found))


def _natural(path: Path) -> tuple[Any, ...]:
    return tuple(int(part) if part.isdigit() else part for part in path.parts)


SHORT_QUANTIZE = {
    "int8_weight_only": "int8",
    "int8_dynamic": "int8 dyn",
    "bfloat16": "bf16",
    "float16": "fp16",
}


def short_label(row: dict[str, Any]) -> str:
    """A plot label: ``dense``, ``80%``, ``80%+int8``, ``int8 dyn QAT``, ``bf16``, ``KD``..."""
    parts = []
    if row["prune_sparsity"]:
        parts.append(f"{100 * row['prune_sparsity']:.0f}%")
    if row["quantize"] != "none":
        mode, _, detail = str(row["quantize"]).partition(" ")
        label = SHORT_QUANTIZE.get(detail, detail or mode)
        parts.append(f"{label} QAT" if mode == "qat" else label)
    if row["distill"]:
        parts.append("KD")
    label = "+".join(parts) or ("dense" if row.get("dense", row["baseline"]) else row["compression"])
    return f"ORT {label}" if row.get("backend") == "onnxruntime" else label


def compare_runs(
    targets: Sequence[str | Path],
    out_dir: str | Path,
    trainer_cfg: DictConfig,
    make_callbacks: Callable[[], list[Callback]],
    settings: SpeedSettings,
    data: dict[str, Any] | None = None,
    key: str = "compare",
) -> dict[str, Any]:
    """Measure every run, rank them, and write report.json, report.md, pareto.png and tensorboard/.

    Raises:
        GenexpError: no runs, every run failed, or the runs mix model families.
    """
    out_dir = Path(out_dir)
    paths = discover(targets, key)
    skipped: list[dict[str, str]] = []
    loaded: list[Loaded] = []
    for path in paths:
        try:
            loaded.append(load_target(path, key=key, data=data))
        except Exception as err:  # noqa: BLE001 - one bad run is reported, not fatal
            _skip(skipped, path, err)
    _check_one_family(loaded, key)

    measured: list[tuple[Loaded, dict[str, float], dict[str, float]]] = []
    for item in loaded:
        try:
            metrics = test_quality(item, trainer_cfg, make_callbacks(), verbose=False)
            measured.append((item, metrics, size_of(item)))
        except Exception as err:  # noqa: BLE001
            _skip(skipped, item.run_dir or item.path, err)
    if not measured:
        raise GenexpError(
            f"{key}: every run failed to load or test: " + "; ".join(s["reason"] for s in skipped)
        )

    calls = {i: latency_call(item, settings.batch_for(item)) for i, (item, _, _) in enumerate(measured)}
    timed = interleaved_latency(calls, settings.repeats, settings.warmup, settings.rounds)  # type: ignore[arg-type]
    rows = []
    for i, (item, metrics, size) in enumerate(measured):
        row = assemble(item, metrics, size, speed_of(item, settings, latency_ms=timed[i]["median_ms"]))  # type: ignore[index]
        row["latency_p10_ms"], row["latency_p90_ms"] = timed[i]["p10_ms"], timed[i]["p90_ms"]  # type: ignore[index]
        rows.append(row)
    rows.sort(key=lambda r: (math.isnan(r["quality"]), r["quality"]))
    baseline = mark_baseline(rows)
    noise = mark_latency_noise(rows, baseline)
    flag_slower(rows)
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
        row["short"] = short_label(row)

    plot = pareto_plot(rows, out_dir / "pareto.png", _title(rows, baseline))
    curves = curves_plot(rows, out_dir / "curves.png", f"{rows[0]['model']}: validation curves, best lr each")
    tensorboard = out_dir / "tensorboard"
    write_hparams(rows, tensorboard)
    summary = {
        "family": rows[0]["family"],
        "quality_metric": rows[0]["quality_metric"],
        "baseline": baseline["run"] if baseline else None,
        "latency_noise": noise,
        "runs": rows,
        "skipped": skipped,
        "plot": plot.name,
        "curves_plot": curves.name if curves else None,
        "tensorboard": tensorboard.name,
        "latency": {"repeats": settings.repeats, "rounds": settings.rounds, "interleaved": True},
    }
    write_json(out_dir / "report.json", summary)
    markdown = compare_markdown(rows, skipped, plot.name, curves.name if curves else None, noise)
    (out_dir / "report.md").write_text(markdown, encoding="utf-8")
    return summary


def mark_baseline(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Mark the dense baseline (``is_baseline``) and fill ``quality_ratio``, ``bytes_ratio``, ``latency_ratio``."""
    candidates = [r for r in rows if r["baseline"]]
    baseline = candidates[0] if candidates else None
    if baseline is None:
        log.warning("No dense baseline among the compared runs (every run is compressed): no ratios")
    for row in rows:
        row["is_baseline"] = row is baseline
        for name, key in (
            ("quality_ratio", "quality"),
            ("bytes_ratio", "bytes"),
            ("latency_ratio", "latency_ms"),
        ):
            row[name] = row[key] / baseline[key] if baseline and baseline[key] else None
    return baseline


def mark_latency_noise(rows: list[dict[str, Any]], baseline: dict[str, Any] | None) -> dict[str, Any] | None:
    """Each row's latency ratio with its spread, and whether it lies inside the noise of identical networks.

    ``latency_ratio_p10_p90``: the row's p10 and p90 call times over the baseline's median. The noise band is
    spanned by those ranges over every run whose network is the baseline's (same parameters, non-zeros, bytes
    and backend: e.g. an optimizer study's dense runs), so it holds at least the baseline's own call-to-call
    spread; ``latency_in_noise`` marks a ratio inside it, which says nothing about speed. Returns the band.
    """
    if baseline is None or not baseline["latency_ms"]:
        return None
    base = baseline["latency_ms"]
    for row in rows:
        row["latency_ratio_p10_p90"] = [row["latency_p10_ms"] / base, row["latency_p90_ms"] / base]
    same = [row for row in rows if _network(row) == _network(baseline)]
    low = min(row["latency_ratio_p10_p90"][0] for row in same)
    high = max(row["latency_ratio_p10_p90"][1] for row in same)
    for row in rows:
        row["latency_in_noise"] = low <= row["latency_ratio"] <= high
    return {"low": low, "high": high, "identical_runs": len(same)}


def _network(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row["params"], row["nonzero"], row["bytes"], row.get("backend", "torch"))


def flag_slower(rows: list[dict[str, Any]]) -> None:
    """``slower_than_dense``: a compressed row slower than the dense row of the same backend (torch eager or
    ONNX Runtime fp32) beyond the noise (its p10 call above the dense row's p90), which a table marks;
    ``dense_latency_ratio`` is the ratio of medians."""
    dense = {}
    for row in rows:
        if row.get("dense"):
            dense.setdefault(row.get("backend", "torch"), row)
    for row in rows:
        base = dense.get(row.get("backend", "torch"))
        row["dense_latency_ratio"] = row["latency_ms"] / base["latency_ms"] if base else None
        compressed = (
            base is not None and base is not row and not row.get("dense")
        )  # dense rows: the same network
        row["slower_than_dense"] = bool(compressed and row["latency_p10_ms"] > base["latency_p90_ms"])


def _check_one_family(loaded: list[Loaded], key: str) -> None:
    families: dict[str, list[str]] = {}
    for item in loaded:
        families.setdefault(family_of(item.config).name, []).append(str(item.run_dir or item.path))
    if len(families) > 1:
        listing = "; ".join(f"{name}: {', '.join(paths[:3])}" for name, paths in sorted(families.items()))
        raise GenexpError(
            f"{key}: these runs mix model families ({listing}); a comparison ranks one family by its own "
            "quality metric, so compare one family at a time"
        )


def _skip(skipped: list[dict[str, str]], path: Path, err: BaseException) -> None:
    reason = first_line(err)
    if not isinstance(err, GenexpError):
        reason = f"{type(err).__name__}: {reason}"
    log.warning("Skipping %s: %s", path, reason)
    skipped.append({"run": str(path), "reason": reason})


def _title(rows: list[dict[str, Any]], baseline: dict[str, Any] | None) -> str:
    base = f"star = dense baseline ({baseline['run']})" if baseline else "no dense baseline"
    return f"{rows[0]['model']}: quality vs size and CPU latency, {len(rows)} runs; {base}"
