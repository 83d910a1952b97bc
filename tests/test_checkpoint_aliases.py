"""Runs saved before a module moved still load: the alias table renames the old ``_target_``s of their config."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from genexp.checkpoints.aliases import MOVED_CALLABLES, MOVED_MODULES, new_path, renamed
from genexp.checkpoints.rebuild import load_any
from genexp.models.base import CONFIG_KEY
from genexp.runtime.build import build_datamodule, build_model


def test_old_paths_name_their_new_home() -> None:
    assert new_path("genexp.lr_schedules.warmup_cosine") == "genexp.optim.schedules.warmup_cosine"
    assert new_path("genexp.nan_guard.NonFiniteGuard") == "genexp.callbacks.nan_guard.NonFiniteGuard"
    assert new_path("genexp.models.vae.VAE") == "genexp.models.vae.VAE"  # not moved: unchanged
    assert new_path("genexp.optim.optimizers.adamw8bit") == "genexp.optim.optimizers.adamw8bit"
    nested = {"a": [{"_target_": "genexp.metrics.cost.TrainingCost", "x": 1}], "_target_": "torch.optim.Adam"}
    assert renamed(nested) == {
        "a": [{"_target_": "genexp.callbacks.training_cost.TrainingCost", "x": 1}],
        "_target_": "torch.optim.Adam",
    }


@pytest.mark.parametrize("old", sorted({*MOVED_CALLABLES, *MOVED_MODULES}))
def test_every_new_path_imports(old: str) -> None:
    import importlib

    new = MOVED_CALLABLES.get(old) or MOVED_MODULES[old]
    if old in MOVED_CALLABLES:
        module, _, name = new.rpartition(".")
        assert hasattr(importlib.import_module(module), name), new
    else:
        importlib.import_module(new)


def test_a_checkpoint_naming_moved_targets_loads(compose_train, tmp_path: Path) -> None:
    cfg = compose_train(["model=vae", "scheduler=warmup_cosine", "model.hidden_channels=8"])
    datamodule = build_datamodule(cfg)
    model = build_model(cfg, datamodule)
    config = OmegaConf.to_container(cfg, resolve=True)
    config["scheduler"]["scheduler"]["_target_"] = (
        "genexp.lr_schedules.warmup_cosine"  # as saved before the move
    )
    config["callbacks"]["nan_guard"]["_target_"] = "genexp.nan_guard.NonFiniteGuard"
    path = tmp_path / "old.ckpt"
    torch.save({CONFIG_KEY: config, "state_dict": model.state_dict(), "epoch": 0, "global_step": 0}, path)

    loaded = load_any(path)
    assert loaded.config["scheduler"]["scheduler"]["_target_"] == "genexp.optim.schedules.warmup_cosine"
    assert loaded.config["callbacks"]["nan_guard"]["_target_"] == "genexp.callbacks.nan_guard.NonFiniteGuard"
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor), name
