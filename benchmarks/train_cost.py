"""What cuts the cost of training: bf16-mixed, torch.compile and activation checkpointing, as ratios.

Every variant trains through genexp itself (``genexp.train.train``, the config a user would write) in a fresh
child process, so each one's peak memory is its own; the child reports the ``cost/`` figures of its run
(``callbacks.train_cost``). Variants of one comparison run in alternating rounds (A B A B ...), so a shared
machine's load drifts over both alike, and the table shows medians and the ratio variant / baseline:

- ``precision``: the baby GPT (``experiment=gpt_shakespeare_cpu``), ``trainer.precision`` 32-true vs bf16-mixed;
- ``compile``: the same GPT eager vs ``model.compile=true`` (the median step excludes the compiling steps);
- ``checkpointing``: a larger GPT (8 layers x 256, context 256, batch 12), ``model.activation_checkpointing``
  false vs ``mlp`` (each block's MLP recomputed) vs ``block`` (= true: whole blocks): peak resident memory
  (whole process, and its growth during fit = what training added) and step time (target: peak memory down
  >= 30% at <= 35% more step time);
- ``checkpointing_b32``: the same at batch 32, where activations, not the ~0.5 GB of imported libraries,
  dominate the process's peak.

    python benchmarks/train_cost.py                              # all three, 60 steps a run, 2 rounds
    python benchmarks/train_cost.py --only checkpointing --steps 30 --rounds 3
    python benchmarks/train_cost.py --only checkpointing_b32 --variant block --rounds 3
    python benchmarks/train_cost.py --data /path/to/input.txt

Gradient accumulation (``trainer.accumulate_grad_batches=k``) trades steps for memory the other way: k batches
of ``data.batch_size`` per optimizer step, so the activation memory of one small batch buys a k-times larger one.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _harness import CONF, SHAKESPEARE, cpu_name

DEFAULT_DATA = SHAKESPEARE
GPT = ["experiment=gpt_shakespeare_cpu"]
LARGE_GPT = [*GPT, "model.n_layer=8", "model.n_head=8", "model.n_embd=256", "data.block_size=256"]
CHECKPOINTING = [
    ("no checkpointing", []),
    ("checkpointing: mlp", ["model.activation_checkpointing=mlp"]),
    ("checkpointing: block (= true)", ["model.activation_checkpointing=block"]),
]
COMPARISONS: dict[str, tuple[str, list[str], list[tuple[str, list[str]]]]] = {
    "precision": (
        "baby GPT (4 x 128, context 64, batch 12)",
        GPT,
        [("32-true", []), ("bf16-mixed", ["trainer.precision=bf16-mixed"])],
    ),
    "compile": ("baby GPT", GPT, [("eager", []), ("torch.compile", ["model.compile=true"])]),
    "checkpointing": (
        "GPT 8 x 256, context 256, batch 12",
        LARGE_GPT,
        CHECKPOINTING,
    ),
    "checkpointing_b32": (
        "GPT 8 x 256, context 256, batch 32",
        [*LARGE_GPT, "data.batch_size=32"],
        CHECKPOINTING,
    ),
}
FIGURES = (
    ("step ms (median)", "cost/step_ms_median", ".1f"),
    ("tokens/s", "cost/tokens_per_s", ",.0f"),
    ("peak RSS MiB", "cost/peak_rss_mb", ",.0f"),
    ("RSS growth in fit MiB", "rss_growth_mb", ",.0f"),
)


def train_once(overrides: list[str]) -> dict[str, float]:
    """One ``genexp-train`` fit in this process, in a temporary run folder; its ``cost/...`` figures."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from genexp.train import train

    GlobalHydra.instance().clear()
    with tempfile.TemporaryDirectory() as tmp:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
        with open_dict(cfg):
            cfg.paths.output_dir = str(Path(tmp) / "run")
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            del cfg["hydra"]
        train(cfg)
        metrics = json.loads((Path(tmp) / "run" / "metrics.json").read_text())
    return {k: v for k, v in metrics.items() if k.startswith("cost/")}


def child(overrides: list[str]) -> None:
    """Train one variant here and print its cost figures as one JSON line."""
    cost = train_once(overrides)
    cost["rss_growth_mb"] = cost["cost/peak_rss_mb"] - cost["cost/start_rss_mb"]
    print("COST " + json.dumps(cost), flush=True)


def run_variant(overrides: list[str]) -> dict[str, float]:
    command = [sys.executable, __file__, "--child", json.dumps(overrides)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in result.stdout.splitlines() if line.startswith("COST ")]
    if result.returncode or not lines:
        raise SystemExit(f"variant {overrides} failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    return json.loads(lines[-1][5:])


def loop_only(data: Path, steps: int, accelerator: str = "cpu") -> list[str]:
    """Fit ``steps`` steps, no validation, checkpoints, samples or test: the training loop alone."""
    return [
        f"data.path={data}",
        f"data.batches_per_epoch={steps}",
        "trainer.max_epochs=1",
        "trainer.limit_val_batches=0",
        f"trainer.accelerator={accelerator}",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "test=false",
        "optimized_metric=null",  # no validation, so no val/loss to return
        "logger=csv",
        "model.sample_every_n_epochs=0",
        "model.num_samples=0",
        "callbacks.model_checkpoint=null",
        "callbacks.last_checkpoint=null",
        "callbacks.progress_bar=null",
        "callbacks.model_summary=null",
    ]


def compare(name: str, args: argparse.Namespace) -> None:
    title, base, variants = COMPARISONS[name]
    if args.variant:  # the baseline stays: every ratio is against it
        variants = [variants[0], *[v for v in variants[1:] if any(key in v[0] for key in args.variant)]]
    results: dict[str, list[dict[str, float]]] = {label: [] for label, _ in variants}
    for r in range(args.rounds):
        order = variants if r % 2 == 0 else variants[::-1]
        for label, extra in order:
            results[label].append(
                run_variant([*base, *loop_only(args.data, args.steps), *args.overrides, *extra])
            )
            print(
                f"  {name} round {r}: {label}: {results[label][-1]['cost/step_ms_median']:.1f} ms/step",
                flush=True,
            )
    medians = {
        label: {key: statistics.median(run[key] for run in runs) for _, key, _ in FIGURES}
        for label, runs in results.items()
    }
    baseline = medians[variants[0][0]]
    print(f"\n{name}: {title}; {args.steps} steps a run, median of {args.rounds} alternating rounds")
    headers = ["variant"] + [h for h, _, _ in FIGURES] + ["x step time", "x peak RSS", "x RSS growth"]
    print("| " + " | ".join(headers) + " |\n|" + "---|" * len(headers))
    for label, figures in medians.items():
        cells = [label] + [format(figures[key], spec) for _, key, spec in FIGURES]
        cells += [
            f"{figures[key] / baseline[key]:.3f}"
            for key in ("cost/step_ms_median", "cost/peak_rss_mb", "rss_growth_mb")
        ]
        print("| " + " | ".join(cells) + " |")
    print(flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Tiny Shakespeare input.txt")
    parser.add_argument("--steps", type=int, default=60, help="training steps per run")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per comparison")
    parser.add_argument("--only", choices=sorted(COMPARISONS), action="append", help="run only these")
    parser.add_argument(
        "--variant", action="append", help="only the variants whose label contains this (+ baseline)"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = parser.parse_args()
    if args.child is not None:
        child(json.loads(args.child))
        return
    if not args.data.is_file():
        raise SystemExit(f"--data {args.data}: no such file (Tiny Shakespeare's input.txt)")
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU: {cpu_name()}")
    for name in args.only or list(COMPARISONS):
        compare(name, args)


if __name__ == "__main__":
    main()
