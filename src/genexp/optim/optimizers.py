"""Optimizers beyond ``torch.optim``: torchao's AdamW with 8-bit or 4-bit optimizer states (CUDA only).

The two moment buffers of AdamW cost 8 bytes per parameter in fp32; torchao quantizes them blockwise to 8 or
4 bits (about 2 or 1 byte per parameter). Their kernels are written for GPUs: on a CPU a step of a 512-2048-512
MLP took 562 ms against 13.6 ms for ``torch.optim.AdamW``, so genexp refuses them there before training
(``genexp.checks.run.check_hardware``). torchao is imported only when one is built.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

# _target_s that need a CUDA GPU, with what they are (for the refusal message)
CUDA_ONLY = {
    "genexp.optim.optimizers.adamw8bit": "torchao's AdamW8bit (8-bit optimizer states)",
    "genexp.optim.optimizers.adamw4bit": "torchao's AdamW4bit (4-bit optimizer states)",
}


def adamw8bit(params: Iterable[Any], **options: Any) -> torch.optim.Optimizer:
    """``torchao.optim.AdamW8bit(params, **options)``: AdamW with blockwise 8-bit moments."""
    from torchao.optim import AdamW8bit

    return AdamW8bit(params, **options)


def adamw4bit(params: Iterable[Any], **options: Any) -> torch.optim.Optimizer:
    """``torchao.optim.AdamW4bit(params, **options)``: AdamW with blockwise 4-bit moments."""
    from torchao.optim import AdamW4bit

    return AdamW4bit(params, **options)
