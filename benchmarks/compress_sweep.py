"""The compression sweep against its time budget: wall time of the whole multirun, per-run time and quality.

    python benchmarks/compress_sweep.py data.path=../shared/data/tinyshakespeare/input.txt   # runs the GPT sweep
    python benchmarks/compress_sweep.py --experiment vae_compress_sweep --budget-min 25
    python benchmarks/compress_sweep.py --sweep outputs/train/multiruns/<time>               # report a finished one

Runs ``genexp-train -m experiment=<experiment> [overrides]`` in a subprocess (the real CLI, which ends with
its own ``genexp-eval compare``), times it, and prints one row per run from ``<sweep>/compare/report.json``:
quality, shipped size and CPU latency with their ratios against the dense baseline of the same sweep, and
the run's own training time (``.hydra/config.yaml`` written -> ``metrics.json`` written) against the
baseline run's. The last line is the sweep's wall time against the budget (the issue's 25 minutes).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from _harness import genexp_train, run_seconds


def run_sweep(experiment: str, overrides: list[str], cwd: Path) -> tuple[Path, float]:
    """Run the multirun; returns its sweep folder and wall seconds."""
    before = set((cwd / "outputs" / "train" / "multiruns").glob("*"))
    seconds = genexp_train(["-m", f"experiment={experiment}", *overrides], cwd=cwd, quiet=False)
    [sweep] = set((cwd / "outputs" / "train" / "multiruns").glob("*")) - before
    return sweep, seconds


def ratio(value: float | None) -> str:
    """A ratio from report.json (``None`` when the sweep has no dense baseline)."""
    return "-" if value is None else f"{value:.3f}"


def report_table(sweep: Path) -> Table:
    report = json.loads((sweep / "compare" / "report.json").read_text())
    rows = report["runs"]
    base = next((r for r in rows if r["is_baseline"]), rows[0])
    base_seconds = run_seconds(Path(base["run_dir"]))
    table = Table(title=f"{sweep} ({len(rows)} runs, ratios against the dense baseline {base['run']})")
    for header in ("run", report["quality_metric"], "x", "KiB", "x", "CPU ms", "x", "train s", "x"):
        table.add_column(header, justify="left" if header == "run" else "right")
    for r in rows:
        seconds = run_seconds(Path(r["run_dir"]))
        table.add_row(
            r["short"] + (" (baseline)" if r["is_baseline"] else ""),
            f"{r['quality']:.4f}",
            ratio(r["quality_ratio"]),
            f"{r['bytes'] / 1024:.1f}",
            ratio(r["bytes_ratio"]),
            f"{r['latency_ms']:.2f}",
            ratio(r["latency_ratio"]),
            f"{seconds:.0f}",
            f"{seconds / base_seconds:.2f}",
        )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--experiment", default="gpt_compress_sweep")
    parser.add_argument("--sweep", type=Path, help="report an existing sweep folder instead of running one")
    parser.add_argument(
        "--budget-min", type=float, default=25.0, help="the sweep's wall-time budget (minutes)"
    )
    args, overrides = parser.parse_known_args()
    console = Console(width=160)
    seconds = None
    if args.sweep is None:
        args.sweep, seconds = run_sweep(args.experiment, overrides, Path.cwd())
    console.print(report_table(args.sweep))
    if seconds is None:
        first = min((p / ".hydra" / "config.yaml").stat().st_mtime for p in args.sweep.glob("[0-9]*"))
        seconds = (args.sweep / "compare" / "report.json").stat().st_mtime - first
        console.print("(wall time from the first job's start to the comparison's report.json)")
    budget = args.budget_min * 60
    console.print(
        f"sweep wall time {seconds / 60:.1f} min = {seconds / budget:.2f} x the {args.budget_min:g}-minute budget"
    )


if __name__ == "__main__":
    main()
