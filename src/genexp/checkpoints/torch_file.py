"""The one ``torch.load`` of what a run wrote (checkpoints and torch artifacts): CPU, ``weights_only=True``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from genexp.runtime.errors import CheckpointError, first_line


def load_torch_file(path: str | Path, key: str, what: str) -> Any:
    """``torch.load(path)`` on the CPU with ``weights_only=True``; a damaged file raises CheckpointError naming
    ``key``, the path and ``what`` it should have been."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  torch.load raises many types on damaged files (IndexError if truncated)
        first = first_line(err)
        first = first if len(first) <= 120 else first[:117] + "..."  # torch's messages run to paragraphs
        raise CheckpointError(f"{key}={path}: not a readable {what}: {first}") from err
