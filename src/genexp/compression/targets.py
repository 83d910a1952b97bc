"""Which layers a compression callback changes: the targets inside ``deployable()``, by module name.

Default: every Linear/Conv/ConvTranspose, except one whose weight is shared with a non-target module (a GPT
head tied to its token embedding). ``include`` / ``exclude`` are regexes (``re.search``) over module names.
Callbacks keep target *names* and resolve them with ``get_submodule`` when they act, so a layer another
callback swapped in (QAT's fake-quantized Linear) is simply the module under that name now.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from genexp.deploy.layers import CONV_TYPES
from genexp.runtime.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, *CONV_TYPES)
PARAM = "weight"


def deployable_of(pl_module: nn.Module) -> nn.Module:
    """``pl_module.deployable()`` where the module defines it, else the module itself."""
    try:
        return pl_module.deployable()  # type: ignore[operator]
    except (AttributeError, NotImplementedError):
        return pl_module


def example_input_of(pl_module: nn.Module, batch_size: int) -> Any:
    """``pl_module.example_input(batch_size)`` on the CPU, or None where the module has none."""
    try:
        example = pl_module.example_input(batch_size)  # type: ignore[operator]
    except (AttributeError, NotImplementedError):
        return None
    if isinstance(example, tuple):
        return tuple(x.cpu() if isinstance(x, torch.Tensor) else x for x in example)
    return example.cpu() if isinstance(example, torch.Tensor) else example


def weight_of(module: nn.Module) -> torch.Tensor:
    """The trainable tensor behind ``weight`` (``weight_orig`` once pruned)."""
    orig = getattr(module, PARAM + "_orig", None)
    return orig if orig is not None else getattr(module, PARAM)


def _has_weight(module: nn.Module) -> bool:
    weight = module._parameters.get(PARAM) if PARAM in module._parameters else None
    return isinstance(weight, nn.Parameter) or isinstance(
        getattr(module, PARAM + "_orig", None), nn.Parameter
    )


def find_targets(
    root: nn.Module, include: Sequence[str], exclude: Sequence[str], key_prefix: str = "compression.prune"
) -> dict[str, nn.Module]:
    """The modules whose ``weight`` is compressed, by name inside ``root``.

    With ``include``: every module with a weight whose name matches a pattern; a pattern matching nothing
    is a ConfigError. ``exclude`` removes; patterns that leave nothing are a ConfigError too.
    """
    named = [(name, m) for name, m in root.named_modules() if _has_weight(m)]
    if include:
        for pattern in include:
            if not any(re.search(pattern, name) for name, _ in named):
                raise ConfigError(
                    f"{key_prefix}.include",
                    pattern,
                    f"a regex matching a module with a weight in deployable(), e.g. one of {[n for n, _ in named][:8]}",
                )
        targets = {name: m for name, m in named if any(re.search(p, name) for p in include)}
    else:
        targets = {name: m for name, m in named if isinstance(m, DEFAULT_TYPES)}
        others = {
            id(p) for name, m in root.named_modules() if name not in targets for p in m.parameters(False)
        }
        tied = [name for name, m in targets.items() if id(weight_of(m)) in others]
        for name in tied:
            log.info(
                "Not pruning %s: its weight is shared with a non-target module (e.g. a tied embedding)", name
            )
            del targets[name]
    targets = {name: m for name, m in targets.items() if not any(re.search(p, name) for p in exclude)}
    if not targets:
        key = f"{key_prefix}.exclude" if exclude else f"{key_prefix}.include"
        raise ConfigError(key, list(exclude or include), "patterns that leave at least one layer to prune")
    return targets
