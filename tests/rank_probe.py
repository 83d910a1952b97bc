"""Test-only Lightning callback: every DDP rank records what it saw in ``<out_dir>/<run folder name>/rank<r>.json``.

Subprocess tests add ``tests/`` to PYTHONPATH and select it with
``+callbacks.rank_probe._target_=rank_probe.RankProbe +callbacks.rank_probe.out_dir=<dir>``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer


class RankProbe(Callback):
    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.seen: dict[str, Any] = {}

    def _dump(self, trainer: Trainer) -> None:
        self.seen.update(
            global_rank=trainer.global_rank,
            world_size=trainer.world_size,
            cluster=type(trainer.strategy.cluster_environment).__name__,
            root_dir=str(trainer.default_root_dir),
        )
        metrics = self.seen.setdefault("metrics", {})
        metrics.update(
            {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("val/", "test/"))}
        )
        path = self.out_dir / Path(trainer.default_root_dir).name / f"rank{trainer.global_rank}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.seen, indent=1))

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.seen["lr"] = trainer.optimizers[0].param_groups[0]["lr"]
        self.seen["global_step"] = trainer.global_step
        self._dump(trainer)

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._dump(trainer)


def probe_overrides(out_dir: Path) -> list[str]:
    return ["+callbacks.rank_probe._target_=rank_probe.RankProbe", f"+callbacks.rank_probe.out_dir={out_dir}"]


def read_probes(out_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """``{run folder name: [rank0, rank1, ...]}``."""
    return {
        run.name: [json.loads(p.read_text()) for p in sorted(run.glob("rank*.json"))]
        for run in sorted(out_dir.iterdir())
    }
