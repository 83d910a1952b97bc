"""Reading genexp checkpoints safely, with errors that name the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from genexp.errors import CheckpointError
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
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{key}={path}: not a readable checkpoint (corrupt or truncated?): {first}"
        ) from err
    if not isinstance(checkpoint, dict) or CONFIG_KEY not in checkpoint or "state_dict" not in checkpoint:
        raise CheckpointError(
            f"{key}={path}: not a genexp checkpoint (no saved run config); "
            "expected a .ckpt from a genexp-train run folder"
        )
    return checkpoint
