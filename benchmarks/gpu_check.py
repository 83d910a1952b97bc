"""GPU check (one CUDA GPU, <= 8 minutes): training throughput and peak memory, low-bit optimizer states,
int8/float8 inference latency. Without a CUDA GPU it prints one line and exits 0.

1. Training through genexp itself (``genexp.train.train``, ``callbacks.train_cost``): a GPT (8 layers x 512,
   context 256, batch 32, Tiny Shakespeare) for ``--steps`` steps in ``trainer.precision`` 32-true, bf16-mixed
   and 16-mixed, and bf16-mixed with ``model.compile=true``: tokens/s, median step ms, peak
   ``torch.cuda.max_memory_allocated``, each with its ratio to 32-true.
2. Optimizer states: ``optimizer=adamw`` against ``optimizer=adamw8bit`` and ``adamw4bit`` (torchao), bf16-mixed:
   peak GPU memory and step time.
3. Inference: the GPT network, batch 16 x 256 tokens, bf16, eager: latency (CUDA events, median) of the float
   network and of torchao's int8 weight-only, int8 dynamic and float8 dynamic quantization (float8 needs
   compute capability >= 8.9; reported as not run below that).

    python benchmarks/gpu_check.py [--steps 200] [--data /path/to/input.txt]
"""

from __future__ import annotations

import argparse
import copy
import statistics
from pathlib import Path

from _harness import REPO, SHAKESPEARE
from train_cost import loop_only, train_once  # benchmarks/train_cost.py: one genexp fit, its cost figures

DEFAULT_DATA = SHAKESPEARE
GPT = [
    "experiment=gpt_shakespeare_cpu",
    "model.n_layer=8",
    "model.n_head=8",
    "model.n_embd=512",
    "data.block_size=256",
    "data.batch_size=32",
]
TRAINING = [
    ("32-true", []),
    ("bf16-mixed", ["trainer.precision=bf16-mixed"]),
    ("16-mixed", ["trainer.precision=16-mixed"]),
    ("bf16-mixed + compile", ["trainer.precision=bf16-mixed", "model.compile=true"]),
]
ADAMW = [
    "optimizer.betas=[0.9,0.99]",
    "optimizer.weight_decay=0.1",
]  # the recipe's AdamW (conf/tuning/gpt_adamw)
OPTIMIZERS = [
    ("AdamW", ["trainer.precision=bf16-mixed"]),
    ("AdamW8bit", ["trainer.precision=bf16-mixed", "optimizer=adamw8bit", *ADAMW]),
    ("AdamW4bit", ["trainer.precision=bf16-mixed", "optimizer=adamw4bit", *ADAMW]),
]


def table(title: str, rows: list[tuple[str, dict[str, float]]]) -> None:
    base = rows[0][1]
    print(f"\n{title}")
    print("| variant | tokens/s | x | step ms (median) | peak GPU MiB | x |\n|---|---:|---:|---:|---:|---:|")
    for label, cost in rows:
        if "error" in cost:
            print(f"| {label} | not run: {cost['error']} | | | | |")
            continue
        print(
            f"| {label} | {cost['tokens_per_s']:,.0f} | {cost['tokens_per_s'] / base['tokens_per_s']:.2f} "
            f"| {cost['step_ms_median']:.1f} | {cost['peak_gpu_mb']:,.0f} "
            f"| {cost['peak_gpu_mb'] / base['peak_gpu_mb']:.2f} |",
            flush=True,
        )


def run_all(variants: list[tuple[str, list[str]]], args: argparse.Namespace) -> list[tuple[str, dict]]:
    rows = []
    for label, extra in variants:
        try:
            overrides = [*GPT, *loop_only(args.data, args.steps, "gpu"), "trainer.devices=1", *extra]
            cost = train_once(overrides)
            rows.append((label, {k.removeprefix("cost/"): v for k, v in cost.items()}))
        except (Exception, SystemExit) as err:  # noqa: BLE001 - a variant that cannot run is reported
            rows.append((label, {"error": (str(err).splitlines() or [type(err).__name__])[0][:120]}))
        print(f"  {label}: {rows[-1][1]}", flush=True)
    return rows


def inference(args: argparse.Namespace) -> None:
    import torch
    from torchao.quantization import (
        Float8DynamicActivationFloat8WeightConfig,
        Int8DynamicActivationInt8WeightConfig,
        Int8WeightOnlyConfig,
        quantize_,
    )

    from genexp.models.transformer import Transformer

    torch.manual_seed(0)
    float_net = Transformer(65, 256, 8, 8, 512, 0.0, False).cuda().to(torch.bfloat16).eval()
    idx = torch.randint(65, (16, 256), device="cuda")
    variants = [
        ("bf16", None),
        ("int8 weight-only", Int8WeightOnlyConfig()),
        ("int8 dynamic", Int8DynamicActivationInt8WeightConfig()),
        ("float8 dynamic", Float8DynamicActivationFloat8WeightConfig()),
    ]
    print("\nInference: GPT 8 x 512, batch 16 x 256 tokens, eager, CUDA events (median of 50)")
    print("| variant | ms | x bf16 |\n|---|---:|---:|")
    base = None
    for label, config in variants:
        try:
            net = copy.deepcopy(float_net)
            if config is not None:
                quantize_(net, config)
            ms = cuda_ms(net, idx)
        except Exception as err:  # noqa: BLE001 - e.g. float8 below compute capability 8.9
            print(f"| {label} | not run: {str(err).splitlines()[0][:100]} | |", flush=True)
            continue
        base = base or ms
        print(f"| {label} | {ms:.3f} | {ms / base:.2f} |", flush=True)


def cuda_ms(net, idx, repeats: int = 50, warmup: int = 5) -> float:
    import torch

    with torch.inference_mode():
        for _ in range(warmup):
            net(idx)
        torch.cuda.synchronize()
        times = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            net(idx)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="a UTF-8 text (Tiny Shakespeare)")
    parser.add_argument("--steps", type=int, default=200, help="training steps per variant")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU on this machine; nothing to measure (exit 0)")
        return
    if not args.data.is_file():  # any text will do for throughput and memory: this repository's README
        args.data = REPO / "README.md"
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, data {args.data}")
    table(f"Training: GPT 8 x 512, context 256, batch 32, {args.steps} steps", run_all(TRAINING, args))
    table("Optimizer states (bf16-mixed)", run_all(OPTIMIZERS, args))
    inference(args)


if __name__ == "__main__":
    main()
