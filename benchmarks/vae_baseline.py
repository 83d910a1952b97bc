"""Default run vs an independent-pixel baseline: does the VAE beat per-pixel Bernoulli on the same test split?

    python benchmarks/vae_baseline.py                 # runs `genexp-train` (the default experiment), then compares
    python benchmarks/vae_baseline.py --run outputs/train/runs/<stamp>   # compare an existing run

Prints the wall-clock of the default run, the VAE's test negative ELBO and the baseline's NLL, in nats per image.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table

from _harness import genexp_train
from genexp.data.images import ImageDataModule


def independent_pixel_nll(dm: ImageDataModule) -> float:
    """NLL (nats/image) of the test split under per-pixel Bernoulli probabilities fitted on the train split."""
    train_x = dm.train_set.tensors[0]
    test_x = dm.test_set.tensors[0]
    p = train_x.mean(0).clamp(1e-4, 1 - 1e-4)  # maximum likelihood, smoothed away from 0 and 1
    nll = -(test_x * p.log() + (1 - test_x) * (1 - p).log())
    return float(nll.flatten(1).sum(1).mean())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--run", type=Path, help="an existing genexp-train run folder (default: train one now)"
    )
    parser.add_argument("overrides", nargs="*", help="overrides passed to genexp-train when training")
    args = parser.parse_args()

    seconds = None
    if args.run is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        args.run = Path("outputs") / "benchmarks" / f"vae_baseline-{stamp}"
        seconds = genexp_train(args.overrides, args.run, cwd=Path.cwd(), quiet=False)
    cfg = OmegaConf.load(args.run / ".hydra" / "config.yaml")
    metrics = json.loads((args.run / "metrics.json").read_text())
    data = {k: v for k, v in OmegaConf.to_container(cfg.data, resolve=False).items() if k != "_target_"}
    data["root"] = "data"
    dm = ImageDataModule(**{**data, "seed": cfg.seed})
    dm.setup()
    baseline = independent_pixel_nll(dm)
    vae = metrics["test/nelbo"]

    table = Table(
        title=f"VAE vs independent pixels on {cfg.data.name} {dm.image_shape} test split (nats/image)"
    )
    for column in ("model", "test NLL / -ELBO", "vs baseline"):
        table.add_column(column, justify="right" if column != "model" else "left")
    table.add_row("independent-pixel Bernoulli (fit on train)", f"{baseline:.2f}", "1.00x")
    table.add_row(
        f"VAE, {cfg.trainer.max_epochs} epochs (genexp-train)", f"{vae:.2f}", f"{vae / baseline:.2f}x"
    )
    Console().print(table)
    if seconds is not None:
        print(f"genexp-train wall-clock: {seconds:.1f} s (includes start-up, fit, test)")
    print(f"run folder: {args.run}")
    print("VAE beats the baseline" if vae < baseline else "VAE does NOT beat the baseline")
    torch.set_printoptions()


if __name__ == "__main__":
    main()
