"""The one door back from disk: a saved run, checkpoint or artifact becomes a model (and its data module).

Every loader goes through here (``genexp-eval``, the report, a distillation teacher, the torch artifact,
the benchmarks), so there is one trust check: a config read from disk is data, and ``saved_config`` allows
it to instantiate only callables under ``TRUSTED_TARGETS`` (genexp, ``torch.optim``, Lightning), for every
``_target_`` in its data/model/optimizer/scheduler groups and in an artifact's ``model_kwargs``, before
anything is built. Files load with ``weights_only=True``.

What a path is, is decided by what it holds (``load_any``):

- a folder is a **run folder** (``genexp.runtime.run_folder.is_run_folder``): its quantized artifact
  when it has one, else ``checkpoints/last.ckpt`` (the model as the run ended), else its newest checkpoint;
- a ``.ckpt`` file is a **checkpoint** (its genexp run config inside);
- a ``quantized/`` folder or its ``deployable.pt`` is an **artifact** (``genexp.deploy.artifact``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf
from torch import nn

from genexp.checkpoints.aliases import renamed
from genexp.checkpoints.torch_file import load_torch_file
from genexp.deploy.artifact import ARTIFACT_DIR, artifact_file, install_artifact, is_artifact, read_artifact
from genexp.models.base import CONFIG_KEY, GenerativeModule
from genexp.runtime.build import build_datamodule, build_model, instantiate
from genexp.runtime.errors import CheckpointError, ConfigError, GenexpError, first_line
from genexp.runtime.run_folder import find_checkpoint, is_run_folder, run_folder_of

# A config from disk is data: only these callables may be instantiated from it (plus what the user trusts).
TRUSTED_TARGETS = ("genexp.", "torch.optim.", "lightning.pytorch.")
TRUST_ENV = "GENEXP_TRUST"  # comma-separated extra prefixes, e.g. GENEXP_TRUST=mypkg.,otherpkg.models.
_trusted_by_config: tuple[str, ...] = ()
REBUILT_GROUPS = ("data", "model", "optimizer", "scheduler")


# ----- reading and trusting ------------------------------------------------------------------------
def trust(prefixes: Any, key: str = "trust") -> tuple[str, ...]:
    """Also trust the module prefixes of the run's ``trust`` key (e.g. ``trust=[mypkg.]``); returns them all.

    Entry points call this once with ``cfg.trust``; ``GENEXP_TRUST`` adds more from the environment.
    """
    global _trusted_by_config
    values = [] if prefixes is None else ([prefixes] if isinstance(prefixes, str) else list(prefixes))
    for value in values:
        if (
            not isinstance(value, str)
            or not value.strip(".")
            or not all(p.isidentifier() for p in value.strip(".").split("."))
        ):
            raise ConfigError(key, prefixes, "a list of module prefixes to trust, e.g. trust=[mypkg.]")
    _trusted_by_config = tuple(values)
    return trusted_targets()


def trusted_targets() -> tuple[str, ...]:
    """The callables a config from disk may name: genexp, torch.optim, Lightning, ``trust`` and ``GENEXP_TRUST``."""
    from_env = tuple(p.strip() for p in os.environ.get(TRUST_ENV, "").split(",") if p.strip())
    return TRUSTED_TARGETS + _trusted_by_config + from_env


def load_checkpoint(path: str | Path, key: str = "ckpt_path") -> dict[str, Any]:
    """Load a genexp checkpoint on the CPU with ``weights_only=True``.

    Raises CheckpointError (naming ``key`` and the path) when the file is missing, truncated,
    corrupt, or was not written by genexp-train.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"{key}={path}: no such checkpoint file (expected a .ckpt written by genexp-train)"
        )
    checkpoint = load_torch_file(path, key, "checkpoint (corrupt or truncated?)")
    if not isinstance(checkpoint, dict) or CONFIG_KEY not in checkpoint or "state_dict" not in checkpoint:
        raise CheckpointError(
            f"{key}={path}: not a genexp checkpoint (no saved run config); "
            "expected a .ckpt from a genexp-train run folder"
        )
    return with_new_paths(checkpoint)  # runs saved before a module moved load with its new paths


def saved_config(checkpoint: dict[str, Any], path: str | Path, key: str = "ckpt_path") -> DictConfig:
    """The run config stored in ``checkpoint``, checked before anything in it is instantiated.

    Every ``_target_`` under data/model/optimizer/scheduler must name a genexp, torch.optim or Lightning callable,
    so a crafted file cannot make genexp import and call arbitrary code.
    """
    cfg = OmegaConf.create(checkpoint[CONFIG_KEY])
    missing = [group for group in ("data", "model", "optimizer") if group not in cfg]
    if missing:
        raise CheckpointError(
            f"{key}={path}: its saved config lacks {', '.join(missing)}; not a genexp-train run"
        )
    for group in REBUILT_GROUPS:
        check_trusted(OmegaConf.to_container(cfg.get(group) or {}, resolve=False), path, key, group)
    return cfg


def with_new_paths(saved: dict[str, Any]) -> dict[str, Any]:
    """``saved`` (a checkpoint or artifact) with the moved ``_target_``s of its config and model_kwargs renamed."""
    return {
        key: renamed(value) if key in (CONFIG_KEY, "model_kwargs") else value for key, value in saved.items()
    }


def check_trusted(node: Any, path: str | Path, key: str, where: str) -> None:
    """Raise CheckpointError when ``node`` (a config read from ``path``) names an untrusted ``_target_``."""
    trusted = trusted_targets()
    for target in _targets(node):
        if not isinstance(target, str) or not target.startswith(trusted):
            raise CheckpointError(
                f"{key}={path}: saved config names _target_={target!r} under {where}; expected a callable "
                f"from {', '.join(trusted)} (only if it is your own package: trust=[yourpkg.] or {TRUST_ENV}=yourpkg.)"
            )


def _targets(node: Any) -> list[Any]:
    if isinstance(node, dict):
        found = [node["_target_"]] if "_target_" in node else []
        return found + [t for value in node.values() for t in _targets(value)]
    if isinstance(node, list):
        return [t for value in node for t in _targets(value)]
    return []


def check_resumable(
    checkpoint: dict[str, Any], model: nn.Module, path: str | Path, key: str = "ckpt_path", hint: str = ""
) -> None:
    """Raise CheckpointError when ``checkpoint`` holds another model family, or weights of other shapes, than
    the ``model`` this run built (resuming needs the run's own model and data settings)."""
    saved = str((checkpoint.get(CONFIG_KEY) or {}).get("model", {}).get("_target_", "?"))
    ours = f"{type(model).__module__}.{type(model).__qualname__}"
    if saved.rsplit(".", 1)[-1] != type(model).__qualname__:
        raise CheckpointError(
            f"{key}={path}: holds a {saved.rsplit('.', 1)[-1]} ({saved}) but this run builds a "
            f"{type(model).__qualname__} ({ours}); {hint or 'resume with the overrides the checkpoint was trained with'}"
        )
    state = model.state_dict()
    for name, tensor in checkpoint["state_dict"].items():
        if name in state and hasattr(tensor, "shape") and tuple(tensor.shape) != tuple(state[name].shape):
            raise CheckpointError(
                f"{key}={path}: its {name} has shape {tuple(tensor.shape)}, this run's model "
                f"{tuple(state[name].shape)}; {hint or 'resume with the model and data settings it was trained with'}"
            )


def run_checkpoint(path: Path, key: str) -> Path:
    """``path`` itself, or for a genexp-train run folder its ``last.ckpt`` (else its newest checkpoint)."""
    if not path.is_dir():
        return path
    if not is_run_folder(path):
        raise CheckpointError(
            f"{key}={path}: not a genexp run folder (expected .hydra/config.yaml and checkpoints/ "
            "written by genexp-train)"
        )
    return find_checkpoint(path, key)


def load_init(path: str | Path, key: str = "init_from") -> dict[str, Any]:
    """The checkpoint a fresh run starts from (``init_from``): a run folder's ``last.ckpt`` (else its newest
    checkpoint) or a ``.ckpt`` file, loaded with the same checks and one-line errors as ``ckpt_path``."""
    path = run_checkpoint(Path(path), key)
    checkpoint = load_checkpoint(path, key=key)
    saved_config(checkpoint, path, key=key)  # the trust check, as for every config read from disk
    return checkpoint


def init_weights(
    model: GenerativeModule, checkpoint: dict[str, Any], path: str | Path, key: str = "init_from"
) -> None:
    """Give a freshly built ``model`` the weights of ``checkpoint`` (its structured-pruned widths included).

    Only the weights move: the optimizer, epochs and schedule of the new run start fresh.
    """
    model.conform_to(checkpoint)
    check_resumable(checkpoint, model, path, key, hint="start from a run of the same model and data settings")
    load_weights(model, checkpoint, path, key, "this run's model")


def load_weights(
    model: GenerativeModule, checkpoint: dict[str, Any], path: str | Path, key: str, target: str
) -> None:
    """``checkpoint``'s weights into ``model`` (already at its widths); a mismatch is one line naming ``key``."""
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as err:
        raise CheckpointError(f"{key}={path}: weights do not fit {target}: {first_line(err)}") from err


# ----- rebuilding ------------------------------------------------------------------------------------
@dataclass
class Loaded:
    """A rebuilt model: what was loaded, from where, and the pieces to test it."""

    kind: str  # "checkpoint", "artifact" or "onnx"
    path: Path  # the file that was loaded
    run_dir: Path | None  # the genexp-train run folder it belongs to, if any
    config: dict[str, Any]  # the run's composed config (as saved in the checkpoint)
    model: GenerativeModule
    datamodule: L.LightningDataModule
    info: dict[str, float] = field(default_factory=dict)  # checkpoint epoch and step
    backend: str = "torch"  # what computes the deployable: "torch" or "onnxruntime"
    precision: str = "fp32"  # an ONNX graph's: "fp32" or "int8"
    session: Any = None  # the ONNX Runtime session of an .onnx target
    reference: GenerativeModule | None = None  # the torch model an .onnx target was exported from


def rebuild(
    config: dict[str, Any], saved: dict[str, Any], path: Path, key: str, data: dict[str, Any] | None = None
) -> tuple[GenerativeModule, L.LightningDataModule]:
    """The (untrained) model and data module of a saved run ``config``, after the trust check.

    ``saved`` holds the data module's state under its class name (a GPT's vocabulary), so a teacher or an
    evaluation never needs the training text; ``data`` overrides merge onto the saved data config.
    """
    trusted = saved_config({CONFIG_KEY: config}, path, key=key)
    run_cfg = OmegaConf.merge(trusted, {"data": data or {}})
    assert isinstance(run_cfg, DictConfig)
    try:
        datamodule = build_datamodule(run_cfg)
        state_key = type(datamodule).__qualname__
        if state_key in saved:
            datamodule.load_state_dict(saved[state_key])
        model = build_model(run_cfg, datamodule)
    except GenexpError as err:
        raise GenexpError(f"{key}={path}: the saved config does not build: {err}") from err
    model.genexp_config = config
    return model, datamodule


def load_model(path: str | Path, key: str = "ckpt_path", data: dict[str, Any] | None = None) -> Loaded:
    """A checkpoint's model with its weights, and its data module."""
    path = Path(path)
    checkpoint = load_checkpoint(path, key=key)
    config = checkpoint[CONFIG_KEY]
    model, datamodule = rebuild(config, checkpoint, path, key, data)
    model.conform_to(checkpoint)  # a structured-pruned run: its smaller widths
    load_weights(model, checkpoint, path, key, "the saved config")
    info = {
        "epoch": float(checkpoint.get("epoch", -1)),
        "global_step": float(checkpoint.get("global_step", -1)),
    }
    return Loaded("checkpoint", path, run_folder_of(path.parent), config, model, datamodule, info)


def load_artifact(path: str | Path, key: str = "ckpt_path", data: dict[str, Any] | None = None) -> Loaded:
    """A ``compression=[quantize]`` artifact: the float model rebuilt from its saved config, then the
    quantized deployable installed in it."""
    path = Path(path)
    artifact = with_new_paths(read_artifact(path, key=key))
    config = artifact[CONFIG_KEY]
    check_trusted(artifact.get("model_kwargs") or {}, artifact_file(path), key, "model_kwargs")
    model, datamodule = rebuild(config, artifact.get("datamodule") or {}, artifact_file(path), key, data)
    install_artifact(model, artifact)
    info = {"epoch": float(artifact.get("epoch", -1)), "global_step": float(artifact.get("global_step", -1))}
    folder = path if path.is_dir() else path.parent
    return Loaded("artifact", path, run_folder_of(folder.parent), config, model, datamodule, info)


def load_deployable(path: str | Path) -> nn.Module:
    """Load a quantized deployable written by ``compression=[quantize]`` (a ``<run>/quantized`` folder or its
    ``deployable.pt``) in any process: same outputs as at save time, in eval mode. Only the model is built
    (sized by the artifact's saved ``model_kwargs``), after the same trust check as every loader.

    Example::

        from genexp.checkpoints.rebuild import load_deployable
        net = load_deployable("outputs/train/runs/<run>/quantized")
        logits = net(token_ids)
    """
    artifact = with_new_paths(read_artifact(path, key="path"))
    trusted = saved_config(artifact, artifact_file(path), key="path")
    check_trusted(artifact.get("model_kwargs") or {}, artifact_file(path), "path", "model_kwargs")
    model_cfg = OmegaConf.to_container(trusted.model, resolve=True)
    assert isinstance(model_cfg, dict)
    if "compile" in model_cfg:
        model_cfg["compile"] = False
    model = instantiate(OmegaConf.create(model_cfg), "model", **artifact["model_kwargs"])
    return install_artifact(model, {**artifact, "context_state_dict": {}})


def load_any(path: str | Path, key: str = "target", data: dict[str, Any] | None = None) -> Loaded:
    """Rebuild the model behind ``path``: a run folder, a ``.ckpt`` checkpoint or a quantized artifact.

    Args:
        path: what to load.
        key: the config key the path came from, named in error messages.
        data: overrides merged onto the saved data config (e.g. ``{"batch_size": 256}``).

    Raises:
        GenexpError: the path is missing, is not a genexp run/checkpoint/artifact, or is corrupt.
    """
    path = Path(path)
    if is_artifact(path):
        return load_artifact(path, key, data)
    if path.is_dir():
        if not is_run_folder(path):
            raise GenexpError(
                f"{key}={path}: not a genexp run folder (expected .hydra/config.yaml and checkpoints/ "
                "written by genexp-train)"
            )
        if is_artifact(path / ARTIFACT_DIR):
            return load_artifact(path / ARTIFACT_DIR, key, data)
        loaded = load_model(find_checkpoint(path, key), key, data)
        loaded.run_dir = path
        return loaded
    if not path.exists():
        raise GenexpError(
            f"{key}={path}: no such file or folder (expected a run folder, a .ckpt or an artifact)"
        )
    return load_model(path, key, data)
