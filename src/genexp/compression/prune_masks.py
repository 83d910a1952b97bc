"""MaskPruning: the weight-mask strategy of ``PruningCallback`` (unstructured, or whole slices along ``dim``).

Built on ``torch.nn.utils.prune`` (``weight = weight_orig * weight_mask``, so pruned weights stay zero through
every optimizer step), with masks computed here (``masks.py``): each update keeps exactly
``round(sparsity * numel)`` zeros among the targets (structured: whole slices). Checkpoints hold *plain*
weights (a load-state-dict hook lets a pruned layer take one); the masks travel in the callback state and are
re-applied on resume. ``finish`` folds the masks into plain weights (``make_permanent``).
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.nn.utils import prune

from genexp.compression.masks import global_channels, keep_largest
from genexp.compression.targets import PARAM, deployable_of, find_targets, weight_of
from genexp.runtime.errors import CheckpointError, ConfigError


class MaskPruning:
    """Masks on the Linear/Conv weights of a deployable (see the module docstring).

    Args:
        method: ``l1_unstructured`` (smallest magnitudes), ``random_unstructured`` (seeded by ``seed`` and the
            epoch, identical on every rank) or ``ln_structured`` (whole slices along ``dim``, ranked by norm ``n``).
        scope: ``global`` (one ranking over all targets; structured: norm per element) or ``layer``.
        include, exclude: compiled regexes on module names inside the deployable (``targets.py``).
        key_prefix: the config path named in error messages.
    """

    name = "masks"

    def __init__(
        self,
        method: str,
        scope: str,
        dim: int | None,
        n: float,
        include: list[Any],
        exclude: list[Any],
        seed: int,
        key_prefix: str,
    ) -> None:
        self.method, self.scope, self.dim, self.n, self.seed = method, scope, dim, n, seed
        self.structured = method == "ln_structured"
        self.include, self.exclude, self.key_prefix = include, exclude, key_prefix
        self._root: nn.Module | None = None  # the deployable the target names live in
        self._names: list[str] = []
        self._fixed: dict[str, nn.Module] = {}  # targets given as modules, outside a fit
        self._restored_masks: dict[str, torch.Tensor] | None = None
        self._hook: Any = None

    # ----- targets ---------------------------------------------------------------------------------
    @property
    def targets(self) -> dict[str, nn.Module]:
        """The pruned layers by name, resolved in the deployable now (a layer another callback swapped in,
        such as QAT's fake-quantized Linear, is the target under its name)."""
        if self._root is None:
            return dict(self._fixed)
        return {name: self._root.get_submodule(name) for name in self._names}

    @targets.setter
    def targets(self, modules: dict[str, nn.Module]) -> None:
        self._root, self._names, self._fixed = None, list(modules), dict(modules)

    def attach(self, root: nn.Module) -> None:
        """Target the default/included layers of ``root`` by name; one hook on ``root`` lets every pruned
        layer load a plain checkpoint weight."""
        self._names = list(find_targets(root, self.include, self.exclude, self.key_prefix))
        self._root, self._fixed = root, {}
        if self._hook is not None:
            self._hook.remove()
        self._hook = root.register_load_state_dict_pre_hook(self._accept_plain_weights)

    def setup(self, pl_module: nn.Module) -> str:
        """Attach to the model's deployable at fit setup; returns what is pruned, for the log."""
        self.attach(deployable_of(pl_module))
        if self.structured:
            for name, module in self.targets.items():
                ndim = weight_of(module).dim()
                if not -ndim <= self.dim < ndim:  # type: ignore[operator]
                    raise ConfigError(
                        f"{self.key_prefix}.dim",
                        self.dim,
                        f"a dimension of {name}.weight (shape {tuple(weight_of(module).shape)})",
                    )
        return f"{len(self._names)} layers of the deployable: {', '.join(self._names)}"

    def restore(self) -> None:
        """At train start of a resumed fit: the loaded weights are plain, re-apply the saved masks."""
        if self._restored_masks is None:
            return
        missing = sorted(set(self._restored_masks) - set(self.targets))
        if missing:
            raise CheckpointError(
                f"ckpt_path: holds pruning masks for {missing}, which are not pruning targets of this "
                f"run (check {self.key_prefix}.include/exclude)"
            )
        for name, mask in self._restored_masks.items():
            self._set_mask(name, mask.to(weight_of(self.targets[name]).device))
        self._restored_masks = None

    # ----- masks -----------------------------------------------------------------------------------
    def current_mask(self, name: str) -> torch.Tensor:
        module = self.targets[name]
        mask = getattr(module, PARAM + "_mask", None)
        return torch.ones_like(weight_of(module), dtype=torch.bool) if mask is None else mask.bool()

    def compute_masks(self, sparsity: float, epoch: int) -> dict[str, torch.Tensor]:
        """New boolean masks (True = kept) giving ``sparsity``; already-pruned weights stay pruned."""
        if self.structured:
            return self._structured_masks(sparsity)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        scores: dict[str, torch.Tensor] = {}
        for name, module in self.targets.items():
            weight = weight_of(module).detach()
            if self.method == "l1_unstructured":
                score = weight.abs().float().cpu()
            else:
                score = torch.rand(weight.shape, generator=generator)
            scores[name] = score.masked_fill(~self.current_mask(name).cpu(), -math.inf)
        if self.scope == "layer":
            return {name: keep_largest(s, round(sparsity * s.numel())) for name, s in scores.items()}
        flat = torch.cat([s.flatten() for s in scores.values()])
        keep = keep_largest(flat, round(sparsity * flat.numel()))
        masks, offset = {}, 0
        for name, s in scores.items():
            masks[name] = keep[offset : offset + s.numel()].view(s.shape)
            offset += s.numel()
        return masks

    def _structured_masks(self, sparsity: float) -> dict[str, torch.Tensor]:
        channels: dict[str, torch.Tensor] = {}  # per-slice score; pruned slices -inf
        for name, module in self.targets.items():
            weight = (weight_of(module).detach().float() * self.current_mask(name)).cpu().movedim(self.dim, 0)
            rows = weight.flatten(1)
            score = torch.linalg.vector_norm(rows, ord=self.n, dim=1)
            if self.scope == "global" and math.isfinite(self.n):
                score = score / rows.shape[1] ** (1 / self.n)  # comparable across layers: a power mean
            alive = self.current_mask(name).cpu().movedim(self.dim, 0).flatten(1).any(1)
            channels[name] = score.masked_fill(~alive, -math.inf)
        if self.scope == "layer":
            kept = {name: keep_largest(s, round(sparsity * s.numel())) for name, s in channels.items()}
        else:
            sizes = {n: weight_of(m).numel() for n, m in self.targets.items()}
            kept = global_channels(channels, sizes, sparsity)
        masks = {}
        for name, keep in kept.items():
            shape = [1] * weight_of(self.targets[name]).dim()
            shape[self.dim] = -1  # type: ignore[index]
            masks[name] = keep.view(shape).expand_as(weight_of(self.targets[name])).cpu().clone()
        return masks

    def apply_masks(self, masks: dict[str, torch.Tensor]) -> None:
        """Set the targets' masks (True = kept)."""
        for name, mask in masks.items():
            self._set_mask(name, mask.to(weight_of(self.targets[name]).device))

    def _set_mask(self, name: str, mask: torch.Tensor) -> None:
        module = self.targets[name]
        if not hasattr(module, PARAM + "_mask"):
            prune.custom_from_mask(module, PARAM, mask)
        else:
            module.weight_mask.copy_(mask)
        with torch.no_grad():
            module.weight_orig.mul_(module.weight_mask)  # pruned originals are zero too
            setattr(module, PARAM, module.weight_orig * module.weight_mask)

    def remove_pruning(self) -> None:
        """Fold the masks into plain ``weight`` parameters (``prune.remove``)."""
        for module in self.targets.values():
            if hasattr(module, PARAM + "_mask"):
                prune.remove(module, PARAM)
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def finish(self, trainer: L.Trainer, pl_module: nn.Module, make_permanent: bool) -> None:
        """At fit end: fold the masks into the weights when ``make_permanent``."""
        if make_permanent:
            self.remove_pruning()

    def _accept_plain_weights(
        self, module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any
    ) -> None:
        """Let each pruned target load a plain checkpoint weight: orig = weight, mask = weight != 0."""
        for name, target in self.targets.items():
            key = f"{prefix}{name}.{PARAM}"
            if hasattr(target, PARAM + "_mask") and key in state_dict and key + "_orig" not in state_dict:
                weight = state_dict.pop(key)
                state_dict[key + "_orig"] = weight
                state_dict[key + "_mask"] = (weight != 0).to(target.weight_mask.dtype)

    # ----- state and numbers -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        masks = {
            name: m.weight_mask.detach().bool().cpu()
            for name, m in self.targets.items()
            if hasattr(m, PARAM + "_mask")
        }
        return {"masks": masks}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored_masks = dict(state_dict.get("masks", {}))

    def achieved_sparsity(self) -> float:
        """Fraction of zeros among the targeted weights, as the module computes them."""
        total = sum(weight_of(m).numel() for m in self.targets.values())
        zeros = sum(int((effective_weight(m) == 0).sum()) for m in self.targets.values())
        return zeros / total if total else 0.0

    def report(self) -> dict[str, Any]:
        """Per-layer params, non-zeros and sparsity of the targets."""
        layers = {}
        for name, module in self.targets.items():
            weight = effective_weight(module)
            nonzero = int(torch.count_nonzero(weight))
            layers[name] = {
                "params": weight.numel(),
                "nonzero": nonzero,
                "sparsity": 1 - nonzero / weight.numel(),
            }
        return {"layers": layers}


def effective_weight(module: nn.Module) -> torch.Tensor:
    """The weight as the module computes with it (masked while pruning is attached)."""
    mask = getattr(module, PARAM + "_mask", None)
    weight = weight_of(module).detach()
    return weight if mask is None else weight * mask
