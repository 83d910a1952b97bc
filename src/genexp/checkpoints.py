"""Reading genexp checkpoints safely, with errors that name the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from genexp.errors import CheckpointError, first_line
from genexp.models.base import CONFIG_KEY


def load_checkpoint(path: str | Path, key: str = "ckpt_path") -> dict[str, Any]:
    """Load a genexp checkpoint on the CPU with ``weights_only=True``.

    Raises CheckpointError (naming ``key`` and the path) when the file is missing, truncated,
    corrupt, or was not written by genexp-train.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"{key}={path}: no such checkpoint file (expected a .ckpt written by genexp-train)"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load raises many types on damaged files (IndexError on a truncated one)
        first = first_line(err)
        first = first if len(first) <= 120 else first[:117] + "..."  # torch's messages run to paragraphs
        raise CheckpointError(
            f"{key}={path}: not a readable checkpoint (corrupt or truncated?): {first}"
        ) from err
    if not isinstance(checkpoint, dict) or CONFIG_KEY not in checkpoint or "state_dict" not in checkpoint:
        raise CheckpointError(
            f"{key}={path}: not a genexp checkpoint (no saved run config); "
            "expected a .ckpt from a genexp-train run folder"
        )
    return checkpoint


# A checkpoint's config is data from disk: only these callables may be instantiated from it.
TRUSTED_TARGETS = ("genexp.", "torch.optim.", "lightning.pytorch.")
REBUILT_GROUPS = ("data", "model", "optimizer", "scheduler")


def saved_config(checkpoint: dict[str, Any], path: str | Path, key: str = "ckpt_path") -> DictConfig:
    """The run config stored in ``checkpoint``, checked before anything in it is instantiated.

    Every ``_target_`` under data/model/optimizer/scheduler must name a genexp, torch.optim or Lightning callable,
    so a crafted checkpoint cannot make genexp-eval (or a distillation teacher) import and call arbitrary code.
    """
    cfg = OmegaConf.create(checkpoint[CONFIG_KEY])
    missing = [group for group in ("data", "model", "optimizer") if group not in cfg]
    if missing:
        raise CheckpointError(
            f"{key}={path}: its saved config lacks {', '.join(missing)}; not a genexp-train run"
        )
    for group in REBUILT_GROUPS:
        for target in _targets(OmegaConf.to_container(cfg.get(group) or {}, resolve=False)):
            if not isinstance(target, str) or not target.startswith(TRUSTED_TARGETS):
                raise CheckpointError(
                    f"{key}={path}: saved config names _target_={target!r} under {group}; "
                    f"expected a callable from {', '.join(TRUSTED_TARGETS)}"
                )
    return cfg


def _targets(node: Any) -> list[Any]:
    if isinstance(node, dict):
        found = [node["_target_"]] if "_target_" in node else []
        return found + [t for value in node.values() for t in _targets(value)]
    if isinstance(node, list):
        return [t for value in node for t in _targets(value)]
    return []
