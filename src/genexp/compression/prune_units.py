"""UnitPruningCallback: ``compression.prune.method=ln_structured`` (no ``dim``) prunes whole attention heads, MLP
hidden units and conv channels along the schedule, and removes them at fit end.

The same schedule, scopes, checkpointing and DDP broadcast as ``PruningCallback`` (which builds this class for
that method), with ``genexp.compression.structured.UnitPruner`` in place of weight masks. At fit end the pruned
units are cut out of the deployable, the new widths are recorded on the model (``genexp_structure``, saved in
every later checkpoint and torch artifact so that ``genexp.checkpoints.rebuild`` builds the smaller network), and
``checkpoints/last.ckpt`` is written again from the smaller network (without the optimizer's moments, which
belonged to the wider tensors; a resumed fit starts them afresh). The test stage then tests that network: a
best checkpoint saved before the removal no longer fits it. List ``prune`` before ``quantize`` so the torch
artifact or ONNX export is made from the smaller network.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch

from genexp.compression.prune import PruningCallback
from genexp.compression.structured import UnitPruner
from genexp.compression.targets import deployable_of, example_input_of

log = logging.getLogger(__name__)


class UnitPruningCallback(PruningCallback):
    """Structured pruning that shrinks the network (see the module docstring; arguments as ``PruningCallback``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.units = UnitPruner(self.scope)
        self._removing = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            source = getattr(pl_module, "trained_source", lambda: None)()
            self.units.setup(deployable_of(pl_module), example_input_of(pl_module, 2), [source] if source else [])
            log.info("Structured pruning of %d unit groups: %s", len(self.units.groups), self.units.report())

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.units.restore()

    def compute_masks(self, sparsity: float, epoch: int) -> dict[str, torch.Tensor]:
        """Per unit group, the pruned units (True = pruned) at ``sparsity``."""
        return self.units.masks(sparsity)

    def apply_masks(self, masks: dict[str, torch.Tensor], sparsity: float, epoch: int) -> None:
        self.units.apply(masks)
        self.sparsity = sparsity
        self.history.append({"epoch": epoch, "target": sparsity, "sparsity": self.achieved_sparsity()})

    def achieved_sparsity(self) -> float:
        """The fraction of heads, units and channels pruned (exact counts)."""
        return self.units.fraction()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.units.removed:
            self.remove_units(trainer, pl_module)
        super().on_fit_end(trainer, pl_module)

    def remove_units(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Cut the pruned units out, record the new widths on the model, re-save ``last.ckpt``."""
        deployable = deployable_of(pl_module)
        prefix = next((f"{n}." for n, m in pl_module.named_modules() if m is deployable and n), "")
        record = self.units.remove(example_input_of(pl_module, 2))
        record["attributes"] = {prefix + k: v for k, v in record["attributes"].items()}
        pl_module.genexp_structure = record  # type: ignore[assignment]
        checkpoint = trainer.checkpoint_callback
        if trainer.is_global_zero and checkpoint is not None and getattr(checkpoint, "dirpath", None):
            last = Path(checkpoint.dirpath) / "last.ckpt"
            partial = last.with_name(".last.ckpt.partial")
            self._removing = True
            try:
                trainer.save_checkpoint(partial, weights_only=False)
            finally:
                self._removing = False
            partial.replace(last)
            checkpoint.best_model_path = str(last)
        log.info("Removed the pruned units: %s", self.units.report())

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        if self._removing:  # the moments belong to the wider tensors
            checkpoint["optimizer_states"] = []

    def state_dict(self) -> dict[str, Any]:
        return {"sparsity": self.sparsity, "history": list(self.history), **self.units.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.sparsity = float(state_dict.get("sparsity", 0.0))
        self.history = list(state_dict.get("history", []))
        self.units.load_state_dict(state_dict)

    def report(self, pl_module: L.LightningModule, epoch: int) -> dict[str, Any]:
        return {**super().report(pl_module, epoch), "units": self.units.report(), "removed": self.units.removed}
