"""Checks on the composed config that no single constructor owns; each names the key it rejects.

Constructors check their own arguments (``model.*``, ``data.*``, ``compression.*``); this module checks the
run-level keys (``trainer.*``, ``seed``, ``ckpt_path``) before anything is built.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from genexp.errors import ConfigError

PRECISIONS = (
    "32-true",
    "32",
    "bf16-mixed",
    "bf16-true",
    "16-mixed",
    "16-true",
    "64-true",
    "transformer-engine",
)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(cfg: DictConfig, key: str, minimum: int, allow_none: bool = False) -> None:
    value = OmegaConf.select(cfg, key)
    if value is None and allow_none:
        return
    if not _is_int(value) or value < minimum:
        raise ConfigError(key, value, f"an integer >= {minimum}" + (" or null" if allow_none else ""))


def check_trainer(cfg: DictConfig) -> None:
    trainer = cfg.get("trainer")
    if trainer is None:
        return
    check_int(cfg, "trainer.max_epochs", -1, allow_none=True)
    check_int(cfg, "trainer.min_epochs", 0, allow_none=True)
    check_int(cfg, "trainer.check_val_every_n_epoch", 1, allow_none=True)
    check_int(cfg, "trainer.log_every_n_steps", 1, allow_none=True)
    if "max_steps" in trainer:
        check_int(cfg, "trainer.max_steps", -1, allow_none=True)
    precision = str(trainer.get("precision", "32-true"))
    if precision not in PRECISIONS:
        raise ConfigError("trainer.precision", precision, f"one of {list(PRECISIONS)}")
    clip = trainer.get("gradient_clip_val")
    if clip is not None and (not isinstance(clip, (int, float)) or clip < 0):
        raise ConfigError("trainer.gradient_clip_val", clip, "a number >= 0 or null")


def validate_train_config(cfg: DictConfig) -> None:
    """Reject bad run-level values before any object is built."""
    check_int(cfg, "seed", 0)
    check_trainer(cfg)
    metric = cfg.get("optimized_metric")
    if metric is not None and not isinstance(metric, str):
        raise ConfigError("optimized_metric", metric, "a metric name such as val/loss")
