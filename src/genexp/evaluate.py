"""genexp-eval: measure a run, a checkpoint or a quantized artifact, or compare the runs of a sweep.

    genexp-eval target=outputs/train/runs/<time>         # a run folder, a .ckpt, a quantized artifact or a .onnx
    genexp-eval ckpt_path=outputs/.../last.ckpt          # the same, for a checkpoint
    genexp-eval compare=outputs/train/multiruns/<time>   # or compare=[run_a,run_b,...]

One target: quality (the family's metric on the test split), parameters, non-zeros, bytes, CPU (and GPU)
latency and throughput go to ``report.json``, ``report.md`` and ``metrics.json`` in this eval's run folder
and to a rich table. ``compare``: see ``genexp.report.compare``.
"""

from __future__ import annotations

import logging
from typing import Any

import hydra
import lightning as L
from omegaconf import DictConfig, ListConfig, OmegaConf
from rich.console import Console

from genexp.checkpoints.rebuild import trust
from genexp.checks.run import check_trainer
from genexp.checks.values import int_at_least
from genexp.models.base import GenerativeModule
from genexp.report.compare import compare_runs
from genexp.report.measure_run import SpeedSettings, measure_target
from genexp.report.onnx_target import load_target
from genexp.report.tables import print_compare, print_single, single_markdown
from genexp.runtime.build import build_callbacks, build_loggers
from genexp.runtime.errors import ConfigError, report_errors
from genexp.runtime.run_folder import ensure_fresh, write_json
from genexp.runtime.startup import config_dir, quiet_console

log = logging.getLogger(__name__)
MODES = ("target", "ckpt_path", "compare")


@report_errors
def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Report on ``target`` / ``ckpt_path``, or compare the runs under ``compare``."""
    quiet_console()
    check_trainer(cfg)
    trust(cfg.get("trust"))
    mode, value = _chosen(cfg)
    settings = SpeedSettings.from_config(cfg.get("report"))
    output_dir = ensure_fresh(cfg.paths.output_dir)
    data = OmegaConf.to_container(cfg.data, resolve=True) if cfg.get("data") else {}
    L.seed_everything(cfg.seed, workers=True)

    if mode == "compare":
        targets = list(value) if isinstance(value, ListConfig) else [value]
        summary = compare_runs(targets, output_dir, cfg.trainer, lambda: build_callbacks(cfg), settings, data)
        print_compare(summary["runs"], f"genexp-eval compare ({output_dir})")
        log.info("Report: %s (plot %s)", output_dir / "report.md", output_dir / summary["plot"])
        return summary

    loaded = load_target(value, key=mode, data=data)  # type: ignore[arg-type]
    if cfg.get("num_samples"):  # bad sampling input fails before the measurement, not after it
        int_at_least("max_new_tokens", cfg.get("max_new_tokens"), 0, allow_none=True)
        if cfg.get("prompt") is not None and hasattr(loaded.model, "check_prompt"):
            loaded.model.check_prompt(str(cfg.prompt))
    row = measure_target(loaded, cfg.trainer, build_callbacks(cfg), settings, loggers=build_loggers(cfg))
    write_json(output_dir / "report.json", row)
    (output_dir / "report.md").write_text(single_markdown(row), encoding="utf-8")
    metrics = {**row["metrics"], **{k: v for k, v in row.items() if k.startswith("checkpoint/")}}
    write_json(output_dir / "metrics.json", metrics)
    print_single(row, Console(width=160))
    if cfg.get("num_samples"):
        _print_samples(loaded.model, cfg.num_samples, cfg.get("prompt"), cfg.get("max_new_tokens"))
    return row


def _chosen(cfg: DictConfig) -> tuple[str, Any]:
    given = [(mode, cfg.get(mode)) for mode in MODES if cfg.get(mode) not in (None, "", [])]
    if len(given) != 1:
        raise ConfigError(
            "target",
            {mode: value for mode, value in given} or None,
            "exactly one of target=<run folder | .ckpt | quantized artifact | exported .onnx>, ckpt_path=<.ckpt> or "
            "compare=<multirun folder | [run, run, ...]>",
        )
    return given[0]


def _print_samples(model: GenerativeModule, n: int, prompt: str | None, max_new_tokens: Any = None) -> None:
    """Text models: print ``n`` samples (continuing ``prompt`` when given, ``max_new_tokens`` characters long
    when given, else ``model.sample_tokens``)."""
    if max_new_tokens is not None and hasattr(model, "generate"):
        start = model.sample_prompt if prompt is None else prompt  # type: ignore[attr-defined]
        texts = model.generate(start, max_new_tokens, model.temperature, model.top_k, n)  # type: ignore[attr-defined,operator]
        texts = [texts] if isinstance(texts, str) else texts
    else:
        texts = model.sample(n) if prompt is None else model.sample(n, prompt=prompt)  # type: ignore[call-arg]
    if isinstance(texts, list):
        for i, text in enumerate(texts):
            print(f"----- sample {i} -----\n{text}")


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="eval")
def main(cfg: DictConfig) -> None:
    """Console entry point: ``genexp-eval target=...`` or ``genexp-eval compare=...``."""
    evaluate(cfg)


if __name__ == "__main__":
    main()
