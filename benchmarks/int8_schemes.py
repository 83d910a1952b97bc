"""How exact each int8 weight scheme is on each kind of x86 CPU: 8-bit vs 7-bit weights (``reduce_range``),
on this CPU and on an AVX2 CPU without VNNI, with ONNX Runtime's real kernels.

ONNX Runtime's u8×s8 kernels on x86 without VNNI sum pairs of uint8×int8 products in int16 (``vpmaddubsw``),
which saturates with 8-bit weights (255·127·2 > 32767); with VNNI (``vpdpbusd``) the sums are int32. genexp's
``int8_scheme=auto`` therefore gives 7-bit weights on x86 without VNNI. This script shows why, per run: it
exports each graph once (fp32), then quantizes it under each scheme and checks it against fp32 on the same
feeds (the relative RMS error ``genexp-export`` checks), in a child process per scheme and CPU:

- ``this CPU``: a plain child process;
- ``AVX2 (emulated Haswell)``: the same child under ``qemu-x86_64 -cpu Haswell`` (Debian's ``qemu-user``),
  which hides AVX-512 and VNNI, so ONNX Runtime dispatches to its AVX2 kernels (slower, but the same
  integer arithmetic as an AVX2-only EPYC). Skipped with a note where ``qemu-x86_64`` is not installed.

    python benchmarks/int8_schemes.py --run outputs/train/runs/<vae> --run outputs/train/runs/<gan>
    python benchmarks/int8_schemes.py --train vae --quick          # a smoke test: 1 epoch, a few batches

Errors are deterministic (no timing): the machine may be busy while it runs.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from _harness import genexp_train
from genexp.deploy.latency import cpu_flags, cpu_name
from genexp.deploy.onnx_package import write_package
from genexp.deploy.onnx_quantize import Int8ToleranceMiss, int8_scheme, quantize_graph

SCHEMES = ("8bit", "7bit")
EMULATED = "AVX2 (emulated Haswell)"
RECIPES = {"vae": [], "gan": ["experiment=gan_digits"], "diffusion": ["experiment=diffusion_digits"]}
QUICK = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "callbacks.sample_quality=null",
    "callbacks.model_checkpoint.monitor=val/loss",
]


def prepare(run: Path, folder: Path) -> list[dict[str, Any]]:
    """Export ``run``'s fp32 graphs into ``folder`` and save each graph's int8 feeds; one job per graph."""
    from genexp.checkpoints.rebuild import load_any
    from genexp.exporters.registry import family_of
    from genexp.runtime.run_folder import find_checkpoint

    loaded = load_any(find_checkpoint(run, "--run"), key="--run")
    family = family_of(loaded.model, loaded.datamodule)
    write_package(family, folder, quantize="none", timing={"repeats": 0})
    graphs = family.graphs(2)
    batches = family.inputs(8, 16)
    jobs = []
    for graph in graphs:
        feeds = family.feeds(graph, batches, graphs)
        np.savez(
            folder / f"{graph.stem}.feeds.npz",
            **{f"{i}/{k}": v for i, f in enumerate(feeds) for k, v in f.items()},
        )
        jobs.append(
            {
                "run": run.name,
                "folder": str(folder),
                "graph": graph.stem,
                "method": family.int8,
                "static_options": family.static_options,
            }
        )
    return jobs


def worker(job: dict[str, Any]) -> dict[str, Any]:
    """Quantize one graph under ``job["scheme"]`` and check it (runs in the child process)."""
    folder = Path(job["folder"])
    packed = np.load(folder / f"{job['graph']}.feeds.npz")
    feeds: dict[int, dict[str, np.ndarray]] = {}
    for key in packed.files:
        index, name = key.split("/", 1)
        feeds.setdefault(int(index), {})[name] = packed[key]
    ordered = [feeds[i] for i in sorted(feeds)]
    target = folder / f"{job['graph']}.{job['scheme']}.{job['cpu_tag']}.int8.onnx"
    try:
        recipe = quantize_graph(
            folder / f"{job['graph']}.onnx",
            target,
            job["method"],
            ordered[0],
            ordered,
            tolerance=float("inf"),
            static_options=job["static_options"],
            scheme=int8_scheme(job["scheme"]),
        )
        return recipe["check"]
    except Int8ToleranceMiss as miss:  # cannot happen at an infinite tolerance; kept for clarity
        return miss.check


def run_job(job: dict[str, Any], emulate: bool) -> dict[str, Any] | None:
    """The child process for one job, on this CPU or under qemu's Haswell; None when qemu is missing."""
    qemu = shutil.which("qemu-x86_64")
    if emulate and (qemu is None or platform.machine().lower() not in ("x86_64", "amd64")):
        return None
    job = {**job, "cpu_tag": "haswell" if emulate else "native"}
    command = [sys.executable, __file__, "--worker", json.dumps(job)]
    if emulate:
        command = [qemu, "-cpu", "Haswell", *command]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"int8 check failed ({' '.join(command[:4])} ...):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", action="append", default=[], help="an existing run folder")
    parser.add_argument(
        "--train", action="append", default=[], choices=sorted(RECIPES), help="train the recipe first"
    )
    parser.add_argument("--quick", action="store_true", help="tiny training: checks that the script runs")
    parser.add_argument("--no-emulation", action="store_true", help="this CPU only (no qemu)")
    parser.add_argument("--out", default=None, help="where runs and graphs go (default: a temporary folder)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    root = Path(args.out or tempfile.mkdtemp(prefix="int8_schemes-"))
    runs = [Path(r) for r in args.run]
    for family in args.train:
        run = root / "runs" / family
        genexp_train([*RECIPES[family], *(QUICK if args.quick else []), "callbacks.progress_bar=null"], run)
        runs.append(run)
    if not runs:
        parser.error("give --run DIR or --train FAMILY")
    cpus = [("this CPU", False)] + ([] if args.no_emulation else [(EMULATED, True)])
    print(f"this CPU: {cpu_name()} ({', '.join(cpu_flags())}); auto picks: {int8_scheme()['reason']}")
    print("relative RMS error of the int8 graph's first output against fp32, on the int8 check's feeds\n")
    print("| run | graph | weights | " + " | ".join(name for name, _ in cpus) + " |")
    print("|---|---|---|" + "---:|" * len(cpus))
    for k, run in enumerate(runs):
        for job in prepare(run, root / "graphs" / f"{k}_{run.name}"):
            for scheme in SCHEMES:
                cells = []
                for _, emulate in cpus:
                    check = run_job({**job, "scheme": scheme}, emulate)
                    cells.append("– (no qemu-x86_64)" if check is None else f"{check['relative_error']:.4f}")
                print(
                    f"| {run.name} | {job['graph']}.onnx | {scheme[0]}-bit | " + " | ".join(cells) + " |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
