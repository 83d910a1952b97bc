"""Turn the composed config into Lightning objects: data, model, callbacks, loggers, trainer."""

from __future__ import annotations

from typing import Any

import hydra
import lightning as L
from hydra.errors import InstantiationException
from lightning.pytorch import Callback
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf

from genexp.callbacks.logged_metric_check import LoggedMetricCheck
from genexp.models.base import GenerativeModule
from genexp.runtime.errors import ConfigError, GenexpError


def instantiate(node: Any, key: str, **kwargs: Any) -> Any:
    """`hydra.utils.instantiate` that lets genexp's own errors through and names the config key otherwise.

    A ConfigError whose key is a bare argument name (``ConfigError("width", 0, ...)`` from a constructor) is
    re-raised under the config path, ``model.width``.
    """
    try:
        return hydra.utils.instantiate(node, **kwargs)
    except InstantiationException as err:
        cause: BaseException | None = err
        while cause is not None:
            if isinstance(cause, ConfigError) and "." not in cause.key and "=" not in cause.key:
                # a constructor named its own argument (a user's model): add the config path we know
                raise ConfigError(f"{key}.{cause.key}", cause.value, cause.expected) from None
            if isinstance(cause, GenexpError):
                raise cause from None
            cause = cause.__cause__
        raise ConfigError(
            key,
            OmegaConf.select(node, "_target_") if isinstance(node, DictConfig) else node,
            f"a config that builds: {err}",
        ) from err


def build_datamodule(cfg: DictConfig) -> L.LightningDataModule:
    return instantiate(cfg.data, "data")


DATA_OPTIONS = {
    "images": "data=digits, mnist, fashion_mnist or cifar10",
    "text": "data=shakespeare, or data=text data.path=<a UTF-8 file>",
}


def check_data_kind(cfg: DictConfig, datamodule: L.LightningDataModule) -> None:
    """The model family's ``data_kind`` against the data module's ``kind``, before the model is built."""
    try:
        model_class = hydra.utils.get_class(str(cfg.model.get("_target_")))
    except Exception:  # noqa: BLE001  (an unknown target is reported by instantiate, naming model._target_)
        return
    needs, has = getattr(model_class, "data_kind", None), getattr(datamodule, "kind", None)
    if needs and has and needs != has:
        raise ConfigError(
            "data",
            cfg.data.get("name", has),
            f"{needs.removesuffix('s')} data for the {model_class.__name__} model "
            f"({DATA_OPTIONS.get(needs, needs)}); this data module gives {has}",
        )


def build_model(cfg: DictConfig, datamodule: L.LightningDataModule) -> GenerativeModule:
    """The model, sized from the data, with the optimizer and scheduler partials wired in."""
    check_data_kind(cfg, datamodule)
    model = instantiate(
        cfg.model,
        "model",
        optimizer=instantiate(cfg.optimizer, "optimizer", **lr_override(cfg)),
        scheduler=instantiate(cfg.scheduler, "scheduler", _convert_="all"),
        **datamodule.model_kwargs(),
    )
    if not isinstance(model, GenerativeModule):
        raise ConfigError("model._target_", cfg.model.get("_target_"), "a genexp GenerativeModule subclass")
    return model


def lr_override(cfg: DictConfig) -> dict[str, float]:
    """``{"lr": optimizer.lr x lr_factor}`` when the top-level ``lr_factor`` is set and not 1 (LR sweeps around
    each optimizer's tuned default, as in ``experiment=optimizer_study``), else nothing."""
    factor = cfg.get("lr_factor", 1.0)
    if factor is None or factor == 1:
        return {}
    if not isinstance(factor, (int, float)) or isinstance(factor, bool) or factor <= 0:
        raise ConfigError("lr_factor", factor, "a positive number (it multiplies optimizer.lr)")
    return {"lr": float(cfg.optimizer.lr) * factor}


def build_callbacks(cfg: DictConfig) -> list[Callback]:
    """Every callback under ``callbacks``, every selected ``compression`` option, the target's stop, and the check
    that ``target.metric`` and ``optimized_metric`` name metrics the run logs (before training)."""
    callbacks: list[Callback] = []
    for group in ("callbacks", "compression"):
        for name, node in (cfg.get(group) or {}).items():
            if isinstance(node, DictConfig) and "_target_" in node:
                callbacks.append(instantiate(node, f"{group}.{name}"))
    target = cfg.get("target")
    if isinstance(target, DictConfig) and target.get("stop"):
        from genexp.callbacks.training_cost import target_stopper

        callbacks.append(target_stopper(target.get("metric"), target.get("value"), target.get("mode", "min")))
    named = {"target.metric": target.get("metric") if isinstance(target, DictConfig) else None}
    callbacks.append(LoggedMetricCheck({**named, "optimized_metric": cfg.get("optimized_metric")}))
    return callbacks


def build_loggers(cfg: DictConfig) -> list[Logger]:
    return [
        instantiate(node, f"logger.{name}")
        for name, node in (cfg.get("logger") or {}).items()
        if isinstance(node, DictConfig) and "_target_" in node
    ]


def build_trainer(cfg: DictConfig, callbacks: list[Callback], loggers: list[Logger]) -> L.Trainer:
    """A plain ``lightning.Trainer``; Lightning itself judges ``trainer.precision`` (its own list of values)."""
    try:
        return instantiate(cfg.trainer, "trainer", callbacks=callbacks, logger=loggers or False)
    except ConfigError as err:
        cause: BaseException | None = err
        while cause is not None:
            text = str(cause)
            if isinstance(cause, ValueError) and text.startswith("Precision ") and "Allowed" in text:
                allowed = text.split("Allowed precision values:", 1)[-1].strip()
                raise ConfigError(
                    "trainer.precision", cfg.trainer.get("precision"), f"one of {allowed}"
                ) from None
            cause = cause.__cause__ or cause.__context__
        raise
