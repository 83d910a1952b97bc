"""Every optimizer of conf/optimizer trains every family's default recipe out of the box (conf/tuning/).

Long enough to catch divergence: the default VAE for its full 20 epochs, the whole GAN recipe (300 batches of one
D and one G step; FID of 1,000 samples of the final generator) and 300 steps of the GPT recipe. Each run must stay
finite and end within 25% of Adam's metric for the same budget (lower is better for all). Plain SGD and SGD +
momentum reach that on the GAN only with model.grad_clip (conf/tuning/gan_sgd.yaml, gan_momentum.yaml: each
parameter tensor's RMS gradient capped, i.e. layer-wise normalised steps); docs/results.md, "Every optimizer trains every family".
In-process (no interpreter start-up per run); about 7 minutes on an idle 2-core CPU.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from omegaconf import open_dict

from conftest import SHAKESPEARE
from genexp.train import train

OPTIMIZERS = ["sgd", "momentum", "adam", "adamw", "adagrad", "rmsprop"]
QUIET = [
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "callbacks.progress_bar=null",
    "callbacks.model_summary=null",
    "logger=csv",
]
FAMILIES = {  # overrides, the metric compared (lower is better)
    "vae": ([], "val/loss"),
    "gan": (
        [
            "experiment=gan_digits",
            "callbacks.sample_quality.every_n_epochs=0",  # FID once, in the test stage
            "callbacks.model_checkpoint=null",  # test the generator as it ends
        ],
        "test/fid",
    ),
    "gpt": (
        [
            "experiment=gpt_shakespeare_cpu",
            f"data.path={SHAKESPEARE}",
            "data.batches_per_epoch=150",
            "trainer.max_epochs=2",  # 300 steps of the recipe's schedule
            "model.sample_every_n_epochs=0",
            "test=false",
        ],
        "val/loss",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_every_optimizer_trains_every_family(compose_train, tmp_path: Path, family: str) -> None:
    overrides, metric = FAMILIES[family]
    if family == "gpt" and not SHAKESPEARE.is_file():
        pytest.skip(f"{SHAKESPEARE} not present")
    results: dict[str, float] = {}
    for optimizer in OPTIMIZERS:
        cfg = compose_train([*QUIET, *overrides, f"optimizer={optimizer}"])
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / optimizer)
        train(cfg)
        results[optimizer] = json.loads((tmp_path / optimizer / "metrics.json").read_text())[metric]
    adam = results["adam"]
    print(f"{family} {metric}: " + ", ".join(f"{k} {v:.4g}" for k, v in results.items()))
    for optimizer, value in results.items():
        assert math.isfinite(value), f"{family} + {optimizer}: {metric} is {value}"
        assert value <= 1.25 * adam, f"{family} + {optimizer}: {metric} {value:.4g} vs Adam's {adam:.4g}"
