"""Sample quality of the GAN and VAE recipes on one calibrated scale (domain-classifier FID, no download).

    python benchmarks/sample_quality.py                      # trains both in a scratch folder, then scores
    python benchmarks/sample_quality.py --gan RUN --vae RUN  # scores finished genexp-train run folders

Trains ``genexp-train experiment=gan_digits`` and the default ``genexp-train`` (a digits VAE; both 16x16,
bilinear resize, seed 12345), loads each run's best checkpoint, draws ``--num-samples`` samples and prints
FID against the test split with its floor (real train images) and ceiling (uniform noise), the ratio to the
ceiling, KID, classes covered (share >= 3%), the smallest class share and KL(samples || real classes).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from _harness import genexp_train, load_best
from genexp.metrics.features import DomainFeatures, load_or_train_classifier
from genexp.metrics.scores import QualityScorer

RECIPES = {"gan": ["experiment=gan_digits"], "vae": []}


def train_run(name: str, scratch: Path, extra: list[str]) -> tuple[Path, float]:
    """Run genexp-train for a recipe in ``scratch``; returns its run folder and wall time."""
    cwd = scratch / name
    cwd.mkdir(parents=True, exist_ok=True)
    env = {"GENEXP_DATA_DIR": str(scratch / "data")}
    seconds = genexp_train([*RECIPES[name], *extra, "callbacks.progress_bar=null"], cwd=cwd, env=env)
    (run,) = [p.parent for p in (cwd / "outputs" / "train" / "runs").glob("*/metrics.json")]
    return run, seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gan", type=Path, help="a finished experiment=gan_digits run folder")
    parser.add_argument("--vae", type=Path, help="a finished default (VAE) run folder")
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="classifier cache (default: scratch/data)"
    )
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="genexp-quality-"))
    runs, seconds = {"gan": args.gan, "vae": args.vae}, {}
    for name in runs:
        if runs[name] is None:
            runs[name], seconds[name] = train_run(name, scratch, [])
            print(f"trained {name}: {runs[name]} in {seconds[name]:.0f}s")

    models = {name: load_best(run) for name, run in runs.items()}
    _, datamodule, cfg = models["gan"]
    for name, (_, dm, _) in models.items():
        if (dm.name, dm.image_shape, dm.resize, dm.seed) != (
            datamodule.name,
            datamodule.image_shape,
            datamodule.resize,
            datamodule.seed,
        ):
            sys.exit(f"{name}'s data settings differ from the GAN's: not on the same scale")
    data_dir = args.data_dir or Path(cfg.paths.data_dir)
    classifier = load_or_train_classifier(
        data_dir,
        datamodule.name,
        datamodule.resize,
        datamodule.seed,
        datamodule.train_set.tensors,
        datamodule.test_set.tensors,
    )
    scorer = QualityScorer(DomainFeatures(classifier.model), classifier.model, datamodule.test_set.tensors)
    n = args.num_samples
    train_x = datamodule.train_set.tensors[0]
    generator = torch.Generator().manual_seed(datamodule.seed)  # the same draw as SampleQuality's calibration
    pick = torch.randperm(len(train_x), generator=generator)[:n]
    noise = torch.rand(n, *train_x.shape[1:], generator=generator)

    torch.manual_seed(0)
    gan = models["gan"][0]
    rows = {"real train images (floor)": train_x[pick], "uniform noise (ceiling)": noise}
    with torch.no_grad():
        rows["GAN: " + ("EMA generator" if gan.generator_ema is not None else "generator")] = gan.sample(n)
        if gan.generator_ema is not None:
            rows["GAN: raw generator (no EMA)"] = (gan.generator(gan.noise(n)) + 1) / 2
        rows["VAE: decoder(z ~ N(0, I))"] = models["vae"][0].sample(n)
    scores = {name: scorer.score(images.float().clamp(0, 1)) for name, images in rows.items()}
    ceiling = scores["uniform noise (ceiling)"]["fid"]

    print(
        f"\nSample quality on {datamodule.name} {datamodule.image_shape}, {n} samples vs the test split "
        f"({len(datamodule.test_set)} images); domain classifier test accuracy {classifier.accuracy:.4f}"
    )
    print(
        f"{'set':34s} {'FID':>8s} {'FID/ceiling':>11s} {'KID':>9s} {'classes>=3%':>11s} "
        f"{'min share':>9s} {'KL(s||r)':>8s}"
    )
    for name, s in scores.items():
        print(
            f"{name:34s} {s['fid']:8.2f} {s['fid'] / ceiling:11.2%} {s['kid']:9.3f} "
            f"{s['classes_covered']:11.0f} {s['min_class_share']:9.3f} {s['class_kl']:8.3f}"
        )
    if seconds:
        print("training wall time: " + ", ".join(f"{k} {v:.0f}s" for k, v in seconds.items()))
    print("runs: " + ", ".join(f"{k}={v}" for k, v in runs.items()))


if __name__ == "__main__":
    main()
