"""genexp-export: a run's deployable as ONNX graphs that run with onnxruntime and numpy alone.

    genexp-export target=outputs/train/runs/<time> quantize=int8      # a run folder, a .ckpt or a torch artifact

Compose -> rebuild the run (``genexp.checkpoints.rebuild.load_any``; a run folder exports its ``checkpoints/last.ckpt``)
-> export model.onnx (+ model.int8.onnx) -> measure quality and latency -> model.json, into ``<run>/export/``
(``export-2/``... when that exists). Bad input stops before anything is written, with one line naming the key.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from genexp.checkpoints.rebuild import Loaded, load_any, trust
from genexp.checks.run import check_trainer
from genexp.checks.values import boolean, one_of
from genexp.deploy.backends import Backend, by_name
from genexp.deploy.onnx_export import check_opset, export_folder
from genexp.deploy.onnx_package import check_quantize, write_package
from genexp.deploy.onnx_quantize import int8_scheme
from genexp.exporters.registry import family_of, graphs_of, install_graphs
from genexp.report.measure_run import test_quality
from genexp.report.onnx_target import is_onnx
from genexp.report.tables import speedup_text
from genexp.runtime.build import build_callbacks
from genexp.runtime.errors import ConfigError, report_errors
from genexp.runtime.run_folder import find_checkpoint, is_run_folder
from genexp.train import CONFIG_DIR

log = logging.getLogger(__name__)


@report_errors
def export(cfg: DictConfig) -> dict[str, Any]:
    """Export ``cfg.target``; returns model.json's contents."""
    check_trainer(cfg)
    trust(cfg.get("trust"))  # a user's own model: trust=[mypkg.]
    quantize = check_quantize(cfg.get("quantize"))
    scheme = str(cfg.get("int8_scheme", "auto"))
    int8_scheme(scheme)  # a bad value fails here, before anything loads
    opset = check_opset(cfg.get("opset"))
    tolerance = cfg.get("tolerance")
    if not isinstance(tolerance, (int, float)) or isinstance(tolerance, bool) or not tolerance > 0:
        raise ConfigError("tolerance", tolerance, "a number > 0 (relative RMS error)")
    for key in ("calibration_batches", "batch_size"):
        value = cfg.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(key, value, "a positive integer")
    fused = boolean("fused_attention", cfg.get("fused_attention", True))
    backend = one_of("backend", cfg.get("backend", "auto"), ("auto", "none"))
    target = cfg.get("target")
    if not target:
        raise ConfigError("target", target, "a run folder, a .ckpt or a torch artifact (<run>/quantized)")
    path = Path(str(target))
    if is_onnx(path):
        raise ConfigError("target", str(path), "a run folder, a .ckpt or a torch artifact, not an ONNX graph")
    source = find_checkpoint(path, "target") if path.is_dir() and is_run_folder(path) else path
    data = OmegaConf.to_container(cfg.data, resolve=True) if cfg.get("data") else {}
    loaded = load_any(source, key="target", data=data)  # type: ignore[arg-type]
    family = family_of(
        loaded.model, loaded.datamodule, fused
    )  # an unknown family fails before anything is written
    base = Path(cfg.out) if cfg.get("out") else (loaded.run_dir or source.parent) / "export"
    folder = export_folder(base)
    L.seed_everything(cfg.seed, workers=True)

    def quality(where: Path, variant: str) -> dict[str, float]:
        measured = (
            loaded
            if variant == "torch"
            else dataclasses.replace(loaded, model=_through(loaded, where, variant))
        )
        return test_quality(measured, cfg.trainer, build_callbacks(cfg), verbose=False)

    origin = {
        "target": str(source.resolve()),
        "relative": os.path.relpath(source.resolve(), folder.resolve()),
        "kind": loaded.kind,
        **loaded.info,
    }
    info = write_package(
        family,
        folder,
        quantize=quantize,
        opset=opset,
        tolerance=float(tolerance),
        calibration_batches=cfg.calibration_batches,
        batch_size=cfg.batch_size,
        source=origin,
        quality=quality if cfg.get("measure") else None,
        timing=dict(cfg.report) if cfg.get("measure") else {"repeats": 0},
        scheme=scheme,
        choose_backend=backend == "auto",
    )
    print_export(folder, info)
    return info


def _through(loaded: Loaded, folder: Path, variant: str) -> Any:
    """A copy of the loaded model computing through ``folder``'s graphs: ``variant`` is ``fp32`` or ``int8``
    (ONNX Runtime) or a backend's name (``openvino bf16``: ``genexp.deploy.backends``)."""
    import copy

    backend = by_name(variant) or Backend("onnxruntime", variant)
    sessions = {g.stem: backend.open(folder / backend.file(g.stem)) for g in graphs_of(loaded.model)}
    return install_graphs(copy.deepcopy(loaded.model), sessions)


def print_export(folder: Path, info: dict[str, Any], console: Console | None = None) -> None:
    """The export as a table: each graph's size, quality and latency per backend."""
    table = Table(title=f"genexp-export {folder}")
    for header in ("file", "KiB", "precision"):
        table.add_column(header)
    for name, graph in info["graphs"].items():
        table.add_row(name, f"{graph['bytes'] / 1024:.1f}", graph["precision"])
    out = console or Console(width=160)
    out.print(table)
    int8 = info.get("int8")
    if int8:
        scheme = f"{int8['scheme']['weights_bits']}-bit weights: {int8['scheme']['reason']}"
        if int8["written"]:
            out.print(f"int8 scheme: {scheme}")
        else:
            missed = int8["missed"]
            out.print(
                f"int8 not written: {missed['graph']} at a relative error of {missed['relative_error']:.4f} "
                f"(tolerance {missed['tolerance']}; {scheme})"
            )
    if info.get("backend"):
        chosen = info["backend"]
        out.print(
            f"backend: {chosen['name']} ({chosen['speedup_vs_torch']:.2f}x torch eager at batch "
            f"{chosen['batch_size']} on this {chosen['cpu']}), recorded in model.json"
        )
    latency = info.get("latency")
    if latency:
        timing = Table(title=f"latency ({latency['threads']} threads, {latency['cpu']}), ms median [p10-p90]")
        for header in ("backend", "batch", "ms", "x torch eager [p10-p90]"):
            timing.add_column(header)
        for row in latency["rows"]:
            timing.add_row(
                row["backend"],
                str(row["batch_size"]),
                f"{row['median_ms']:.3f} [{row['p10_ms']:.3f}-{row['p90_ms']:.3f}]",
                speedup_text(row),
            )
        out.print(timing)
    for variant, metrics in (info.get("quality") or {}).items():
        shown = {
            k: round(v, 5) for k, v in metrics.items() if k.startswith("test/") and "class_share" not in k
        }
        out.print(f"quality {variant}: {shown}")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="export")
def main(cfg: DictConfig) -> None:
    """Console entry point: ``genexp-export target=<run | .ckpt | artifact> [quantize=int8] [opset=17]``."""
    export(cfg)


if __name__ == "__main__":
    main()
