"""An export folder: the fp32 graphs, their int8 versions, and ``model.json``, for one model family's graphs
(a ``Family`` from ``genexp.exporters.registry.family_of``).

``write_package`` is what ``genexp-export`` and ``compression.quantize.backend=onnxruntime`` call. It never
writes over another export: the folder must not exist yet (``onnx_export.export_folder`` picks a new name),
and it is written under a temporary name and renamed when complete, so a failure leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx
import onnxruntime
import torch

from genexp.deploy.backends import SUBPIXEL, by_name, onnx_backends, open_backends
from genexp.deploy.generation_speed import GENERATION_TOKENS, generation_speed
from genexp.deploy.latency import (
    cpu_flags,
    cpu_name,
    interleaved_latency,
    omp_wait_policy,
    torch_call,
)
from genexp.deploy.onnx_conv import subpixel_copy
from genexp.deploy.onnx_export import FORMAT, Family, Graph, export_graph, initializer_counts, io_of
from genexp.deploy.onnx_quantize import Int8ToleranceMiss, int8_scheme, quantize_graph
from genexp.deploy.onnx_runtime import session_call
from genexp.runtime.errors import ConfigError, GenexpError

log = logging.getLogger(__name__)
QUANTIZE = ("none", "int8")
JSON_FILE = "model.json"


def check_quantize(value: Any, key: str = "quantize") -> str:
    if value not in QUANTIZE:
        reason = (
            " (int4 has no ONNX Runtime CPU kernel for these graphs)" if str(value).startswith("int4") else ""
        )
        raise ConfigError(key, value, f"one of {list(QUANTIZE)}{reason}")
    return str(value)


def write_package(
    family: Family,
    folder: Path,
    quantize: str = "int8",
    opset: int = 17,
    tolerance: float = 0.1,
    calibration_batches: int = 8,
    batch_size: int = 16,
    source: dict[str, Any] | None = None,
    quality: Callable[[Path, str], dict[str, float]] | None = None,
    timing: dict[str, int] | None = None,
    scheme: str = "auto",
    choose_backend: bool = True,
) -> dict[str, Any]:
    """Export ``family``'s graphs into ``folder`` (which must not exist), quantize, measure, write model.json.

    An int8 graph that misses ``tolerance`` is not written: model.json's ``int8`` says by how much, the fp32
    graphs ship alone and a warning names the figure (no exception).

    Args:
        scheme: the int8 weight scheme (``onnx_quantize.int8_scheme``): ``auto`` (by this CPU), ``8bit``, ``7bit``.
        quality: ``quality(folder, variant)`` -> metrics of the variant ``"fp32"`` / ``"int8"`` (and ``"torch"``);
            None skips quality.
        timing: ``repeats``, ``rounds``, ``warmup`` of the latency (``repeats=0`` skips latency).
        choose_backend: record the fastest backend timed (``fastest_backend``) as model.json's ``backend``.
    Returns:
        the contents of model.json.
    """
    if folder.exists():
        raise GenexpError(f"export: {folder} already exists; an export never overwrites another")
    tmp = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        info = _write(family, tmp, quantize, opset, tolerance, calibration_batches, batch_size, scheme)
        info["source"] = source or {}
        if quality is not None:
            info["quality"] = {variant: quality(tmp, variant) for variant in ("torch", *info["variants"])}
        timing = timing or {}
        if timing.get("repeats", 20):
            info["latency"] = latency_table(family, tmp, batch_size, **timing)
            if choose_backend:
                info["backend"] = fastest_backend(info["latency"], batch_size)
                chosen = info["backend"]["name"]
                if quality is not None and chosen.startswith("openvino"):  # its own kernels: scored too
                    info["quality"][chosen] = quality(tmp, chosen)
        (tmp / JSON_FILE).write_text(json.dumps(info, indent=2, default=str) + "\n", encoding="utf-8")
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return info


def fastest_backend(latency: dict[str, Any], batch_size: int) -> dict[str, Any]:
    """``model.json``'s ``backend``: the fastest backend measured here at ``batch_size``, with its files and the
    CPU it was measured on (another machine may rank the backends differently: export there again)."""
    rows = [r for r in latency["rows"] if r["batch_size"] == batch_size]
    best = min(rows, key=lambda r: r["median_ms"])
    backend = by_name(best["backend"])
    return {
        "name": best["backend"],
        "files": backend.files_label() if backend else "the source checkpoint (source.target)",
        "runtime": backend.how() if backend else {"runtime": "torch"},
        "batch_size": batch_size,
        "median_ms": best["median_ms"],
        "speedup_vs_torch": best["speedup_vs_torch"],
        "cpu": latency["cpu"],
        "cpu_flags": latency["cpu_flags"],
        "how": f"the fastest of {[r['backend'] for r in rows]} at batch {batch_size}, timed in one process",
    }


def _write(
    family: Family,
    folder: Path,
    quantize: str,
    opset: int,
    tolerance: float,
    calibration_batches: int,
    batch_size: int,
    scheme: str = "auto",
) -> dict[str, Any]:
    graphs = family.graphs(2)
    files: dict[str, Any] = {}
    for graph in graphs:
        path = export_graph(graph, folder / graph.file, opset)
        files[graph.file] = {**_file_facts(path), "precision": "fp32"}
    layouts = _write_subpixel(graphs, folder, files, opset)
    info = {
        "format": FORMAT,
        "family": family.name,
        "model": family.model,
        "graphs": files,
        "main": "model.onnx",
        "variants": ["fp32"],
        "layouts": layouts,
        "usage": family.usage,
        "versions": {
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
    }
    if quantize == "int8":
        info["int8"] = _write_int8(
            family, graphs, folder, files, tolerance, calibration_batches, batch_size, scheme
        )
        if info["int8"]["written"]:
            info["variants"].append("int8")
    return info


def _write_subpixel(graphs: list[Graph], folder: Path, files: dict[str, Any], opset: int) -> list[str]:
    """Write ``<stem>.subpixel.onnx`` for every graph when the main one has strided transposed convs with a
    sub-pixel form (``onnx_conv.subpixel_copy``); returns the layouts written (``[]`` or ``["subpixel"]``)."""
    main, swapped = subpixel_copy(graphs[0].module)
    if not swapped:
        return []
    modules = [main, *(subpixel_copy(graph.module)[0] for graph in graphs[1:])]
    for graph, module in zip(graphs, modules, strict=True):
        variant = dataclasses.replace(graph, stem=f"{graph.stem}.{SUBPIXEL}", module=module)
        path = export_graph(variant, folder / variant.file, opset)
        files[variant.file] = {**_file_facts(path), "precision": "fp32", "layout": SUBPIXEL}
    return [SUBPIXEL]


def _write_int8(
    family: Family,
    graphs: list[Graph],
    folder: Path,
    files: dict[str, Any],
    tolerance: float,
    calibration_batches: int,
    batch_size: int,
    scheme: str,
) -> dict[str, Any]:
    """Quantize every graph under one scheme; all graphs or none (a miss removes the ones already written)."""
    chosen = int8_scheme(scheme)
    batches = family.inputs(max(calibration_batches, 1), batch_size)
    written: list[Path] = []
    for graph in graphs:
        feeds = family.feeds(graph, batches, graphs)
        int8 = folder / graph.int8_file()
        try:
            recipe = quantize_graph(
                folder / graph.file,
                int8,
                graph.int8 or family.int8,
                feeds[0],
                feeds,
                tolerance,
                family.static_options,
                chosen,
            )
        except Int8ToleranceMiss as miss:
            log.warning("%s; the fp32 graphs ship alone (model.json: int8)", miss)
            for path in written:
                files.pop(path.name)
                path.unlink()
            return {"written": False, "scheme": chosen, "missed": {"graph": graph.file, **miss.check}}
        written.append(int8)
        files[int8.name] = {**_file_facts(int8), "precision": "int8", "quantization": recipe}
    return {"written": True, "scheme": chosen}


def _file_facts(path: Path) -> dict[str, Any]:
    return {**io_of(path), **initializer_counts(path), "bytes": path.stat().st_size}


def latency_table(
    family: Family,
    folder: Path,
    batch_size: int,
    repeats: int = 20,
    rounds: int = 4,
    warmup: int = 3,
) -> dict[str, Any]:
    """Latency of torch eager fp32 and of every ONNX backend here (``backends.onnx_backends``: ONNX Runtime fp32
    and int8 where written, OpenVINO's when installed), at batch 1 and ``batch_size``, interleaved in one process;
    GPT generation tokens/s for 256 new tokens, with and without the cache (ONNX Runtime's graphs)."""
    main = family.graphs(1)[0]
    backends = onnx_backends(
        int8=(folder / main.int8_file()).is_file(),
        subpixel=(folder / f"{main.stem}.{SUBPIXEL}.onnx").is_file(),
    )
    opened, skipped = open_backends(backends, folder, [main.stem])
    sessions = {name: by_stem[main.stem] for name, by_stem in opened.items()}
    rows: list[dict[str, Any]] = []
    for batch in sorted({1, batch_size}):
        example = family.graphs(batch)[0].example
        calls = {"torch fp32 eager": torch_call(main.module, example)}
        feeds = {name: x.numpy() for name, x in zip(main.inputs, example, strict=True)}
        calls.update({name: session_call(s, feeds) for name, s in sessions.items()})
        for name, numbers in interleaved_latency(calls, repeats, warmup, rounds).items():
            rows.append({"backend": name, "batch_size": batch, **numbers})
    for row in rows:
        base = next(
            r for r in rows if r["backend"] == "torch fp32 eager" and r["batch_size"] == row["batch_size"]
        )
        row["speedup_vs_torch"] = base["median_ms"] / row["median_ms"]
        row["speedup_p10_p90"] = [base["median_ms"] / row["p90_ms"], base["median_ms"] / row["p10_ms"]]
    out: dict[str, Any] = {
        "rows": rows,
        "threads": torch.get_num_threads(),
        "cpu": cpu_name(),
        "cpu_flags": cpu_flags(),
        "omp_wait_policy": omp_wait_policy(),
        "repeats": repeats,
        "rounds": rounds,
        "left_out": skipped,
    }
    if family.text is not None:
        sessions = {
            name: sessions[name] for name in ("onnxruntime fp32", "onnxruntime int8") if name in sessions
        }
        graphs = family.graphs(1)
        cached = next((g for g in graphs if g.stem == family.cached), None)
        out["generation_tokens_per_s"] = generation_speed(
            family.text, main, sessions, cached=cached, folder=folder
        )
        out["generation"] = {
            "new_tokens": GENERATION_TOKENS,
            "prompt_tokens": int(family.text[0].shape[1]),
            "greedy": True,
            "cache": "key/value cache; when full, re-filled from the last block_size // 2 ids",
        }
    return out
