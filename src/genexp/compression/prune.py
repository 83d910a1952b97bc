"""PruningCallback: gradual, exact, checkpoint-aware pruning of ``deployable()`` along a CompressionSchedule.

One callback, two strategies, chosen by ``choose_strategy`` from the config (no subclass switching):

- ``prune_masks.MaskPruning``: weight masks (``l1_unstructured``, ``random_unstructured``, or ``ln_structured``
  with an integer ``dim``: whole slices), exact ``round(sparsity * numel)`` zeros, folded at fit end;
- ``prune_units.UnitPruning``: ``ln_structured`` with ``dim`` null gates whole attention heads, MLP units and
  conv channels and removes them at fit end, so the network shrinks.

The callback owns what both share: the schedule, the DDP broadcast (rank 0 computes the masks), plain weights
in checkpoints with the masks and schedule position in the callback state, the per-epoch figures and
``compression.json`` through ``record_compression``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import lightning as L
import torch
from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from genexp.checks.values import boolean, int_at_least, is_int, one_of, regexes
from genexp.compression.prune_masks import MaskPruning
from genexp.compression.prune_units import UnitPruning
from genexp.compression.schedule import CompressionSchedule, last_epoch
from genexp.compression.targets import deployable_of, example_input_of
from genexp.deploy.costs import measure
from genexp.deploy.sparse_format import folded_state_dict
from genexp.runtime.errors import ConfigError
from genexp.runtime.run_folder import record_compression

log = logging.getLogger(__name__)

METHODS = ("l1_unstructured", "random_unstructured", "ln_structured")
SCOPES = ("global", "layer")
UNBOUNDED_END = 10  # end_epoch null in a fit without max_epochs
Strategy = MaskPruning | UnitPruning


def choose_strategy(method: str, dim: int | None) -> str:
    """``units`` for ``ln_structured`` without ``dim`` (heads, units and channels removed), else ``masks``."""
    return "units" if method == "ln_structured" and dim is None else "masks"


class PruningCallback(Callback):
    """Prune the Linear/Conv weights of ``pl_module.deployable()`` along a schedule.

    Args:
        method: ``l1_unstructured`` (smallest magnitudes), ``random_unstructured`` (seeded, identical on
            every rank) or ``ln_structured``: without ``dim``, whole attention heads, MLP units and conv
            channels, removed at fit end (``UnitPruning``); with an integer ``dim``, masks of whole slices
            along it (``dim=0``: output channels of Linear/Conv).
        scope: ``global`` (one ranking over all targets; structured: norm per element) or ``layer``.
        final_sparsity, initial_sparsity: fractions of the targeted weights pruned at ``end_epoch`` and
            at ``start_epoch`` (in [0, 1)).
        start_epoch, end_epoch, every_n_epochs, ramp: the ``CompressionSchedule`` (cubic, linear, one_shot);
            ``end_epoch`` null (the default) is the fit's last epoch (``trainer.max_epochs - 1``; 10 when the
            fit has no epoch limit), so ``final_sparsity`` is what the run ends with.
        dim, n: the slice dimension and norm order of ``ln_structured``.
        include, exclude: regexes (``re.search``) on module names inside ``deployable()`` (``targets.py``):
            with ``include`` any module with a matching ``weight`` is a target; ``exclude`` removes.
        make_permanent: at fit end fold the masks into plain weights (``prune.remove``).
        seed: seeds ``random_unstructured`` (with the epoch), so reruns and resumes prune the same weights.
        latency_batch_size, latency_repeats: the fixed batch and repeats of the latency in compression.json.
        key_prefix: the config path named in error messages.
    """

    def __init__(
        self,
        method: str = "l1_unstructured",
        scope: str = "global",
        final_sparsity: float = 0.5,
        initial_sparsity: float = 0.0,
        start_epoch: int = 0,
        end_epoch: int | None = None,
        every_n_epochs: int = 1,
        ramp: str = "cubic",
        dim: int | None = None,
        n: float | int | str = 2,
        include: Sequence[str] | str | None = None,
        exclude: Sequence[str] | str | None = None,
        make_permanent: bool = True,
        seed: int = 0,
        latency_batch_size: int = 16,
        latency_repeats: int = 20,
        key_prefix: str = "compression.prune",
    ) -> None:
        super().__init__()
        p = key_prefix
        one_of(f"{p}.method", method, METHODS)
        one_of(f"{p}.scope", scope, SCOPES)
        if end_epoch is None:  # until setup knows the last epoch
            end_epoch_or_default = max(start_epoch, UNBOUNDED_END) if is_int(start_epoch) else UNBOUNDED_END
        else:
            end_epoch_or_default = end_epoch
        self.schedule = CompressionSchedule(
            start_epoch=start_epoch,
            end_epoch=end_epoch_or_default,
            every_n_epochs=every_n_epochs,
            initial=initial_sparsity,
            final=final_sparsity,
            ramp=ramp,
            key_prefix=p,
            initial_key="initial_sparsity",
            final_key="final_sparsity",
        )
        self._end_epoch = end_epoch  # None: the fit's last epoch (set in setup, when the trainer is known)
        if final_sparsity < initial_sparsity:
            raise ConfigError(f"{p}.final_sparsity", final_sparsity, f"a fraction >= {p}.initial_sparsity")
        if method == "ln_structured" and dim is not None and not is_int(dim):
            raise ConfigError(f"{p}.dim", dim, "null (remove heads, units, channels) or an integer dimension")
        if isinstance(n, str):  # YAML: fro, inf
            n = {"fro": 2.0, "inf": math.inf}.get(n.lower(), n)
        if not isinstance(n, (int, float)) or isinstance(n, bool) or not n > 0:
            raise ConfigError(f"{p}.n", n, "a norm order > 0 (1, 2, inf or 'fro')")
        boolean(f"{p}.make_permanent", make_permanent)
        int_at_least(f"{p}.latency_batch_size", latency_batch_size, 1)
        int_at_least(f"{p}.latency_repeats", latency_repeats, 0)
        self.method, self.scope, self.key_prefix = method, scope, p
        self.make_permanent = make_permanent
        self.latency_batch_size, self.latency_repeats = latency_batch_size, latency_repeats
        self.strategy: Strategy
        if choose_strategy(method, dim) == "units":
            self.strategy = UnitPruning(scope)
        else:
            include_re, exclude_re = regexes(f"{p}.include", include), regexes(f"{p}.exclude", exclude)
            self.strategy = MaskPruning(method, scope, dim, float(n), include_re, exclude_re, int(seed), p)
        self.sparsity = 0.0  # the scheduled sparsity currently applied
        self.history: list[dict[str, float]] = []

    @property
    def state_key(self) -> str:
        """Where checkpoints keep this callback's state (unit pruning was a subclass before, under its name)."""
        return "UnitPruningCallback" if self.strategy.name == "units" else "PruningCallback"

    @property
    def targets(self) -> dict[str, nn.Module]:
        """The pruned layers by name (the mask strategy's; the unit strategy has none per layer)."""
        return self.strategy.targets

    @targets.setter
    def targets(self, modules: dict[str, nn.Module]) -> None:
        self.strategy.targets = modules

    # ----- Lightning hooks -----------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            last = last_epoch(trainer.max_epochs)
            if self._end_epoch is None and last is not None:  # reach final_sparsity in the last epoch
                self.schedule = replace(self.schedule, end_epoch=max(last, self.schedule.start_epoch))
            log.info("Pruning %s", self.strategy.setup(pl_module))

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        last = last_epoch(trainer.max_epochs)
        if last is not None and last < self.schedule.end_epoch:
            rank_zero_warn(
                f"{self.key_prefix}.end_epoch={self.schedule.end_epoch} is after the last epoch ({last}, "
                f"trainer.max_epochs={trainer.max_epochs}): this fit stops at sparsity "
                f"{self.schedule.amount(last):.3f}, not {self.key_prefix}.final_sparsity={self.schedule.final}"
            )

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.strategy.restore()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        target = self.schedule.amount(epoch)
        if target <= self.sparsity:
            return
        masks = self.compute_masks(target, epoch) if trainer.is_global_zero else None
        if trainer.world_size > 1:  # rank 0 decides, every rank prunes the same weights
            masks = trainer.strategy.broadcast(masks, src=0)
        self.apply_masks(masks, target, epoch)
        log.info("Epoch %d: pruned to sparsity %.4f (target %.4f)", epoch, self.achieved_sparsity(), target)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        numbers = measure(deployable_of(pl_module), repeats=0)
        metrics = {
            "compression/sparsity": self.achieved_sparsity(),
            "compression/target_sparsity": self.sparsity,
            "compression/nonzero": numbers["nonzero"],
            "compression/bytes_dense": numbers["bytes_dense"],
            "compression/bytes_sparse": numbers["bytes_sparse"],
        }
        pl_module.log_dict(
            {k: float(v) for k, v in metrics.items()}, on_step=False, on_epoch=True, sync_dist=True
        )

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.strategy.finish(trainer, pl_module, self.make_permanent)
        if trainer.is_global_zero:
            deployable = deployable_of(pl_module)
            on_cpu = all(p.device.type == "cpu" for p in deployable.parameters())
            example = example_input_of(pl_module, self.latency_batch_size) if on_cpu else None
            record_compression(
                trainer,
                self.report(pl_module, trainer.current_epoch),
                timings={("deployable/latency_ms",): (deployable, example)},
                repeats=self.latency_repeats,
                scalars={"compression/latency_ms": ("deployable/latency_ms",)},
            )

    # ----- checkpoints: plain weights in the state dict, masks and position in the callback state --
    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint["state_dict"] = folded_state_dict(checkpoint["state_dict"])
        if isinstance(self.strategy, UnitPruning):
            self.strategy.on_save_checkpoint(checkpoint)

    def state_dict(self) -> dict[str, Any]:
        return {"sparsity": self.sparsity, "history": list(self.history), **self.strategy.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.sparsity = float(state_dict.get("sparsity", 0.0))
        self.history = list(state_dict.get("history", []))
        self.strategy.load_state_dict(state_dict)

    # ----- masks ---------------------------------------------------------------------------------
    def compute_masks(self, sparsity: float, epoch: int) -> dict[str, torch.Tensor]:
        """The strategy's new masks at ``sparsity``; already-pruned weights (or units) stay pruned."""
        return self.strategy.compute_masks(sparsity, epoch)

    def apply_masks(self, masks: dict[str, torch.Tensor], sparsity: float, epoch: int) -> None:
        """Apply ``masks`` and record the step in ``history``."""
        self.strategy.apply_masks(masks)
        self.sparsity = sparsity
        self.history.append({"epoch": epoch, "target": sparsity, "sparsity": self.achieved_sparsity()})

    def prune_to(self, module: nn.Module, sparsity: float, epoch: int = 0) -> dict[str, nn.Module]:
        """Prune ``module`` (e.g. a deployable) once to ``sparsity`` with masks, outside a Trainer; returns
        the targets."""
        if not isinstance(self.strategy, MaskPruning):
            raise ConfigError(
                f"{self.key_prefix}.dim", None, "an integer dimension to prune a module outside a fit"
            )
        self.strategy.attach(module)
        self.apply_masks(self.compute_masks(sparsity, epoch), sparsity, epoch)
        return self.targets

    def remove_pruning(self) -> None:
        """Fold the masks into plain weights."""
        if isinstance(self.strategy, MaskPruning):
            self.strategy.remove_pruning()

    # ----- numbers -------------------------------------------------------------------------------
    def achieved_sparsity(self) -> float:
        """Fraction of the targeted weights (mask strategy) or units (unit strategy) that are pruned."""
        return self.strategy.achieved_sparsity()

    def report(self, pl_module: L.LightningModule, epoch: int) -> dict[str, Any]:
        """compression.json: the target ``sparsity``, the deployable's costs and per-layer sparsity
        (its latency is added by ``record_compression``)."""
        numbers = measure(deployable_of(pl_module), repeats=0)
        figures = self.strategy.report()
        layers = figures["layers"]
        return {
            "sparsity": self.sparsity,
            "achieved_sparsity": self.achieved_sparsity(),
            "targeted_params": sum(v["params"] for v in layers.values()),
            "targeted_nonzero": sum(v["nonzero"] for v in layers.values()),
            "method": self.method,
            "scope": self.scope,
            "epochs_completed": epoch,
            "permanent": self.make_permanent,
            "schedule": {
                "start_epoch": self.schedule.start_epoch,
                "end_epoch": self.schedule.end_epoch,
                "every_n_epochs": self.schedule.every_n_epochs,
                "initial_sparsity": self.schedule.initial,
                "final_sparsity": self.schedule.final,
                "ramp": self.schedule.ramp,
            },
            "history": self.history,
            **figures,
            **{f"deployable/{k}": v for k, v in numbers.items()},
        }
