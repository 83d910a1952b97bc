"""genexp-eval: rebuild a run from the config inside its checkpoint and measure it on the test split."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from genexp.build import build_callbacks, build_datamodule, build_loggers, build_model, instantiate
from genexp.checkpoints import load_checkpoint, saved_config
from genexp.compression.quantize import install_artifact, is_artifact, read_artifact
from genexp.errors import report_errors
from genexp.models.base import CONFIG_KEY, GenerativeModule
from genexp.run_folder import ensure_fresh, scalar_metrics, write_json
from genexp.train import CONFIG_DIR
from genexp.validation import check_trainer

log = logging.getLogger(__name__)


@report_errors
def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Test the checkpoint (or quantized artifact folder) at ``cfg.ckpt_path``; write ``metrics.json`` into this eval's own run folder."""
    check_trainer(cfg)
    output_dir = ensure_fresh(cfg.paths.output_dir)
    quantized = is_artifact(cfg.ckpt_path)  # a <run>/quantized folder from compression=[quantize]
    checkpoint = read_artifact(cfg.ckpt_path) if quantized else load_checkpoint(cfg.ckpt_path)
    saved = saved_config(checkpoint, cfg.ckpt_path)
    run_cfg = OmegaConf.merge(saved, {"data": cfg.get("data") or {}})
    L.seed_everything(cfg.seed, workers=True)

    datamodule = build_datamodule(run_cfg)
    state_key = type(datamodule).__qualname__
    data_state = checkpoint.get("datamodule", {}) if quantized else checkpoint
    if state_key in data_state:
        datamodule.load_state_dict(data_state[state_key])
    model = build_model(run_cfg, datamodule)
    if quantized:
        install_artifact(model, checkpoint)
    else:
        model.load_state_dict(checkpoint["state_dict"])
    model.genexp_config = checkpoint[CONFIG_KEY]
    trainer = instantiate(
        cfg.trainer, "trainer", logger=build_loggers(cfg) or False, callbacks=build_callbacks(cfg)
    )
    metrics = scalar_metrics(*trainer.test(model, datamodule=datamodule))
    metrics.update(
        {
            "checkpoint/epoch": float(checkpoint.get("epoch", -1)),
            "checkpoint/global_step": float(checkpoint.get("global_step", -1)),
        }
    )
    write_json(output_dir / "metrics.json", metrics)
    _print_table(Path(cfg.ckpt_path), metrics)
    if cfg.get("num_samples"):
        _print_samples(model, cfg.num_samples, cfg.get("prompt"))
    return metrics


def _print_table(ckpt: Path, metrics: dict[str, float]) -> None:
    table = Table(title=f"genexp-eval {ckpt}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        table.add_row(key, f"{value:.4f}")
    Console().print(table)


def _print_samples(model: GenerativeModule, n: int, prompt: str | None) -> None:
    """Text models: print ``n`` samples (continuing ``prompt`` when given)."""
    texts = model.sample(n) if prompt is None else model.sample(n, prompt=prompt)  # type: ignore[call-arg]
    if isinstance(texts, list):
        for i, text in enumerate(texts):
            print(f"----- sample {i} -----\n{text}")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
def main(cfg: DictConfig) -> None:
    """Console entry point: ``genexp-eval ckpt_path=...``."""
    evaluate(cfg)


if __name__ == "__main__":
    main()
