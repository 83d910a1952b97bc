"""PruningCallback: gradual, exact, checkpoint-aware pruning of ``deployable()`` along a CompressionSchedule.

Built on ``torch.nn.utils.prune`` (``weight = weight_orig * weight_mask``, so pruned weights stay zero through
every optimizer step), with masks computed here (``masks.py``): each update keeps exactly
``round(sparsity * numel)`` zeros among the targets (structured: whole channels). Checkpoints hold *plain*
weights (any checkpoint loads into an unpruned module) and the masks and schedule position in the callback
state, re-applied on resume. In DDP rank 0 computes the masks and broadcasts them. At fit end the pruning is
made permanent (``make_permanent``) and the figures go to ``compression.json`` through ``record_compression``.
``method=ln_structured`` without ``dim`` is ``prune_units.UnitPruningCallback``: it removes the units.
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
from torch.nn.utils import prune

from genexp.checks.values import boolean, int_at_least, is_int, one_of, regexes
from genexp.compression.masks import global_channels, keep_largest
from genexp.compression.schedule import CompressionSchedule, last_epoch
from genexp.compression.targets import PARAM, deployable_of, example_input_of, find_targets, weight_of
from genexp.deploy.costs import measure
from genexp.deploy.sparse_format import folded_state_dict
from genexp.runtime.errors import CheckpointError, ConfigError
from genexp.runtime.run_folder import record_compression

log = logging.getLogger(__name__)

METHODS = ("l1_unstructured", "random_unstructured", "ln_structured")
SCOPES = ("global", "layer")
UNBOUNDED_END = 10  # end_epoch null in a fit without max_epochs


class PruningCallback(Callback):
    """Prune the Linear/Conv weights of ``pl_module.deployable()`` along a schedule.

    Args:
        method: ``l1_unstructured`` (smallest magnitudes), ``random_unstructured`` (seeded, identical on
            every rank) or ``ln_structured``: without ``dim``, whole attention heads, MLP units and conv
            channels, removed at fit end (``genexp.compression.prune_units.UnitPruningCallback``); with an
            integer ``dim``, masks of whole slices along it (``dim=0``: output channels of Linear/Conv).
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
        self.structured = method == "ln_structured"
        if self.structured and dim is not None and not is_int(dim):
            raise ConfigError(f"{p}.dim", dim, "null (remove heads, units, channels) or an integer dimension")
        if isinstance(n, str):  # YAML: fro, inf
            n = {"fro": 2.0, "inf": math.inf}.get(n.lower(), n)
        if not isinstance(n, (int, float)) or isinstance(n, bool) or not n > 0:
            raise ConfigError(f"{p}.n", n, "a norm order > 0 (1, 2, inf or 'fro')")
        boolean(f"{p}.make_permanent", make_permanent)
        int_at_least(f"{p}.latency_batch_size", latency_batch_size, 1)
        int_at_least(f"{p}.latency_repeats", latency_repeats, 0)
        self.method, self.scope, self.dim, self.n = method, scope, dim, float(n)
        self.include = regexes(f"{p}.include", include)
        self.exclude = regexes(f"{p}.exclude", exclude)
        self.make_permanent, self.seed, self.key_prefix = make_permanent, int(seed), p
        self.latency_batch_size, self.latency_repeats = latency_batch_size, latency_repeats
        self._root: nn.Module | None = None  # the deployable the target names live in
        self._names: list[str] = []
        self._fixed: dict[str, nn.Module] = {}  # targets given as modules, outside a fit
        self.sparsity = 0.0  # the scheduled sparsity currently applied
        self.history: list[dict[str, float]] = []
        self._restored_masks: dict[str, torch.Tensor] | None = None
        self._hook: Any = None

    def __new__(cls, *args: Any, **kwargs: Any) -> PruningCallback:
        """``method=ln_structured`` without ``dim`` builds a ``UnitPruningCallback`` (removes units at fit end)."""
        if cls is PruningCallback and kwargs.get("method") == "ln_structured" and kwargs.get("dim") is None:
            from genexp.compression.prune_units import UnitPruningCallback

            return super().__new__(UnitPruningCallback)
        return super().__new__(cls)

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

    def _attach(self, root: nn.Module) -> None:
        """Target the default/included layers of ``root`` by name; one hook on ``root`` lets every pruned
        layer load a plain checkpoint weight."""
        self._names = list(find_targets(root, self.include, self.exclude, self.key_prefix))
        self._root, self._fixed = root, {}
        if self._hook is not None:
            self._hook.remove()
        self._hook = root.register_load_state_dict_pre_hook(self._accept_plain_weights)

    # ----- Lightning hooks -----------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            last = last_epoch(trainer.max_epochs)
            if self._end_epoch is None and last is not None:  # reach final_sparsity in the last epoch
                self.schedule = replace(self.schedule, end_epoch=max(last, self.schedule.start_epoch))
            self._attach(deployable_of(pl_module))
            if self.structured:
                for name, module in self.targets.items():
                    ndim = weight_of(module).dim()
                    if not -ndim <= self.dim < ndim:
                        raise ConfigError(
                            f"{self.key_prefix}.dim",
                            self.dim,
                            f"a dimension of {name}.weight (shape {tuple(weight_of(module).shape)})",
                        )
            log.info("Pruning %d layers of the deployable: %s", len(self._names), ", ".join(self._names))

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        last = last_epoch(trainer.max_epochs)
        if last is not None and last < self.schedule.end_epoch:
            rank_zero_warn(
                f"{self.key_prefix}.end_epoch={self.schedule.end_epoch} is after the last epoch ({last}, "
                f"trainer.max_epochs={trainer.max_epochs}): this fit stops at sparsity "
                f"{self.schedule.amount(last):.3f}, not {self.key_prefix}.final_sparsity={self.schedule.final}"
            )

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._restored_masks is not None:  # resuming: the loaded weights are plain, re-apply the masks
            missing = sorted(set(self._restored_masks) - set(self.targets))
            if missing:
                raise CheckpointError(
                    f"ckpt_path: holds pruning masks for {missing}, which are not pruning targets of this "
                    f"run (check {self.key_prefix}.include/exclude)"
                )
            for name, mask in self._restored_masks.items():
                self._set_mask(name, mask.to(weight_of(self.targets[name]).device))
            self._restored_masks = None

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
        if self.make_permanent:
            self.remove_pruning()
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

    def state_dict(self) -> dict[str, Any]:
        return {
            "sparsity": self.sparsity,
            "history": list(self.history),
            "masks": {
                name: m.weight_mask.detach().bool().cpu()
                for name, m in self.targets.items()
                if hasattr(m, PARAM + "_mask")
            },
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.sparsity = float(state_dict.get("sparsity", 0.0))
        self.history = list(state_dict.get("history", []))
        self._restored_masks = dict(state_dict.get("masks", {}))

    # ----- masks ---------------------------------------------------------------------------------
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
            kept = global_channels(channels, {n: weight_of(m).numel() for n, m in self.targets.items()}, sparsity)
        masks = {}
        for name, keep in kept.items():
            shape = [1] * weight_of(self.targets[name]).dim()
            shape[self.dim] = -1
            masks[name] = keep.view(shape).expand_as(weight_of(self.targets[name])).cpu().clone()
        return masks

    def prune_to(self, module: nn.Module, sparsity: float, epoch: int = 0) -> dict[str, nn.Module]:
        """Prune ``module`` (e.g. a deployable) once to ``sparsity``, outside a Trainer; returns the targets."""
        self._attach(module)
        self.apply_masks(self.compute_masks(sparsity, epoch), sparsity, epoch)
        return self.targets

    def apply_masks(self, masks: dict[str, torch.Tensor], sparsity: float, epoch: int) -> None:
        """Set the targets' masks (True = kept) and record the step in ``history``."""
        for name, mask in masks.items():
            self._set_mask(name, mask.to(weight_of(self.targets[name]).device))
        self.sparsity = sparsity
        self.history.append({"epoch": epoch, "target": sparsity, "sparsity": self.achieved_sparsity()})

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

    def _accept_plain_weights(self, module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        """Let each pruned target load a plain checkpoint weight: orig = weight, mask = weight != 0."""
        for name, target in self.targets.items():
            key = f"{prefix}{name}.{PARAM}"
            if hasattr(target, PARAM + "_mask") and key in state_dict and key + "_orig" not in state_dict:
                weight = state_dict.pop(key)
                state_dict[key + "_orig"] = weight
                state_dict[key + "_mask"] = (weight != 0).to(target.weight_mask.dtype)

    # ----- numbers -------------------------------------------------------------------------------
    def achieved_sparsity(self) -> float:
        """Fraction of zeros among the targeted weights, as the module computes them."""
        total = sum(weight_of(m).numel() for m in self.targets.values())
        zeros = sum(int((_effective_weight(m) == 0).sum()) for m in self.targets.values())
        return zeros / total if total else 0.0

    def report(self, pl_module: L.LightningModule, epoch: int) -> dict[str, Any]:
        """compression.json: the target ``sparsity``, the deployable's costs and per-layer sparsity
        (its latency is added by ``record_compression``)."""
        numbers = measure(deployable_of(pl_module), repeats=0)
        layers = {}
        for name, module in self.targets.items():
            weight = _effective_weight(module)
            nonzero = int(torch.count_nonzero(weight))
            layers[name] = {
                "params": weight.numel(),
                "nonzero": nonzero,
                "sparsity": 1 - nonzero / weight.numel(),
            }
        targeted = sum(v["params"] for v in layers.values())
        return {
            "sparsity": self.sparsity,
            "achieved_sparsity": self.achieved_sparsity(),
            "targeted_params": targeted,
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
            "layers": layers,
            **{f"deployable/{k}": v for k, v in numbers.items()},
        }


# ----- helpers ------------------------------------------------------------------------------------
def _effective_weight(module: nn.Module) -> torch.Tensor:
    mask = getattr(module, PARAM + "_mask", None)
    weight = weight_of(module).detach()
    return weight if mask is None else weight * mask
