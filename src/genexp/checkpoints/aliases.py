"""Old dotted paths of moved genexp callables, so that runs saved before a move still load.

A checkpoint or artifact stores its composed run config, ``_target_``s included. When a module moves (issue 27
put the loose top-level modules into packages), ``renamed`` rewrites the old paths of a config read from disk to
the new ones before the trust check and instantiation; nothing else changes. Add a line here whenever a class
or function that a config may name moves.
"""

from __future__ import annotations

from typing import Any

# old module -> new module (every callable of the module moved with it)
MOVED_MODULES = {
    "genexp.optim": "genexp.optim.optimizers",
    "genexp.lr_schedules": "genexp.optim.schedules",
    "genexp.nan_guard": "genexp.callbacks.nan_guard",
    "genexp.metrics.cost": "genexp.callbacks.training_cost",
    "genexp.metrics.callback": "genexp.callbacks.sample_quality",
    "genexp.report.sweep_callback": "genexp.callbacks.sweep_comparison",
    "genexp.onnx_families": "genexp.exporters.registry",
    "genexp.onnx_diffusion": "genexp.exporters.diffusion",
    "genexp.startup": "genexp.runtime.startup",
    "genexp.build": "genexp.runtime.build",
    "genexp.distributed": "genexp.runtime.distributed",
    "genexp.run_folder": "genexp.runtime.run_folder",
    "genexp.errors": "genexp.runtime.errors",
    "genexp.checks": "genexp.checks.values",
    "genexp.validation": "genexp.checks.run",
    "genexp.rebuild": "genexp.checkpoints.rebuild",
    "genexp.resize": "genexp.checkpoints.resize",
    "genexp.visual": "genexp.models.image_grid",
}

# old dotted path -> new dotted path, for callables that left a module which stayed
MOVED_CALLABLES = {
    **{f"genexp.models.gpt.{n}": f"genexp.models.transformer.{n}" for n in ("Transformer", "Block", "MLP")},
    "genexp.models.gpt.CausalSelfAttention": "genexp.models.transformer.CausalSelfAttention",
    **{f"genexp.models.gan.{n}": f"genexp.models.dcgan.{n}" for n in ("Generator", "Discriminator")},
    **{f"genexp.models.vae.{n}": f"genexp.models.vae_net.{n}" for n in ("VAENet", "Encoder", "Decoder")},
}


def new_path(target: str) -> str:
    """The current dotted path of ``target`` (itself when it did not move)."""
    if target in MOVED_CALLABLES:
        return MOVED_CALLABLES[target]
    module, _, name = target.rpartition(".")
    return f"{MOVED_MODULES[module]}.{name}" if module in MOVED_MODULES else target


def renamed(node: Any) -> Any:
    """A copy of a plain config (dicts, lists, values) with every moved ``_target_`` given its new path."""
    if isinstance(node, dict):
        copy = {key: renamed(value) for key, value in node.items()}
        if isinstance(copy.get("_target_"), str):
            copy["_target_"] = new_path(copy["_target_"])
        return copy
    if isinstance(node, list):
        return [renamed(value) for value in node]
    return node
