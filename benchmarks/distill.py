"""Does distillation help? A teacher, then the same small student trained alone and with KD, per family.

    python benchmarks/distill.py                                  # GPT, VAE and GAN (about 15 CPU minutes)
    python benchmarks/distill.py --families vae gan               # a subset
    python benchmarks/distill.py --gpt-steps 1000                 # shorter GPT student runs
    python benchmarks/distill.py --teacher gpt=outputs/.../checkpoints/last.ckpt   # reuse a teacher run

Each run is a real ``genexp-train`` subprocess in ``--out``; the student alone and the student with KD use
the same steps, seed and data. Metrics (lower is better), read from each run's ``metrics.json``:
GPT ``test/loss`` (nats/char on the held-out 10%, best checkpoint by val/loss), VAE ``test/nelbo``
(nats/image), GAN ``test/fid`` (domain-classifier FID of 1,000 EMA-generator samples vs the test split).
``gap closed`` = (alone - KD) / (alone - teacher): 1 means KD reaches the teacher, 0 no gain, < 0 harm.
Parameters are those of ``deployable()`` (GAN: the generator). Runs use one thread each
(``OMP_NUM_THREADS=1``; the 2-core machine is shared, where two threads run many times slower).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table

from _harness import SHAKESPEARE, best_checkpoint, genexp_train
from genexp.compression.distill import load_teacher

QUIET = ["callbacks.progress_bar=null", "trainer.enable_model_summary=false"]


@dataclass
class Family:
    """One comparison: the teacher's overrides, the student's, the KD settings and the metric."""

    name: str
    metric: str
    teacher: list[str]
    student: list[str]
    kd: list[str]
    label: str
    extra_students: dict[str, list[str]] = field(default_factory=dict)


def gpt_steps(steps: int) -> list[str]:
    """The baby-GPT recipe cut to ``steps`` optimizer steps (200 per epoch, cosine over ``steps``)."""
    epochs = math.ceil(steps / 200)
    return [
        f"trainer.max_epochs={epochs}",
        f"trainer.max_steps={steps}",
        f"scheduler.scheduler.total_steps={steps}",
        f"scheduler.scheduler.warmup_steps={min(100, steps // 10)}",
    ]


def families(args: argparse.Namespace) -> dict[str, Family]:
    data = [f"data.path={args.corpus}"]
    return {
        "gpt": Family(
            "gpt",
            "test/loss",
            ["experiment=gpt_shakespeare_cpu", *data, *gpt_steps(args.gpt_teacher_steps)],
            [
                "experiment=gpt_shakespeare_cpu",
                *data,
                *gpt_steps(args.gpt_steps),
                "model.n_layer=2",
                "model.n_embd=64",
            ],
            ["compression.distill.alpha=0.5", "compression.distill.temperature=2.0"],
            "GPT (test loss, nats/char)",
        ),
        "vae": Family(
            "vae",
            "test/nelbo",
            ["model=vae"],
            ["model=vae", "model.hidden_channels=8", "model.latent_dim=8"],
            ["compression.distill.alpha=0.5", "compression.distill.temperature=1.0"],
            "VAE (test -ELBO, nats/image)",
            {"latent_dim=16": ["model=vae", "model.hidden_channels=8", "model.latent_dim=16"]},
        ),
        "gan": Family(
            "gan",
            "test/fid",
            ["experiment=gan_digits"],
            ["experiment=gan_digits", "model.g_channels=16"],
            ["compression.distill.alpha=0.9", "compression.distill.feature_weight=1.0"],
            "GAN (test FID, domain features)",
        ),
    }


def train(out: Path, overrides: list[str], seed: int) -> tuple[dict[str, float], str]:
    """One genexp-train run in ``out``; a finished run there with the same overrides is reused."""
    metrics = out / "metrics.json"
    command = [*QUIET, *overrides, f"seed={seed}"]
    start = time.perf_counter()
    if metrics.is_file():
        saved = OmegaConf.to_container(OmegaConf.load(out / ".hydra" / "overrides.yaml"))
        if saved != command:
            raise SystemExit(f"{out} holds a run with other overrides ({saved}); choose another --out")
    else:
        env = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        genexp_train(command, out, env=env, log=out.parent / f"{out.name}.log")
    seconds = time.perf_counter() - start
    return json.loads(metrics.read_text()), "reused" if seconds < 1 else f"{seconds:.0f} s"


def deployable_params(checkpoint: Path) -> int:
    return sum(p.numel() for p in load_teacher(checkpoint).deployable().parameters())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--families", nargs="+", default=["gpt", "vae", "gan"], choices=["gpt", "vae", "gan"])
    parser.add_argument("--gpt-steps", type=int, default=2000, help="optimizer steps of each GPT student")
    parser.add_argument("--gpt-teacher-steps", type=int, default=2000, help="steps of the GPT teacher")
    parser.add_argument(
        "--teacher", action="append", default=[], help="family=path of an existing teacher .ckpt"
    )
    parser.add_argument("--kd", action="append", default=[], help="family:key=value, e.g. gpt:alpha=0.9")
    parser.add_argument("--corpus", type=Path, default=SHAKESPEARE)
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument("--out", type=Path, default=Path("outputs/benchmarks/distill"))
    args = parser.parse_args()
    given = dict(item.split("=", 1) for item in args.teacher)
    table = Table(
        title="Distillation: the same student alone and with KD (same steps and seed; lower is better)"
    )
    for column in (
        "family",
        "student",
        "params (vs teacher)",
        "teacher",
        "alone",
        "with KD",
        "gap closed",
        "KD",
    ):
        table.add_column(column, justify="left" if column in ("family", "student", "KD") else "right")
    wall: list[str] = []

    for name in args.families:
        family = families(args)[name]
        settings = dict(o.split("=", 1) for o in family.kd)  # --kd family:key=value replaces a default
        settings.update(
            (f"compression.distill.{k}", v)
            for k, v in (
                item.split(":", 1)[1].split("=", 1) for item in args.kd if item.startswith(f"{name}:")
            )
        )
        kd = [f"{k}={v}" for k, v in settings.items()]
        if name in given:
            teacher_ckpt = Path(given[name])
            teacher_metrics = json.loads((teacher_ckpt.parents[1] / "metrics.json").read_text())
        else:
            teacher_metrics, seconds = train(args.out / f"{name}_teacher", family.teacher, args.seed)
            teacher_ckpt = best_checkpoint(args.out / f"{name}_teacher")
            wall.append(f"{name} teacher {seconds}")
        teacher_value, teacher_params = teacher_metrics[family.metric], deployable_params(teacher_ckpt)
        students = {"": family.student, **family.extra_students}
        for tag, student in students.items():
            suffix = f"_{tag.replace('=', '')}" if tag else ""
            alone, t_alone = train(args.out / f"{name}_alone{suffix}", student, args.seed)
            distilled, t_kd = train(
                args.out / f"{name}_kd{suffix}",
                [*student, "compression=[distill]", f"compression.distill.teacher={teacher_ckpt}", *kd],
                args.seed,
            )
            wall.append(f"{name}{suffix} alone {t_alone}, with KD {t_kd}")
            a, d = alone[family.metric], distilled[family.metric]
            gap = (a - d) / (a - teacher_value) if a != teacher_value else float("nan")
            params = deployable_params(args.out / f"{name}_alone{suffix}" / "checkpoints" / "last.ckpt")
            described = " ".join(
                o.split(".", 1)[-1]
                for o in student
                if o.startswith("model.") or o.startswith("trainer.max_steps")
            )
            table.add_row(
                family.label,
                described + (f" [{tag}]" if tag else ""),
                f"{params:,} ({params / teacher_params:.2f}x)",
                f"{teacher_value:.3f}",
                f"{a:.3f}",
                f"{d:.3f}",
                f"{gap:+.2f}",
                " ".join(o.removeprefix("compression.distill.") for o in kd),
            )
    Console(width=200).print(table)
    print("wall-clock (shared 2-core CPU, 1 thread per run): " + "; ".join(wall))
    print(f"runs: {args.out}")


if __name__ == "__main__":
    main()
