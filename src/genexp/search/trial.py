"""One trial's fine-tune: an ordinary ``genexp-train`` run started from the base (``init_from``).

The run is launched as ``python -m genexp.train`` with the base run's own overrides (so it builds the same
model and data), the recipe's overrides and the user's ``trial_overrides``, in ``<out>/trials/<number>/``. It
is a run like any other: its folder holds its config, log, checkpoints, TensorBoard and metrics.json.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from genexp.runtime.errors import GenexpError

log = logging.getLogger(__name__)
# The base run's overrides that a trial sets itself (or that would reach back into the base run).
_OWN_KEYS = ("hydra.", "ckpt_path", "init_from", "compression", "trainer.max_epochs", "test", "experiment")


def base_overrides(run: Path) -> list[str]:
    """The overrides the base run was launched with (``.hydra/overrides.yaml``), less those a trial sets."""
    file = run / ".hydra" / "overrides.yaml"
    saved = OmegaConf.to_container(OmegaConf.load(file)) if file.is_file() else []
    kept = []
    for item in saved if isinstance(saved, list) else []:
        key = str(item).lstrip("+~").split("=", 1)[0]
        if not any(key == own.rstrip(".") or key.startswith(own) for own in _OWN_KEYS):
            kept.append(str(item))
    return kept


def experiment_of(run: Path) -> list[str]:
    """The base's ``experiment=`` override, kept first so that the trial's own keys override the recipe's."""
    file = run / ".hydra" / "overrides.yaml"
    saved = OmegaConf.to_container(OmegaConf.load(file)) if file.is_file() else []
    return [str(i) for i in (saved if isinstance(saved, list) else []) if str(i).startswith("experiment=")]


def fine_tune(
    base: Path,
    checkpoint: Path,
    folder: Path,
    overrides: list[str],
    extra: list[str],
    timeout: float | None = None,
) -> dict[str, Any]:
    """Run one trial's fine-tune into ``folder``; returns its metrics.json (raises GenexpError on failure)."""
    args = [
        *experiment_of(base),
        *base_overrides(base),
        *overrides,
        *extra,
        f"init_from={checkpoint}",
        "test=false",  # selection reads the validation split; best/ alone is scored on test
        f"hydra.run.dir={folder}",
    ]
    log.info("Trial run: genexp-train %s", " ".join(args))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "genexp.train", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    (folder.parent / f"{folder.name}.stderr.log").write_text(result.stderr[-20000:], encoding="utf-8")
    if result.returncode != 0 or not (folder / "metrics.json").is_file():
        errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
        raise GenexpError(
            f"trial {folder.name} failed: {errors[-1] if errors else 'exit ' + str(result.returncode)}"
        )
    import json

    return json.loads((folder / "metrics.json").read_text())
