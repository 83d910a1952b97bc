"""Diffusion on digits: the experiment's time and quality, and steps vs FID vs images/s for teacher and student.

    python benchmarks/diffusion.py                                 # trains the teacher, then the student
    python benchmarks/diffusion.py --teacher RUN --student RUN     # scores finished run folders (or .ckpt files)

Trains ``genexp-train experiment=diffusion_digits`` (the teacher: DDIM in ``model.sample_steps`` = 32 steps)
and ``genexp-train experiment=diffusion_digits_distill compression.distill.teacher=<its best checkpoint>``
(progressive distillation into a student sampling in 1/4 of the teacher's steps), timing each (wall and CPU
seconds; on a busy machine CPU seconds / cores estimates the idle wall time). Then, for both models and for
4, 8, 16, 32, ... DDIM steps, draws ``--num-samples`` samples (the same starting noise for every row) and
prints domain FID against the test split (floor: real train images; ceiling: uniform noise), classes
covered and sampling images/s (batch ``--batch``, the best of ``--rounds`` timings, interleaved so that load
drifts over all rows alike), with ratios against the teacher at its full steps, and the Done-when checks.
``--grid out.png`` writes three sample grids from the same noise: the teacher at its full steps, the
teacher at the student's steps (no distillation), the student.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
from pathlib import Path

import torch

from _harness import best_checkpoint, cpu_name, genexp_train, load_best
from genexp.metrics.features import DomainFeatures, load_or_train_classifier
from genexp.metrics.scores import QualityScorer
from genexp.models.image_grid import image_grid, save_png

TIME_BUDGET_S, FID_BUDGET, MIN_CLASSES = 8 * 60, 0.05, 9  # experiment=diffusion_digits, on 2 cores
FID_FACTOR, SPEEDUP = 1.5, 3.5  # the 1/4-step student vs the teacher at its full steps


def train_run(name: str, scratch: Path, overrides: list[str]) -> tuple[Path, float, float]:
    """genexp-train in ``scratch/name``; returns the run folder, wall seconds and CPU seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = genexp_train(
        [*overrides, "callbacks.progress_bar=null"], scratch / name, env={"OMP_WAIT_POLICY": "PASSIVE"}
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return scratch / name, wall, cpu


def save_grid(path: Path, teacher, student, n: int = 36) -> None:
    """Teacher at its full steps | teacher at the student's steps | student: the same starting noise."""
    s = student.sample_steps
    panels = [teacher.sample(n, seed=1), teacher.sample(n, steps=s, seed=1), student.sample(n, seed=1)]
    grids = [image_grid(p, nrow=6) for p in panels]
    gap = torch.ones(grids[0].shape[0], grids[0].shape[1], 8)
    save_png(torch.cat([grids[0], gap, grids[1], gap, grids[2]], dim=2), path)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--teacher", type=Path, help="a finished experiment=diffusion_digits run (or .ckpt)")
    parser.add_argument("--student", type=Path, help="a finished experiment=diffusion_digits_distill run")
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=64, help="images per sampling call when timing")
    parser.add_argument("--max-steps", type=int, default=64, help="the largest step count in the table")
    parser.add_argument("--scratch", type=Path, default=None, help="where runs train (default: a temp dir)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds (the best counts)")
    parser.add_argument("--grid", type=Path, default=None, help="write a side-by-side sample grid PNG here")
    parser.add_argument("overrides", nargs="*", help="extra genexp-train overrides for both runs")
    args = parser.parse_args()

    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="genexp-diffusion-"))
    timing: dict[str, tuple[float, float]] = {}
    teacher_run = args.teacher
    if teacher_run is None:
        teacher_run, *timing["teacher"] = train_run(
            "teacher", scratch, ["experiment=diffusion_digits", *args.overrides]
        )
        print(f"trained the teacher: {teacher_run} ({timing['teacher'][0]:.0f} s wall)")
    student_run = args.student
    if student_run is None:
        distill = [
            "experiment=diffusion_digits_distill",
            f"compression.distill.teacher={best_checkpoint(teacher_run)}",
        ]
        student_run, *timing["student"] = train_run("student", scratch, [*distill, *args.overrides])
        print(f"trained the student: {student_run} ({timing['student'][0]:.0f} s wall)")

    teacher, datamodule, cfg = load_best(teacher_run)
    student, _, _ = load_best(student_run)
    classifier = load_or_train_classifier(
        Path(cfg.paths.data_dir), datamodule.name, datamodule.resize, datamodule.seed,
        datamodule.train_set.tensors, datamodule.test_set.tensors,
    )  # fmt: skip
    scorer = QualityScorer(DomainFeatures(classifier.model), classifier.model, datamodule.test_set.tensors)
    n, full = args.num_samples, teacher.sample_steps
    train_x = datamodule.train_set.tensors[0]
    generator = torch.Generator().manual_seed(datamodule.seed)  # SampleQuality's calibration draw
    pick = torch.randperm(len(train_x), generator=generator)[:n]
    floor = scorer.score(train_x[pick])["fid"]
    ceiling = scorer.score(torch.rand(n, *train_x.shape[1:], generator=generator))["fid"]

    steps = [s for s in (2**i for i in range(1, 12)) if 4 <= s <= max(args.max_steps, full)]
    rows = [("teacher", teacher, s) for s in steps] + [("student", student, s) for s in steps if s <= full]
    scores = {(name, s): scorer.score(model.sample(n, steps=s, seed=0)) for name, model, s in rows}
    speed = {key: 0.0 for key in scores}
    for _ in range(args.rounds):  # interleaved rounds: the best per row
        for name, model, s in rows:
            speed[(name, s)] = max(speed[(name, s)], model.images_per_second(args.batch, s, repeats=1))

    base_fid, base_speed = scores[("teacher", full)]["fid"], speed[("teacher", full)]
    print(
        f"\nDiffusion on {datamodule.name} {datamodule.image_shape}: {n} DDIM samples (seed 0) vs the test split; "
        f"FID floor {floor:.2f} (real train), ceiling {ceiling:.1f} (noise); {cpu_name()}, {torch.get_num_threads()} threads"
    )
    print(f"teacher: {best_checkpoint(teacher_run)} (sample_steps {full})")
    print(f"student: {best_checkpoint(student_run)} (sample_steps {student.sample_steps})")
    print(
        f"{'model':8s} {'steps':>5s} {'FID':>7s} {'/ceiling':>8s} {'classes':>7s} {'images/s':>9s} {'FID ×':>6s} {'speed ×':>7s}"
    )
    for name, _, s in rows:
        score, ips = scores[(name, s)], speed[(name, s)]
        mark = (
            " <- full"
            if (name, s) == ("teacher", full)
            else (" <- trained" if name == "student" and s == student.sample_steps else "")
        )
        print(
            f"{name:8s} {s:5d} {score['fid']:7.2f} {score['fid'] / ceiling:8.2%} {score['classes_covered']:7.0f} "
            f"{ips:9.1f} {score['fid'] / base_fid:6.2f} {ips / base_speed:7.2f}{mark}"
        )

    if args.grid:
        save_grid(args.grid, teacher, student)
        print(f"sample grids: {args.grid}")

    print("\nDone-when checks")
    teacher_fid = scores[("teacher", full)]
    if "teacher" in timing:
        wall, cpu = timing["teacher"]
        cores = os.cpu_count() or 1
        print(  # an idle run takes between CPU s / cores (perfect threading) and its CPU s (one core busy)
            f"  experiment=diffusion_digits time: {wall:.0f} s wall, {cpu:.0f} CPU s (idle: {cpu / cores:.0f}-{cpu:.0f} s "
            f"on {cores} cores; budget {TIME_BUDGET_S} s): {'ok' if min(wall, cpu) <= TIME_BUDGET_S else 'NOT MET'}"
        )
    ok = teacher_fid["fid"] / ceiling < FID_BUDGET and teacher_fid["classes_covered"] >= MIN_CLASSES
    print(
        f"  teacher at {full} steps: FID {teacher_fid['fid']:.2f} = {teacher_fid['fid'] / ceiling:.2%} of the ceiling "
        f"(< {FID_BUDGET:.0%}), {teacher_fid['classes_covered']:.0f} classes (>= {MIN_CLASSES}): {'ok' if ok else 'NOT MET'}"
    )
    s = student.sample_steps
    fid_x, speed_x = scores[("student", s)]["fid"] / base_fid, speed[("student", s)] / base_speed
    ok = s * 4 <= full and fid_x <= FID_FACTOR and speed_x >= SPEEDUP
    print(
        f"  student at {s} steps ({full // s}x fewer): FID {fid_x:.2f}x the teacher's (<= {FID_FACTOR}), "
        f"images/s {speed_x:.2f}x (>= {SPEEDUP}): {'ok' if ok else 'NOT MET'}"
    )
    if "student" in timing:
        print(f"  distillation run: {timing['student'][0]:.0f} s wall, {timing['student'][1]:.0f} CPU s")


if __name__ == "__main__":
    main()
