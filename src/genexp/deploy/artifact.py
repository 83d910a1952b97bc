"""The torch artifact a quantized run ships: ``<run>/quantized/``.

- ``deployable.pt``: ``torch.save`` of a dict: ``format``, ``genexp_config`` (the run config),
  ``model_kwargs`` (what the data module told the model), the data module state, ``attribute`` (where
  the deployable sits in the LightningModule), ``recipe`` (mode, scheme, dtype, per-layer ``how``) and
  ``state_dict`` (the quantized deployable, torchao ``Int8Tensor`` weights and int8 conv buffers, in
  ``sparse_format.sparse_state_dict``'s format: a pruned layer's int8 zeros cost one bit each, so pruning
  and quantization compound on disk);
- ``context.pt``: the LightningModule's other weights (a GAN's discriminator), only for ``genexp-eval``;
- ``recipe.json``: the same recipe and config, human-readable.

``read_artifact`` is the one reader (``weights_only=True``); ``install_artifact`` puts its deployable into a
model that ``genexp.checkpoints.rebuild`` built from the saved config (after the trust check), re-applying the recipe's
module swaps (``layers.restructure``) and assigning the state dict, which gives the outputs of save time.
``genexp.checkpoints.rebuild.load_deployable(path)`` does both in any process.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from genexp.checkpoints.resize import STRUCTURE_KEY, conform
from genexp.checkpoints.torch_file import load_torch_file
from genexp.deploy.layers import restructure
from genexp.deploy.sparse_format import deployable_state_dict, load_sparse_state_dict, sparse_state_dict
from genexp.runtime.errors import CheckpointError, ConfigError, first_line
from genexp.runtime.run_folder import write_json

ARTIFACT_DIR, ARTIFACT_FILE, CONTEXT_FILE, RECIPE_FILE = (
    "quantized",
    "deployable.pt",
    "context.pt",
    "recipe.json",
)
FORMAT = "genexp-deployable/2"  # /2: state_dict in the sparse bitmask format
READABLE_FORMATS = ("genexp-deployable/1", FORMAT)


def attribute_of(pl_module: nn.Module, deployable: nn.Module) -> str:
    """The submodule name of ``deployable`` inside ``pl_module`` ("" for the module itself)."""
    for name, module in pl_module.named_modules():
        if module is deployable:
            return name
    raise ConfigError(
        "compression.quantize", type(deployable).__name__, "a deployable() that is a submodule of the model"
    )


def save_deployable(
    folder: Path,
    pl_module: nn.Module,
    quantized: nn.Module,
    recipe: dict[str, Any],
    trainer: Any = None,
) -> Path:
    """Write ``deployable.pt``, ``context.pt`` and ``recipe.json`` into ``folder``; returns ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    attribute = attribute_of(pl_module, pl_module.deployable())
    datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
    model_kwargs = datamodule.model_kwargs() if hasattr(datamodule, "model_kwargs") else {}
    data_state = {type(datamodule).__qualname__: datamodule.state_dict()} if datamodule is not None else {}
    artifact = {
        "format": FORMAT,
        "genexp_config": pl_module.genexp_config,
        "model_kwargs": {k: list(v) if isinstance(v, tuple) else v for k, v in model_kwargs.items()},
        "datamodule": data_state,
        "attribute": attribute,
        "recipe": recipe,
        "epoch": getattr(trainer, "current_epoch", -1),
        "global_step": getattr(trainer, "global_step", -1),
        "state_dict": sparse_state_dict(deployable_state_dict(quantized)),  # sorted keys, as measure() counts
        STRUCTURE_KEY: getattr(pl_module, STRUCTURE_KEY, None),  # structured pruning's smaller widths
    }
    torch.save(artifact, folder / ARTIFACT_FILE)
    prefix = f"{attribute}." if attribute else ""
    context = {
        k: v.detach().cpu()
        for k, v in pl_module.state_dict().items()
        if not (attribute and k.startswith(prefix))
    }
    torch.save(context if attribute else {}, folder / CONTEXT_FILE)
    readable = {k: v for k, v in artifact.items() if k not in ("state_dict", "datamodule")}
    readable["load"] = "genexp.checkpoints.rebuild.load_deployable(path) or genexp-eval target=<this folder>"
    write_json(folder / RECIPE_FILE, json.loads(json.dumps(readable, default=str)))
    return folder


def artifact_file(path: str | Path) -> Path:
    """The ``deployable.pt`` of an artifact folder (or the file itself)."""
    path = Path(path)
    return path / ARTIFACT_FILE if path.is_dir() else path


def is_artifact(path: str | Path) -> bool:
    """True when ``path`` is a deployable artifact folder or its ``deployable.pt``."""
    path = Path(path)
    return (path.is_dir() and (path / ARTIFACT_FILE).is_file()) or (path.name == ARTIFACT_FILE)


def read_artifact(path: str | Path, key: str = "ckpt_path") -> dict[str, Any]:
    """The artifact dict of a folder (or its ``deployable.pt``), loaded with ``weights_only=True``.

    Raises CheckpointError naming ``key`` and the path when it is missing or unreadable.
    """
    import torchao  # noqa: F401  (registers its tensor subclasses as safe globals for weights_only)

    path = Path(path)
    file = artifact_file(path)
    if not file.is_file():
        raise CheckpointError(
            f"{key}={path}: no {ARTIFACT_FILE} (expected a quantized/ folder written by compression=[quantize])"
        )
    artifact = load_torch_file(file, key, "deployable artifact")
    if not isinstance(artifact, dict) or artifact.get("format") not in READABLE_FORMATS:
        raise CheckpointError(f"{key}={file}: not a genexp deployable artifact (format {FORMAT})")
    context = file.parent / CONTEXT_FILE
    artifact["where"] = f"{key}={file}"  # for error messages
    artifact["context_state_dict"] = (
        load_torch_file(context, key, "artifact context") if context.is_file() else {}
    )
    return artifact


def install_artifact(pl_module: nn.Module, artifact: dict[str, Any]) -> nn.Module:
    """Put the artifact's quantized deployable into a freshly built ``pl_module``; returns the deployable."""
    attribute = artifact["attribute"]
    if artifact.get("context_state_dict"):
        pl_module.load_state_dict(artifact["context_state_dict"], strict=False)
    deployable = (
        restructure(pl_module.get_submodule(attribute), artifact["recipe"]) if attribute else pl_module
    )
    try:
        state = load_sparse_state_dict(artifact["state_dict"])
        prefix = f"{attribute}." if attribute else ""
        conform(pl_module, {prefix + k: v for k, v in state.items()}, artifact.get(STRUCTURE_KEY))
        deployable.load_state_dict(state, assign=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        where = artifact.get("where", "artifact")
        raise CheckpointError(f"{where}: its state_dict does not load: {first_line(err)}") from err
    for p in deployable.parameters():
        p.requires_grad_(False)
    return deployable.eval()
