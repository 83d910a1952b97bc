"""``load_any``: rebuild a model from a checkpoint, a run folder or a quantized artifact.

What a path is, is decided by what it holds:

- a folder is a **run folder** (``genexp-train`` wrote ``.hydra/config.yaml`` there): its quantized artifact
  when it has one, else ``checkpoints/last.ckpt`` (the model as the run ended, the one ``compression.json``
  describes), else its newest checkpoint;
- a ``.ckpt`` file is a **checkpoint** (``genexp.checkpoints.load_checkpoint``: genexp config inside);
- any other file is a **quantized artifact**, loaded by ``genexp.compression.quantize.load_deployable``
  when that module is installed; the rest of the model (config, vocabulary) comes from the checkpoint of the
  run folder the artifact sits in, and the artifact's module replaces ``deployable()``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf

from genexp.build import build_datamodule, build_model
from genexp.checkpoints import load_checkpoint, saved_config
from genexp.errors import CheckpointError, GenexpError, first_line
from genexp.models.base import CONFIG_KEY, GenerativeModule

CHECKPOINT_SUFFIX = ".ckpt"
QUANTIZED_FOLDER = "quantized"  # where compression=[quantize] writes its artifact inside a run folder


@dataclass
class Loaded:
    """A model rebuilt for measuring: what was loaded, from where, and the pieces to test it."""

    kind: str  # "checkpoint" or "artifact"
    path: Path  # the file that was loaded
    run_dir: Path | None  # the genexp-train run folder it belongs to, if any
    config: dict[str, Any]  # the run's composed config (as saved in the checkpoint)
    model: GenerativeModule
    datamodule: L.LightningDataModule
    info: dict[str, float] = field(default_factory=dict)  # checkpoint epoch and step


def is_run_folder(path: Path) -> bool:
    """True for a ``genexp-train`` run folder (its ``.hydra/config.yaml`` composes a model)."""
    config = path / ".hydra" / "config.yaml"
    if not config.is_file():
        return False
    try:
        return "model" in (OmegaConf.load(config) or {})
    except Exception:
        return True  # a run folder whose config is damaged: reported when it is loaded


def run_folder_of(path: Path) -> Path | None:
    """The run folder holding ``path`` (itself, or a parent up to two levels up), if any."""
    for candidate in (path, *list(path.parents)[:3]):
        if candidate.is_dir() and is_run_folder(candidate):
            return candidate
    return None


def find_artifact(run_dir: Path) -> Path | None:
    """The quantized artifact folder of a run (``<run>/quantized``), if any."""
    from genexp.compression.quantize import is_artifact

    folder = run_dir / QUANTIZED_FOLDER
    return folder if is_artifact(folder) else None


def find_checkpoint(run_dir: Path, key: str) -> Path:
    """``checkpoints/last.ckpt``, else the newest checkpoint of the run folder."""
    folder = run_dir / "checkpoints"
    if (folder / "last.ckpt").is_file():
        return folder / "last.ckpt"
    found = (
        sorted(folder.glob(f"*{CHECKPOINT_SUFFIX}"), key=lambda p: p.stat().st_mtime)
        if folder.is_dir()
        else []
    )
    if not found:
        raise CheckpointError(
            f"{key}={run_dir}: no checkpoint in {folder} (the run may have failed before its first epoch ended)"
        )
    return found[-1]


def load_any(path: str | Path, key: str = "target", data: dict[str, Any] | None = None) -> Loaded:
    """Rebuild the model behind ``path``: a run folder, a ``.ckpt`` checkpoint or a quantized artifact.

    Args:
        path: what to load.
        key: the config key the path came from, named in error messages.
        data: overrides merged onto the saved data config (e.g. ``{"batch_size": 256}``).

    Raises:
        GenexpError: the path is missing, is not a genexp run/checkpoint/artifact, or is corrupt.
    """
    from genexp.compression.quantize import is_artifact

    path = Path(path)
    if is_artifact(path):
        return _load_artifact(path, key, data)
    if path.is_dir():
        if not is_run_folder(path):
            raise GenexpError(
                f"{key}={path}: not a genexp run folder (expected .hydra/config.yaml and checkpoints/ "
                "written by genexp-train)"
            )
        artifact = find_artifact(path)
        if artifact is not None:
            return _load_artifact(artifact, key, data)
        return _load_checkpoint(find_checkpoint(path, key), key, data, run_dir=path)
    if not path.exists():
        raise GenexpError(
            f"{key}={path}: no such file or folder (expected a run folder, a .ckpt or an artifact)"
        )
    return _load_checkpoint(path, key, data, run_dir=run_folder_of(path.parent))


def _load_checkpoint(path: Path, key: str, data: dict[str, Any] | None, run_dir: Path | None) -> Loaded:
    checkpoint = load_checkpoint(path, key=key)
    config = checkpoint[CONFIG_KEY]
    model, datamodule = _rebuild(config, checkpoint, data, f"{key}={path}", path)
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as err:
        raise CheckpointError(
            f"{key}={path}: weights do not fit the saved config: {first_line(err)}"
        ) from err
    info = {
        "epoch": float(checkpoint.get("epoch", -1)),
        "global_step": float(checkpoint.get("global_step", -1)),
    }
    return Loaded("checkpoint", path, run_dir, config, model, datamodule, info)


def _load_artifact(path: Path, key: str, data: dict[str, Any] | None) -> Loaded:
    """A ``compression=[quantize]`` artifact folder: rebuild the float model from its saved config, then
    install the quantized deployable (``genexp.compression.quantize``)."""
    from genexp.compression.quantize import install_artifact, read_artifact

    artifact = read_artifact(path, key=key)
    config = artifact[CONFIG_KEY]
    model, datamodule = _rebuild(config, artifact.get("datamodule") or {}, data, f"{key}={path}", path)
    install_artifact(model, artifact)
    info = {"epoch": float(artifact.get("epoch", -1)), "global_step": float(artifact.get("global_step", -1))}
    folder = path if path.is_dir() else path.parent
    return Loaded("artifact", path, run_folder_of(folder.parent), config, model, datamodule, info)


def _rebuild(
    config: dict[str, Any], checkpoint: dict[str, Any], data: dict[str, Any] | None, where: str, path: Path
) -> tuple[GenerativeModule, L.LightningDataModule]:
    saved = saved_config({CONFIG_KEY: config}, path, key=where.split("=", 1)[0])  # trusted _target_s only
    run_cfg = OmegaConf.merge(saved, {"data": data or {}})
    assert isinstance(run_cfg, DictConfig)
    try:
        datamodule = build_datamodule(run_cfg)
        state_key = type(datamodule).__qualname__
        if state_key in checkpoint:
            datamodule.load_state_dict(checkpoint[state_key])
        model = build_model(run_cfg, datamodule)
    except GenexpError as err:
        raise GenexpError(f"{where}: the saved config does not build: {err}") from err
    model.genexp_config = config
    return model, datamodule
