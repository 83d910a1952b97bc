"""CompareSweep: a Hydra callback that compares a multirun's runs when the sweep ends.

Put it in an experiment (``hydra.callbacks``) and every ``genexp-train -m experiment=...`` ends with
``genexp-eval compare=<sweep dir>`` run into ``<sweep dir>/<subdir>`` (report.md, pareto.png, tensorboard/).
It runs the real ``genexp-eval`` in a child process, exactly as a user would, so the comparison gets a
fresh Hydra config of its own. A failed comparison is logged, not raised: the runs themselves are done.

Hydra calls ``on_multirun_end`` only when every job succeeded (a failed job aborts the multirun); in that
case run ``genexp-eval compare=<sweep dir>`` by hand: the failed run is reported and skipped.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)


class CompareSweep(Callback):
    """Run ``genexp-eval compare=<sweep dir>`` once a multirun has finished.

    Args:
        subdir: the comparison's folder inside the sweep dir.
        overrides: extra ``genexp-eval`` overrides, e.g. ``["report.repeats=40"]``.
    """

    def __init__(self, subdir: str = "compare", overrides: Sequence[str] = ()) -> None:
        self.subdir = subdir
        self.overrides = list(overrides)

    def command(self, sweep_dir: Path) -> list[str]:
        """The ``genexp-eval`` command line for ``sweep_dir``."""
        return [
            sys.executable,
            "-m",
            "genexp.evaluate",
            f"compare={sweep_dir}",
            f"hydra.run.dir={sweep_dir / self.subdir}",
            *self.overrides,
        ]

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir).resolve()
        log.info("Comparing the runs of %s", sweep_dir)
        command = [*self.command(sweep_dir), f"paths.data_dir={config.paths.data_dir}"]
        result = subprocess.run(command, env=dict(os.environ), cwd=Path.cwd(), check=False)
        if result.returncode:
            log.error("genexp-eval compare=%s failed (exit %d); see above", sweep_dir, result.returncode)
        else:
            log.info("Comparison: %s", sweep_dir / self.subdir / "report.md")
