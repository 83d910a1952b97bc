"""What every entry point does first: find the configs, register genexp's config resolvers, quiet the console.

Resolvers: ``${gpus_per_node:${trainer.accelerator},${trainer.devices}}`` (the SLURM preset's GPUs: none for
``accelerator=cpu``, else one per device), registered when this module is imported.

A default run's console should show the config tree, the progress bar, the metrics and the run folder. These
lines are dropped because a user cannot act on them (each is matched by its text, nothing else is hidden):

- Lightning's "💡 Tip" adverts (litlogger, litmodels) and its "model summary callbacks" notice;
- Lightning's hint that ``srun`` exists but is not used (genexp runs on SLURM through submitit, see README);
- torchao's "Failed to load ..._C_*.so" (CUDA-only kernels absent from a CPU build) and "Detected no triton";
- the deprecation notices torch and Lightning print about each other's pytree API.

Set ``GENEXP_VERBOSE=1`` to see them all.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

NOISE = (
    "💡 Tip:",
    "Trainer already configured with model summary callbacks",
    "Failed to load ",
    "Detected no triton",
    "is an Enum subclass and is now natively supported",
)
NOISY_WARNINGS = (
    r"The `srun` command is available on your system but is not used",
    r".*isinstance\(treespec, LeafSpec\)` is deprecated",
)
LOGGERS = (
    "",
    "lightning",
    "lightning.pytorch",
    "lightning.fabric",
    "torch",
    "torchao",
    "torchao.kernel.intmm",
)


def gpus_per_node(accelerator: Any, devices: Any) -> Any:
    """GPUs to ask SLURM for: None (no ``--gpus-per-node``) on CPU, else ``trainer.devices``."""
    return None if str(accelerator) == "cpu" else devices


if not OmegaConf.has_resolver("gpus_per_node"):
    OmegaConf.register_new_resolver("gpus_per_node", gpus_per_node)


def config_dir() -> str:
    """The Hydra config folder: the checkout's top-level ``conf/`` in a source tree, else the one shipped in
    the installed package (``genexp/conf``, mapped from ``conf/`` by pyproject.toml)."""
    here = Path(__file__).resolve().parents[1]  # src/genexp (runtime/ is one level down)
    for candidate in (here.parents[1] / "conf", here / "conf"):
        if (candidate / "train.yaml").is_file():
            return str(candidate)
    raise FileNotFoundError(
        f"genexp's configs are missing: neither {here.parents[1] / 'conf'} nor {here / 'conf'}"
    )


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(noise in message for noise in NOISE)


_DROP = _DropNoise()


def quiet_console() -> None:
    """Filter the known-harmless lines above (call once logging is configured, i.e. inside the Hydra task)."""
    if os.environ.get("GENEXP_VERBOSE") == "1":
        return
    for pattern in NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in LOGGERS:
        logger = logging.getLogger(name)
        for target in (logger, *logger.handlers):
            if _DROP not in target.filters:
                target.addFilter(_DROP)


def tuning_summary(cfg: Any) -> str:
    """Which ``conf/tuning/`` file this run's defaults took and the keys it set, for train.log, e.g.
    ``tuning/vae_sgd.yaml (sets optimizer.lr, trainer.gradient_clip_val)``; ``none`` when none applied."""
    applied = cfg.get("tuning_applied")
    if not applied:
        return "none (no conf/tuning/<model>_<optimizer>.yaml for this pair, or ~tuning)"
    path = Path(config_dir()) / str(applied)
    if not path.is_file():
        return str(applied)
    tuned = OmegaConf.to_container(OmegaConf.load(path))
    assert isinstance(tuned, dict)
    return f"{applied} (sets {', '.join(_leaf_keys(tuned, skip={'tuning_applied'}))})"


def _leaf_keys(
    node: dict[str, Any], prefix: str = "", skip: frozenset[str] | set[str] = frozenset()
) -> list[str]:
    keys = []
    for key, value in node.items():
        if key in skip:
            continue
        if isinstance(value, dict):
            keys.extend(_leaf_keys(value, f"{prefix}{key}."))
        else:
            keys.append(f"{prefix}{key}")
    return keys
