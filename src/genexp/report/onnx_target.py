"""``genexp-eval target=<file>.onnx``: an exported graph measured like a checkpoint.

A graph written by ``genexp-export`` sits beside its ``model.json``, which names the run (or checkpoint) it came
from. That run is rebuilt (``load.load_any``: the same data module, split and test step), and its deployable's
parts are replaced by ONNX Runtime sessions of the graph (``deploy.onnx_export.install_graphs``), so the
quality metric is the family's own, on the same split. Size is the graph file's; latency is ONNX Runtime's.

``backend_latency`` gives any target the per-backend table: torch eager, ONNX Runtime fp32 and int8 (where
the export has it), at batch 1 and the configured batch, median and spread, with the thread count and CPU.
"""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path
from typing import Any

from genexp.checkpoints.rebuild import Loaded, load_any
from genexp.deploy.onnx_export import initializer_counts
from genexp.deploy.onnx_package import JSON_FILE, latency_table, write_package
from genexp.deploy.onnx_runtime import open_session
from genexp.exporters.registry import exporter_for, family_of, graphs_of, install_graphs
from genexp.runtime.errors import GenexpError

INT8_SUFFIX = ".int8.onnx"


def is_onnx(path: str | Path) -> bool:
    return Path(path).suffix == ".onnx"


def read_package(path: Path, key: str) -> dict[str, Any]:
    """The ``model.json`` beside an exported graph, which must describe it."""
    description = path.parent / JSON_FILE
    if not description.is_file():
        raise GenexpError(
            f"{key}={path}: no {JSON_FILE} beside it; expected a graph written by genexp-export "
            "(<run>/export/model.onnx or model.int8.onnx)"
        )
    try:
        info = json.loads(description.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise GenexpError(f"{key}={description}: not readable JSON ({err})") from err
    if not isinstance(info, dict) or path.name not in info.get("graphs", {}):
        raise GenexpError(f"{key}={path}: {description} does not describe this graph (not a genexp export)")
    return info


def _source(info: dict[str, Any], folder: Path, key: str, path: Path) -> Path:
    source = info.get("source") or {}
    for candidate in (source.get("relative"), source.get("target")):
        if candidate and (folder / candidate).exists():
            return folder / candidate
    raise GenexpError(
        f"{key}={path}: the run it was exported from ({source.get('target')}) is gone; genexp-eval needs its "
        "data and test step"
    )


def load_target(path: str | Path, key: str = "target", data: dict[str, Any] | None = None) -> Loaded:
    """``load_onnx`` for a ``.onnx`` file, ``load_any`` for a run folder, checkpoint or torch artifact."""
    return load_onnx(path, key, data) if is_onnx(path) else load_any(path, key, data)


def load_onnx(path: str | Path, key: str = "target", data: dict[str, Any] | None = None) -> Loaded:
    """Rebuild the run behind an exported graph and make its model compute through that graph."""
    path = Path(path)
    if not path.is_file():
        raise GenexpError(f"{key}={path}: no such file (expected a .onnx written by genexp-export)")
    session = open_session(path, key=key)  # a corrupt or foreign file fails here, naming it
    info = read_package(path, key)
    folder = path.parent
    loaded = load_any(_source(info, folder, key, path), key=key, data=data)
    int8 = path.name.endswith(INT8_SUFFIX)
    suffix = INT8_SUFFIX if int8 else ".onnx"
    sessions = {}
    cached = exporter_for(loaded.model).cached
    for graph in graphs_of(loaded.model):
        file = folder / f"{graph.stem}{suffix}"
        if graph.stem == cached and not file.is_file():
            continue  # an export written before the cached decoder existed: generation without a cache
        sessions[graph.stem] = session if file == path else open_session(file, key=key)
    reference = loaded.model
    model = install_graphs(copy.deepcopy(reference), sessions)
    return Loaded(
        "onnx",
        path,
        loaded.run_dir,
        loaded.config,
        model,
        loaded.datamodule,
        loaded.info,
        backend="onnxruntime",
        precision="int8" if int8 else "fp32",
        session=session,
        reference=reference,
    )


def onnx_size(loaded: Loaded) -> dict[str, float]:
    """Weights and bytes of the graph file (what ships)."""
    counts = initializer_counts(loaded.path)
    size = loaded.path.stat().st_size
    return {
        **counts,
        "sparsity": 1 - counts["nonzero"] / counts["params"] if counts["params"] else 0.0,
        "bytes_dense": size,
        "bytes_sparse": size,
        "sparse_ratio": 1.0,
        "bytes": size,
        "file_bytes": size,
    }


def backend_latency(
    loaded: Loaded, batch_size: int, repeats: int, rounds: int, warmup: int
) -> dict[str, Any]:
    """The per-backend latency table of ``loaded`` (see ``deploy.onnx_package.latency_table``).

    A checkpoint or artifact is exported to a temporary fp32 graph first; an ONNX target is timed beside
    the torch model it was exported from and the other graphs of its export folder.
    """
    timing = {"repeats": repeats, "rounds": rounds, "warmup": warmup}
    if loaded.kind == "onnx":
        return latency_table(family_of(loaded.reference), loaded.path.parent, batch_size, **timing)
    with tempfile.TemporaryDirectory(prefix="genexp-latency-") as tmp:
        folder = Path(tmp) / "export"
        family = family_of(loaded.model)
        write_package(family, folder, quantize="none", batch_size=batch_size, timing={"repeats": 0})
        return latency_table(family, folder, batch_size, **timing)
