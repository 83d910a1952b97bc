"""The one harness the benchmarks share: run the real ``genexp-train`` CLI, time it, read what it wrote.

Benchmarks import the installed ``genexp`` package (``pip install -e .`` or a wheel); this module only adds
what a benchmark needs around it: a timed subprocess of the real CLI (``python -m genexp.train``) and the
paths of the bundled data. Tables are printed with rich.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
SHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"


def genexp_train(
    overrides: Sequence[str],
    run_dir: Path | None = None,
    *,
    cwd: Path | None = None,
    log: Path | None = None,
    env: dict[str, str] | None = None,
    quiet: bool = True,
) -> float:
    """Run ``genexp-train <overrides> [hydra.run.dir=run_dir]`` in a subprocess; returns its wall seconds.

    Output goes to ``log`` (or is dropped when ``quiet``); a failed run exits with its last lines.
    """
    command = [sys.executable, "-m", "genexp.train", *overrides]
    if run_dir is not None:
        command.append(f"hydra.run.dir={run_dir}")
        run_dir.parent.mkdir(parents=True, exist_ok=True)
    print("$ genexp-train", " ".join(command[3:]), flush=True)
    where = cwd or (run_dir.parent if run_dir is not None else Path.cwd())
    start = time.perf_counter()
    if log is not None or quiet:
        target = log or Path(os.devnull)
        with target.open("w") as out:
            done = subprocess.run(
                command, cwd=where, env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT
            )
    else:
        done = subprocess.run(command, cwd=where, env={**os.environ, **(env or {})})
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        tail = log.read_text()[-3000:] if log is not None and log.is_file() else "(see the command above)"
        raise SystemExit(f"genexp-train failed ({done.returncode}):\n{tail}")
    return seconds


def spread(values: list[float]) -> str:
    """``median`` of several processes' figures, or ``median (lowest-highest)`` when they differ."""
    mid = statistics.median(values)
    return (
        f"{mid:.2f}"
        if max(values) - min(values) < 1e-9
        else f"{mid:.2f} ({min(values):.2f}-{max(values):.2f})"
    )


def add_trial_options(parser: argparse.ArgumentParser) -> None:
    """The options every interleaved latency benchmark shares: calls, rounds, fresh processes, and the hidden
    ``--trial-json`` through which ``trial_processes`` tells a child process where to write its timings."""
    parser.add_argument("--repeats", type=int, default=140, help="timed calls per variant (over all rounds)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds")
    parser.add_argument("--trials", type=int, default=3, help="fresh processes that each time every variant")
    parser.add_argument("--trial-json", default=None, help=argparse.SUPPRESS)


def latency_header() -> str:
    """``CPU: <model> (<int8/bf16 flags>), N threads, OMP_WAIT_POLICY <value>``: what every latency table starts
    with (``PASSIVE`` slows torch eager 20-90% and not ONNX Runtime, so the policy goes beside the figures)."""
    import torch

    from genexp.deploy import latency

    return (
        f"CPU: {latency.cpu_name()} ({', '.join(latency.cpu_flags())}), {torch.get_num_threads()} threads, "
        f"OMP_WAIT_POLICY {latency.omp_wait_policy()}"
    )


def trial_processes(script: str, args: Sequence[str], count: int, folder: Path) -> list[dict[str, Any]]:
    """Run ``script args --trial-json FILE`` in ``count`` fresh processes, one after the other; each writes its
    timings to FILE. A process's thread pools and memory layout shift its timings by 10-40% on a small VM, so
    a benchmark reports over several processes."""
    results = []
    for k in range(count):
        path = folder / f"trial{k}.json"
        print(f"trial {k + 1}/{count}: a fresh process", flush=True)
        subprocess.run(
            [sys.executable, script, *args, "--trial-json", str(path)], check=True, stdout=subprocess.DEVNULL
        )
        results.append(json.loads(path.read_text()))
    return results


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file a run wrote (``metrics.json``, ``compression.json``, ``report.json``)."""
    return json.loads(path.read_text())


def run_seconds(run_dir: Path) -> float:
    """From the job's config being written to its metrics.json being written (fit + test + compression)."""
    return (run_dir / "metrics.json").stat().st_mtime - (run_dir / ".hydra" / "config.yaml").stat().st_mtime


def cpu_name() -> str:
    """The CPU model, its core count and its int8/bf16 flags (``genexp.deploy.latency``'s), beside every figure."""
    from genexp.deploy import latency

    return f"{latency.cpu_name()} ({os.cpu_count()} cores; {' '.join(latency.cpu_flags()) or 'no AVX2'})"


def best_checkpoint(target: Path) -> Path:
    """The checkpoint ``genexp-train`` tested (its best, ``epochNNN.ckpt``; else ``last.ckpt``) of a run folder,
    or ``target`` itself when it is a ``.ckpt``."""
    from genexp.runtime.run_folder import LAST_CHECKPOINT

    if target.suffix == ".ckpt":
        return target
    best = sorted((target / LAST_CHECKPOINT.parent).glob("epoch*.ckpt"))
    return best[-1] if best else target / LAST_CHECKPOINT


def load_best(target: Path) -> tuple[Any, Any, Any]:
    """The model of a run's best checkpoint (eval mode), its set-up data module and its config."""
    from omegaconf import OmegaConf

    from genexp.checkpoints.rebuild import load_model

    loaded = load_model(best_checkpoint(target))
    loaded.datamodule.setup()
    return loaded.model.eval(), loaded.datamodule, OmegaConf.create(loaded.config)
