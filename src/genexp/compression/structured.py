"""Structured pruning that shrinks the network: whole attention heads, MLP hidden units and conv channels are
gated off during fit along the schedule, then removed at fit end, leaving a dense, smaller network.

**Units.** ``find_unit_groups(deployable, example)`` lists what can be removed:

- *heads* of every attention module with ``n_head``, a fused ``qkv`` Linear and a ``proj`` Linear (the GPT's
  ``CausalSelfAttention``): head ``h`` is rows ``h*d:(h+1)*d`` of each of q, k and v and the same columns of
  ``proj``. genexp slices these itself: torch-pruning's dependency graph maps the fused qkv split onto ``proj``
  as three times the channels (measured with torch-pruning 1.6), which would be wrong;
- *channels*: every group of torch-pruning's ``DependencyGraph`` rooted at a Linear/Conv/ConvTranspose output
  whose channels another Linear/Conv/ConvTranspose consumes (the GPT's MLP hidden units; a conv's filters with
  their BatchNorm and the next layer's input channels; a conv flattened into a Linear). Groups that touch the
  residual stream (an Embedding or LayerNorm), split a tensor (the VAE's mu/logvar, the fused qkv) or reshape a
  Linear's output into a feature map (the VAE decoder's first layer) are left alone, as are the network's inputs
  and outputs.

**During fit** a pruned unit is *gated*: a forward pre-hook on each consumer zeroes its input features, so the
network computes exactly what the smaller one will (training still updates the other weights: the gradual
schedule fine-tunes between steps). Sparsity is the fraction of the *parameters* the units own, so a 50% GPT
loses half of its block weights, not half of a unit count that its 512-weight MLP units would swamp next to its
16k-weight heads. ``layer``: exactly ``round(sparsity * units)`` of each group (its units own the same number of
weights each); ``global``: one ranking over all groups (scores normalised by their group's mean), lowest first,
taking each unit that brings the pruned weights closer to ``sparsity`` of the total (a conv weight between two
pruned channels counts with each: exact for the GPT, slightly over for conv chains). Never a group's last unit.
A unit's score is the L2 norm of all the weights it owns (torch-pruning's ``GroupMagnitudeImportance`` for
channel groups).

**At fit end** ``remove_units`` cuts the gated units out (heads by genexp, channel groups by torch-pruning's
``group.prune``), sets each attention's ``n_head``, and returns the structure record (``n_head`` per attention
module) that ``genexp.checkpoints.resize`` needs, with the state dict's shapes, to rebuild the smaller network.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from genexp.deploy.layers import is_qkv_attention

LAYERS = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)
RESIDUAL = (nn.Embedding, nn.LayerNorm)


@dataclass
class UnitGroup:
    """Units that are removed together with everything they own: the heads of one attention module, or the
    output channels of one layer (with what consumes them)."""

    name: str  # the attention module, or the root layer, inside the deployable
    kind: str  # "heads" or "channels"
    size: int  # how many units
    weights: int = 1  # parameters each unit owns (what removing one saves)
    pruned: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.bool))

    def __post_init__(self) -> None:
        if self.pruned.numel() != self.size:
            self.pruned = torch.zeros(self.size, dtype=torch.bool)


def dependency_graph(root: nn.Module, example: Any) -> Any:
    """torch-pruning's dependency graph of ``root``, traced through autograd.

    Frozen parameters (an EMA copy: the GAN's and the diffusion model's deployable) leave no autograd graph to
    trace, so they take gradients for the trace only; the trace switches the network to eval mode, and each
    module's mode is put back (else a network pruned during fit would train with its BatchNorm frozen).
    """
    import torch_pruning as tp

    frozen = [p for p in root.parameters() if not p.requires_grad]
    modes = [(m, m.training) for m in root.modules()]
    for p in frozen:
        p.requires_grad_(True)
    try:
        with torch.enable_grad():
            return tp.DependencyGraph().build_dependency(root, example_inputs=example)
    finally:
        for p in frozen:
            p.requires_grad_(False)
        for m, training in modes:
            m.training = training


def _handler(module: nn.Module) -> Any:
    import torch_pruning as tp

    return tp.prune_linear_out_channels if isinstance(module, nn.Linear) else tp.prune_conv_out_channels


def _eligible(group: Any, root: nn.Module) -> bool:
    kinds = [type(dep.target.module).__name__ for dep, _ in group]
    modules = [dep.target.module for dep, _ in group]
    if any(isinstance(m, RESIDUAL) for m in modules) or "_SplitOp" in kinds or "_OutputOp" in kinds:
        return False
    consumers = [
        dep.target.module
        for dep, _ in group
        if dep.handler.__name__ == "prune_in_channels" and isinstance(dep.target.module, LAYERS)
    ]
    if isinstance(root, nn.Linear) and any(not isinstance(c, nn.Linear) for c in consumers):
        return False  # a Linear reshaped into a feature map: the view's shape is an attribute
    return bool(consumers)


def _head_weights(attention: nn.Module) -> int:
    qkv, proj = attention.qkv, attention.proj
    d = proj.in_features // attention.n_head
    return d * (3 * (qkv.in_features + (qkv.bias is not None)) + proj.out_features)


def _channel_weights(group: Any, size: int) -> int:
    """Parameters one of the ``size`` channels of a torch-pruning group owns: the root's row (and bias), each
    consumer's columns (several per channel where a conv is flattened into a Linear), the norms' weight and bias."""
    total, seen = 0, set()
    for dep, _ in group:
        module, out = dep.target.module, dep.handler.__name__ != "prune_in_channels"
        if (id(module), out) in seen:
            continue
        seen.add((id(module), out))
        if isinstance(module, LAYERS):
            total += module.weight.numel() // size + (out and module.bias is not None)
        elif out:  # a norm layer: one weight and one bias per channel
            total += sum(1 for p in module.parameters(recurse=False) if p.dim() == 1)
    return max(total, 1)


def find_unit_groups(root: nn.Module, example: Any) -> list[UnitGroup]:
    """The head and channel groups of ``root`` (see the module docstring), by name."""
    names = {m: n for n, m in root.named_modules()}
    groups = [
        UnitGroup(n, "heads", m.n_head, _head_weights(m))
        for n, m in root.named_modules()
        if is_qkv_attention(m)
    ]
    attention = {id(getattr(root.get_submodule(g.name), part)) for g in groups for part in ("qkv", "proj")}
    graph = dependency_graph(root, example)
    for module in root.modules():
        if not isinstance(module, LAYERS) or id(module) in attention:
            continue
        width = module.out_features if isinstance(module, nn.Linear) else module.out_channels
        group = graph.get_pruning_group(module, _handler(module), [0])
        if _eligible(group, module) and not any(id(dep.target.module) in attention for dep, _ in group):
            groups.append(UnitGroup(names[module], "channels", width, _channel_weights(group, width)))
    return groups


# ----- scores ----------------------------------------------------------------------------------------------
def head_scores(attention: nn.Module) -> torch.Tensor:
    """Per-head L2 norm (per element) of its q, k, v rows and its proj columns."""
    n, width = attention.n_head, attention.proj.in_features
    d = width // n
    qkv = attention.qkv.weight.detach().float().view(3, n, d, -1)
    proj = attention.proj.weight.detach().float().view(-1, n, d)
    squares = qkv.pow(2).sum((0, 2, 3)) + proj.pow(2).sum((0, 2))
    return (squares / (qkv[:, 0].numel() + proj[:, 0].numel())).sqrt()


def channel_scores(graph: Any, root: nn.Module, size: int) -> torch.Tensor:
    import torch_pruning as tp

    group = graph.get_pruning_group(root, _handler(root), list(range(size)))
    return tp.importance.GroupMagnitudeImportance(p=2, normalizer=None)(group).detach().float().cpu()


def choose(groups: list[UnitGroup], scores: dict[str, torch.Tensor], sparsity: float, scope: str) -> None:
    """Mark the units to prune, lowest scores first, units pruned before staying pruned, never a group's last
    unit: ``round(sparsity * units)`` per group (``layer``), or over all groups (``global``) each unit that brings
    the pruned parameters closer to ``sparsity`` of all the groups' parameters."""
    if scope == "layer":
        for g in groups:
            _prune_lowest(g, scores[g.name], min(round(sparsity * g.size), g.size - 1))
        return
    flat, owners = [], []
    for g in groups:
        s = scores[g.name] / scores[g.name][~g.pruned].mean().clamp(min=1e-12)
        s = s.masked_fill(g.pruned, -math.inf)
        keep_one = int(torch.argmax(s))
        flat.append(s.index_fill(0, torch.tensor([keep_one]), math.inf))
        owners += [(g, i) for i in range(g.size)]
    budget = sparsity * sum(g.size * g.weights for g in groups)
    taken = sum(int(g.pruned.sum()) * g.weights for g in groups)
    ranked = torch.cat(flat)
    for index in torch.argsort(ranked, stable=True).tolist():
        group, unit = owners[index]
        if not math.isfinite(float(ranked[index])):  # pruned before (-inf) or the group's last unit (+inf)
            continue
        if taken + group.weights / 2 <= budget:  # nearer the budget with this unit than without it
            group.pruned[unit] = True
            taken += group.weights


def _prune_lowest(group: UnitGroup, scores: torch.Tensor, count: int) -> None:
    ranked = torch.argsort(scores.masked_fill(group.pruned, -math.inf), stable=True)
    group.pruned[ranked[: max(count, int(group.pruned.sum()))]] = True


# ----- gates: pruned units feed zeros to their consumers ---------------------------------------------------
def consumer_masks(root: nn.Module, graph: Any, group: UnitGroup) -> dict[str, torch.Tensor]:
    """Per consumer layer (by name), the boolean mask over its input features that keeps the live units."""
    if group.kind == "heads":
        attention = root.get_submodule(group.name)
        d = attention.proj.in_features // attention.n_head
        return {f"{group.name}.proj": (~group.pruned).repeat_interleave(d)}
    names = {m: n for n, m in root.named_modules()}
    layer = root.get_submodule(group.name)
    pruned = group.pruned.nonzero().flatten().tolist()
    masks = {}
    for dep, idxs in graph.get_pruning_group(layer, _handler(layer), pruned or [0]):
        module = dep.target.module
        if dep.handler.__name__ == "prune_in_channels" and isinstance(module, LAYERS):
            width = module.in_features if isinstance(module, nn.Linear) else module.in_channels
            mask = torch.ones(width, dtype=torch.bool)
            if pruned:
                mask[[int(getattr(i, "idx", i)) for i in idxs]] = False
            masks[names[module]] = mask
    return masks


def _gate(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    x, mask = args[0], module.genexp_input_mask
    shape = [1] * x.dim()
    shape[-1 if isinstance(module, nn.Linear) else 1] = -1
    return (x * mask.to(x.dtype).view(shape), *args[1:])


def set_gates(root: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Install (or update) the input gates of the named consumer layers."""
    for name, mask in masks.items():
        module = root.get_submodule(name)
        device = next(module.parameters()).device
        if not hasattr(module, "genexp_input_mask"):
            module.register_buffer("genexp_input_mask", mask.to(device), persistent=False)
            module.genexp_gate = module.register_forward_pre_hook(_gate)
        else:
            module.genexp_input_mask = mask.to(device)


def clear_gates(root: nn.Module) -> None:
    for module in root.modules():
        if hasattr(module, "genexp_gate"):
            module.genexp_gate.remove()
            del module.genexp_gate, module._buffers["genexp_input_mask"]


# ----- removal ---------------------------------------------------------------------------------------------
def _keep_rows(linear: nn.Linear, rows: torch.Tensor) -> None:
    linear.weight = nn.Parameter(linear.weight.detach()[rows].clone())
    if linear.bias is not None:
        linear.bias = nn.Parameter(linear.bias.detach()[rows].clone())
    linear.out_features = int(rows.numel())


def remove_heads(attention: nn.Module, pruned: torch.Tensor) -> None:
    """Cut the pruned heads out of a fused-qkv attention: q, k, v rows and proj columns; ``n_head`` follows."""
    n, d = attention.n_head, attention.proj.in_features // attention.n_head
    keep = (~pruned).nonzero().flatten()
    within = (keep[:, None] * d + torch.arange(d)).flatten()
    _keep_rows(attention.qkv, torch.cat([part * n * d + within for part in range(3)]))
    proj = attention.proj
    proj.weight = nn.Parameter(proj.weight.detach()[:, within].clone())
    proj.in_features = int(within.numel())
    attention.n_head = int(keep.numel())


def remove_units(root: nn.Module, groups: list[UnitGroup], example: Any) -> dict[str, Any]:
    """Remove every pruned unit of ``root`` in place; returns the structure record (``n_head`` per attention)."""
    clear_gates(root)
    for g in groups:
        if g.kind == "heads" and g.pruned.any():
            remove_heads(root.get_submodule(g.name), g.pruned)
    graph = dependency_graph(root, example)
    for g in groups:
        if g.kind == "channels" and g.pruned.any():
            layer = root.get_submodule(g.name)
            graph.get_pruning_group(layer, _handler(layer), g.pruned.nonzero().flatten().tolist()).prune()
    return {
        "attributes": {
            g.name: {"n_head": root.get_submodule(g.name).n_head} for g in groups if g.kind == "heads"
        }
    }


class UnitPruner:
    """The unit-removing side of ``PruningCallback(method="ln_structured", dim=None)``: groups, gates, removal.

    Args:
        scope: ``layer`` (each group to the scheduled fraction) or ``global`` (one ranking over all units).
    """

    def __init__(self, scope: str = "layer") -> None:
        self.scope = scope
        self.groups: list[UnitGroup] = []
        self.removed = False  # the network is already the smaller one (a resumed, finished run)
        self._graph: Any = None
        self.root: nn.Module | None = None
        self.mirrors: list[nn.Module] = []
        self._restored: dict[str, torch.Tensor] | None = None

    def setup(self, root: nn.Module, example: Any, mirrors: list[nn.Module] | tuple[()] = ()) -> None:
        """Find ``root``'s unit groups; ``mirrors`` (the network an EMA ``root`` follows) get the same gates and
        removals."""
        self.root, self.mirrors = root, list(mirrors)
        self.groups = find_unit_groups(root, example)
        self._graph = dependency_graph(root, example)

    def masks(self, sparsity: float) -> dict[str, torch.Tensor]:
        """The pruned units (True = pruned) per group at ``sparsity``; earlier choices stay."""
        if self.removed:
            return {g.name: g.pruned.clone() for g in self.groups}
        scores = {
            g.name: head_scores(self.root.get_submodule(g.name))
            if g.kind == "heads"
            else channel_scores(self._graph, self.root.get_submodule(g.name), g.size)
            for g in self.groups
        }
        choose(self.groups, scores, sparsity, self.scope)
        return {g.name: g.pruned.clone() for g in self.groups}

    def apply(self, pruned: dict[str, torch.Tensor]) -> None:
        """Set each group's pruned units and gate them off."""
        for g in self.groups:
            if g.name in pruned:
                g.pruned = pruned[g.name].bool().cpu().clone()
            masks = consumer_masks(self.root, self._graph, g)
            for net in (self.root, *self.mirrors):
                set_gates(net, masks)

    def restore(self) -> None:
        if self._restored is not None and not self.removed:
            self.apply(self._restored)
        self._restored = None

    def fraction(self) -> float:
        """The parameters of the pruned units / those of all units."""
        total = sum(g.size * g.weights for g in self.groups)
        return sum(int(g.pruned.sum()) * g.weights for g in self.groups) / total if total else 0.0

    def remove(self, example: Any) -> dict[str, Any]:
        for mirror in self.mirrors:
            remove_units(mirror, self.groups, example)
        record = remove_units(self.root, self.groups, example)
        self.removed = True
        return record

    def report(self) -> dict[str, Any]:
        return {
            g.name: {
                "kind": g.kind,
                "units": g.size,
                "pruned": int(g.pruned.sum()),
                "weights_per_unit": g.weights,
            }
            for g in self.groups
        }

    def state_dict(self) -> dict[str, Any]:
        return {"units": {g.name: g.pruned.clone() for g in self.groups}, "removed": self.removed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.removed = bool(state.get("removed", False))
        self._restored = dict(state.get("units", {}))
