"""genexp-optimize per family: the chosen deployable against the base model, from a trained base to best/.

    python benchmarks/optimize.py                                   # VAE (default run) and GPT (gpt_shakespeare_cpu)
    python benchmarks/optimize.py --families vae --n-trials 8       # a subset, fewer trials
    python benchmarks/optimize.py --base vae=outputs/train/runs/<stamp>   # reuse a trained base run

Each base is a real ``genexp-train`` run (skipped with ``--base``); the search is a real ``genexp-optimize``
subprocess with ``budget`` (relative, on the family's test metric's validation counterpart) and ``n_trials``.
The table reads ``<out>/<family>/search/best/model.json``: the chosen backend, its latency and the base's torch
fp32 eager latency timed in the same alternating rounds of the same process, the speedup, the validation and
test quality change, and the search's wall time. Time on an idle machine: a figure taken while anything else
runs on the cores is noise.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from _harness import cpu_name, genexp_train

BASES = {
    "vae": [],  # the default run
    "gpt": ["experiment=gpt_shakespeare_cpu"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", nargs="+", default=sorted(BASES), choices=sorted(BASES))
    parser.add_argument("--base", nargs="*", default=[], help="family=<run folder>: reuse a trained base")
    parser.add_argument("--budget", type=float, default=0.02, help="relative quality change allowed")
    parser.add_argument("--n-trials", type=int, default=12)
    parser.add_argument("--out", type=Path, default=Path("outputs/benchmarks/optimize"))
    args = parser.parse_args()
    given = dict(item.split("=", 1) for item in args.base)
    table = Table(title=f"genexp-optimize, budget {args.budget:.0%}: the chosen deployable vs the base")
    for column in (
        "family",
        "backend",
        "recipe",
        "base ms",
        "chosen ms",
        "speedup",
        "val change",
        "test change",
        "search min",
    ):
        table.add_column(column, justify="left" if column in ("family", "backend", "recipe") else "right")
    for family in args.families:
        base = Path(given[family]) if family in given else args.out / family / "base"
        if family not in given and not (base / "metrics.json").is_file():
            genexp_train(BASES[family], base)
        search = args.out / family / "search"
        command = [sys.executable, "-m", "genexp.optimize", f"base={base}", f"budget={args.budget}"]
        command += [f"n_trials={args.n_trials}", f"out={search}"]
        print("$ genexp-optimize", " ".join(command[3:]), flush=True)
        start = time.perf_counter()
        done = subprocess.run(command)
        minutes = (time.perf_counter() - start) / 60
        folder = search / ("best" if done.returncode == 0 else "closest")
        info = json.loads((folder / "model.json").read_text())
        table.add_row(
            family + ("" if info["within_budget"] else " (none within budget)"),
            info["backend"],
            info.get("label", json.dumps(info["recipe"], sort_keys=True)),
            f"{info['base_latency_ms']:.2f}",
            f"{info['latency_ms']:.2f}",
            f"{info['speedup_vs_base_torch']:.2f}x",
            f"{info['val']['change']:+.2%}",
            f"{info['test']['relative_change']:+.2%}",
            f"{minutes:.1f}",
        )
    console = Console()
    console.print(table)
    console.print(f"CPU: {cpu_name()}")


if __name__ == "__main__":
    main()
