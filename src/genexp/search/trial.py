"""Trials' fine-tunes: ordinary ``genexp-train`` runs started from the base (``init_from``), launched by Hydra.

A batch of trials is one Hydra multirun, ``python -m genexp.train -m ... +search_trial=t000,t001``, so that
Hydra's launcher runs them: in turn with the basic launcher, or as parallel SLURM jobs with
``launcher=slurm``/``slurm_cpu`` (hydra-submitit-launcher). Each trial's recipe is a config file of its own,
``<out>/recipes/search_trial/tNNN.yaml`` (``@package _global_``), on Hydra's search path; the command line holds
what every trial shares: the base run's own overrides (so that it builds the same model and data), the user's
``trial_overrides`` and ``init_from``. Trial ``NNN`` lands in ``<out>/trials/NNN/``, a run like any other.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from genexp.runtime.errors import GenexpError

log = logging.getLogger(__name__)
GROUP = "search_trial"
# The base run's overrides that a trial sets itself (or that would reach back into the base run).
_OWN_KEYS = (
    "hydra",
    "ckpt_path",
    "init_from",
    "compression",
    "trainer.max_epochs",
    "test",
    "experiment",
    GROUP,
)


def _saved_overrides(run: Path) -> list[str]:
    file = run / ".hydra" / "overrides.yaml"
    saved = OmegaConf.to_container(OmegaConf.load(file)) if file.is_file() else []
    return [str(item) for item in saved] if isinstance(saved, list) else []


def base_overrides(run: Path) -> list[str]:
    """The overrides the base run was launched with (``.hydra/overrides.yaml``): its ``experiment=`` first,
    less the keys a trial sets itself."""
    saved = _saved_overrides(run)
    kept = [item for item in saved if item.startswith("experiment=")]
    for item in saved:
        key = item.lstrip("+~").split("=", 1)[0]
        if not any(key == own or key.startswith(own + ".") or key.startswith(own + "/") for own in _OWN_KEYS):
            kept.append(item)
    return kept


def trial_name(number: int) -> str:
    return f"{number:03d}"


def write_recipe(out: Path, number: int, groups: list[str], values: list[str]) -> Path:
    """``<out>/recipes/search_trial/tNNN.yaml``: the trial's compression groups and keys, and its folder."""
    node: dict[str, Any] = OmegaConf.to_container(OmegaConf.from_dotlist(values))  # type: ignore[assignment]
    node.setdefault("hydra", {})["sweep"] = {"subdir": trial_name(number)}
    if groups:
        node = {"defaults": [{"override /compression": groups}], **node}
    file = out / "recipes" / GROUP / f"t{trial_name(number)}.yaml"
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text("# @package _global_\n" + OmegaConf.to_yaml(OmegaConf.create(node)), encoding="utf-8")
    return file


def launch(
    base: Path, checkpoint: Path, out: Path, numbers: list[int], extra: list[str], launcher: str | None
) -> Path:
    """Fine-tune the trials ``numbers`` (their recipes written) as one Hydra multirun; returns its log file."""
    args = [
        "-m",
        *base_overrides(base),
        *extra,
        f"init_from={checkpoint}",
        "test=false",  # selection reads the validation split; best/ alone is scored on test
        f"hydra.searchpath=[file://{(out / 'recipes').resolve()}]",
        f"+{GROUP}=" + ",".join(f"t{trial_name(n)}" for n in numbers),
        f"hydra.sweep.dir={out / 'trials'}",
        *([f"hydra/launcher={launcher}"] if launcher else []),
    ]
    log.info("Trials %s: genexp-train %s", numbers, " ".join(args))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "genexp.train", *args], env=env, capture_output=True, text=True
    )
    logfile = out / "trials" / f"launch-{trial_name(numbers[0])}.log"
    logfile.parent.mkdir(parents=True, exist_ok=True)
    logfile.write_text(result.stdout[-20000:] + result.stderr[-20000:], encoding="utf-8")
    return logfile


def finished_metrics(out: Path, number: int, logfile: Path) -> dict[str, Any]:
    """Trial ``number``'s metrics.json; GenexpError naming the launch log when its run did not finish."""
    metrics = out / "trials" / trial_name(number) / "metrics.json"
    if not metrics.is_file():
        errors = [line for line in logfile.read_text().splitlines() if "error" in line.lower()]
        raise GenexpError(f"trial {number} did not finish: {errors[-1] if errors else 'see ' + str(logfile)}")
    return json.loads(metrics.read_text())
