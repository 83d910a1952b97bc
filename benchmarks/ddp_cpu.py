"""Two-process DDP on the CPU vs one process, at the same global batch: same final val loss, time per epoch.

    python benchmarks/ddp_cpu.py                        # VAE on digits, 10 epochs, seeds 1 and 2
    python benchmarks/ddp_cpu.py --epochs 5 --seeds 1 model.hidden_channels=16   # extra genexp-train overrides

Each configuration runs `genexp-train` in a subprocess (the real CLI, Lightning's own DDP launcher):
1 process x batch 64 vs `trainer=ddp_cpu` 2 processes x batch 32 (global batch 64, same learning rate and steps).
Time per epoch is measured by rank 0 from the start to the end of each training epoch (validation excluded),
after the first epoch (warm-up). The seeds give the run-to-run noise the two losses are compared against.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from rich.console import Console
from rich.table import Table

from _harness import genexp_train

HERE = Path(__file__).resolve().parent


class EpochTimer(Callback):
    """Rank 0 writes the wall time of every training epoch to ``path`` (a JSON list of seconds)."""

    def __init__(self, path: str) -> None:
        self.path, self.times, self.start = Path(path), [], 0.0

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.times.append(time.perf_counter() - self.start)
        if trainer.is_global_zero:
            self.path.write_text(json.dumps(self.times))


def run(name: str, overrides: list[str], workdir: Path) -> dict[str, float]:
    run_dir, timer = workdir / name, workdir / f"{name}.times.json"
    env = {"PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}  # for EpochTimer
    cmd = [
        "+callbacks.epoch_timer._target_=ddp_cpu.EpochTimer",
        f"+callbacks.epoch_timer.path={timer}",
        "callbacks.progress_bar=null",
        "callbacks.model_summary=null",
        "logger=csv",
        "test=false",
        *overrides,
    ]
    wall = genexp_train(cmd, run_dir, cwd=workdir, env=env)
    times = json.loads(timer.read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {"val_loss": metrics["val/loss"], "epoch_s": statistics.median(times[1:] or times), "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--global-batch", type=int, default=64)
    parser.add_argument("overrides", nargs="*", help="extra genexp-train overrides for both configurations")
    args = parser.parse_args()

    configs = {
        "1 process": ["trainer=cpu", f"data.batch_size={args.global_batch}"],
        "2 processes (ddp_cpu)": ["trainer=ddp_cpu", f"data.batch_size={args.global_batch // 2}"],
    }
    results: dict[str, list[dict[str, float]]] = {name: [] for name in configs}
    with tempfile.TemporaryDirectory(prefix="genexp-ddp-bench-") as tmp:
        for seed in args.seeds:
            for i, (name, overrides) in enumerate(configs.items()):
                common = [f"seed={seed}", f"trainer.max_epochs={args.epochs}", *args.overrides]
                results[name].append(run(f"s{seed}-{i}", [*overrides, *common], Path(tmp)))

    table = Table(title=f"VAE, {args.epochs} epochs, global batch {args.global_batch}, seeds {args.seeds}")
    for column in ("configuration", "final val/loss per seed", "mean", "train s/epoch (median)", "wall s"):
        table.add_column(column, justify="right")
    summary = {}
    for name, rows in results.items():
        losses = [r["val_loss"] for r in rows]
        summary[name] = (statistics.mean(losses), statistics.mean(r["epoch_s"] for r in rows))
        table.add_row(
            name,
            ", ".join(f"{v:.2f}" for v in losses),
            f"{summary[name][0]:.2f}",
            f"{summary[name][1]:.3f}",
            ", ".join(f"{r['wall_s']:.0f}" for r in rows),
        )
    console = Console(width=130)
    console.print(table)
    (one_loss, one_t), (two_loss, two_t) = summary.values()
    seed_spread = max(
        (max(r["val_loss"] for r in rows) - min(r["val_loss"] for r in rows) for rows in results.values()),
        default=0.0,
    )
    console.print(
        f"val/loss ratio 2-proc / 1-proc: {two_loss / one_loss:.4f} (difference {two_loss - one_loss:+.2f}; "
        f"largest seed-to-seed spread within a configuration {seed_spread:.2f})"
    )
    console.print(f"time per epoch ratio 2-proc / 1-proc: {two_t / one_t:.2f}  (2 CPU cores, machine shared)")


if __name__ == "__main__":
    main()
