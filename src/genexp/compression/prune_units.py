"""UnitPruning: the unit-removing strategy of ``PruningCallback`` (``method=ln_structured``, ``dim`` null).

Whole attention heads, MLP hidden units and conv channels are gated along the schedule
(``genexp.compression.structured.UnitPruner``) and removed at fit end: the pruned units are cut out of the
deployable, the new widths are recorded on the model (``genexp_structure``, saved in every later checkpoint and
torch artifact so that ``genexp.checkpoints.rebuild`` builds the smaller network), and ``checkpoints/last.ckpt``
is written again from the smaller network (without the optimizer's moments, which belonged to the wider
tensors; a resumed fit starts them afresh). The test stage then tests that network: a best checkpoint saved
before the removal no longer fits it. List ``prune`` before ``quantize`` so the torch artifact or ONNX export is
made from the smaller network.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn

from genexp.compression.structured import UnitPruner
from genexp.compression.targets import deployable_of, example_input_of
from genexp.runtime.run_folder import LAST_CHECKPOINT


class UnitPruning:
    """Gates on units, removed at fit end (see the module docstring).

    Args:
        scope: ``layer`` (each unit group to the scheduled fraction) or ``global`` (one ranking over all units).
    """

    name = "units"

    def __init__(self, scope: str) -> None:
        self.units = UnitPruner(scope)
        self.removing = False  # re-saving last.ckpt from the smaller network: no optimizer moments
        self.targets: dict[str, nn.Module] = {}  # units are not per-layer targets (see ``report``)

    def setup(self, pl_module: nn.Module) -> str:
        """Find the unit groups of the model's deployable (and the modules that mirror it, such as an EMA copy)."""
        source = getattr(pl_module, "trained_source", lambda: None)()
        self.units.setup(deployable_of(pl_module), example_input_of(pl_module, 2), [source] if source else [])
        return f"{len(self.units.groups)} unit groups: {self.units.report()}"

    def restore(self) -> None:
        """At train start: re-apply the gates of a resumed fit."""
        self.units.restore()

    def compute_masks(self, sparsity: float, epoch: int) -> dict[str, torch.Tensor]:
        """Per unit group, the pruned units (True = pruned) at ``sparsity``."""
        return self.units.masks(sparsity)

    def apply_masks(self, masks: dict[str, torch.Tensor]) -> None:
        self.units.apply(masks)

    def achieved_sparsity(self) -> float:
        """The fraction of heads, units and channels pruned (exact counts)."""
        return self.units.fraction()

    def finish(self, trainer: L.Trainer, pl_module: L.LightningModule, make_permanent: bool) -> None:
        """At fit end: remove the pruned units (always: a gated unit is removed exactly)."""
        if not self.units.removed:
            self.remove_units(trainer, pl_module)

    def remove_units(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Cut the pruned units out, record the new widths on the model, re-save ``last.ckpt``."""
        deployable = deployable_of(pl_module)
        prefix = next((f"{n}." for n, m in pl_module.named_modules() if m is deployable and n), "")
        record = self.units.remove(example_input_of(pl_module, 2))
        record["attributes"] = {prefix + k: v for k, v in record["attributes"].items()}
        pl_module.genexp_structure = record  # type: ignore[assignment]
        checkpoint = trainer.checkpoint_callback
        if trainer.is_global_zero and checkpoint is not None and getattr(checkpoint, "dirpath", None):
            last = Path(checkpoint.dirpath) / Path(LAST_CHECKPOINT).name
            partial = last.with_name(f".{last.name}.partial")
            self.removing = True
            try:
                trainer.save_checkpoint(partial, weights_only=False)
            finally:
                self.removing = False
            partial.replace(last)
            checkpoint.best_model_path = str(last)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.removing:  # the moments belong to the wider tensors
            checkpoint["optimizer_states"] = []

    def state_dict(self) -> dict[str, Any]:
        return self.units.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.units.load_state_dict(state_dict)

    def report(self) -> dict[str, Any]:
        return {"layers": {}, "units": self.units.report(), "removed": self.units.removed}
