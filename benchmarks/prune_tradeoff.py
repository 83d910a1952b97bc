"""Pruning trade-offs, measured: quality at 80% sparsity (GPT) and latency of 50% channel pruning (VAE, GAN).

(a) GPT on Tiny Shakespeare (``experiment=gpt_shakespeare_cpu``): a dense run and a run with 80% global
    l1_unstructured pruning (cubic ramp), same total steps; the target is val loss within 5% of dense.
(b) Every image family present (VAE, GAN): 50% ln_structured channel pruning (dim=0, per layer) of
    ``deployable()``, CPU latency of: the dense net, the masked net (masks alone speed nothing up), and
    the net after ``compression.slim`` physically removes the channels it can remove *exactly*
    (max |output difference| is printed), next to a dense net of half the width for reference.

Families whose module (``genexp.models.gpt`` / ``gan``) or experiment config is missing are skipped with
a message. Run from the repository root:

    PYTHONPATH=src python benchmarks/prune_tradeoff.py              # everything available
    PYTHONPATH=src python benchmarks/prune_tradeoff.py --skip-gpt   # only (b), ~1 minute
"""

from __future__ import annotations

import argparse
import importlib
import math
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from _harness import CONF, genexp_train, read_json
from _slim import slim
from genexp.compression.prune import PruningCallback
from genexp.compression.targets import deployable_of
from genexp.deploy.costs import measure
from genexp.deploy.latency import cpu_latency_ms
from genexp.runtime.build import build_datamodule, build_model


def available(family: str) -> bool:
    """True when ``genexp.models.<family>`` imports and ``conf/model/<family>.yaml`` exists."""
    try:
        importlib.import_module(f"genexp.models.{family}")
    except ImportError as err:
        print(f"[skip] {family}: genexp.models.{family} cannot be imported ({err})")
        return False
    if not (CONF / "model" / f"{family}.yaml").is_file():
        print(f"[skip] {family}: conf/model/{family}.yaml is missing")
        return False
    return True


def composed(overrides: list[str]) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


# ----- (a) GPT: val loss, dense vs 80% sparse ---------------------------------------------------------
def run_cli(args: list[str], run_dir: Path) -> dict[str, Any]:
    genexp_train(args, run_dir, log=run_dir.parent / f"{run_dir.name}.log")
    out = {"metrics": read_json(run_dir / "metrics.json")}
    if (run_dir / "compression.json").is_file():
        out["compression"] = read_json(run_dir / "compression.json")
    return out


def gpt_quality(extra: list[str], work: Path) -> list[dict[str, Any]]:
    if not available("gpt"):
        return []
    if not (CONF / "experiment" / "gpt_shakespeare_cpu.yaml").is_file():
        print("[skip] gpt: conf/experiment/gpt_shakespeare_cpu.yaml is missing")
        return []
    base = ["experiment=gpt_shakespeare_cpu", "test=false", *extra]
    epochs = int(composed(base).trainer.max_epochs)
    start, end = epochs // 5, max(epochs // 5, epochs - 2)  # 10 epochs: ramp over epochs 2..8, then fine-tune
    prune = [
        "compression=[prune]",
        "compression.prune.final_sparsity=0.8",
        "compression.prune.method=l1_unstructured",
        "compression.prune.scope=global",
        f"compression.prune.start_epoch={start}",
        f"compression.prune.end_epoch={end}",
    ]
    dense = run_cli(base, work / "gpt_dense")
    pruned = run_cli([*base, *prune], work / "gpt_prune80")
    d, p = dense["metrics"]["val/loss"], pruned["metrics"]["val/loss"]
    c = pruned["compression"]
    return [
        {"run": "gpt dense", "sparsity": 0.0, "val/loss": d, "ratio": 1.0, "bytes_sparse": math.nan},
        {
            "run": f"gpt 80% global l1 (epochs {start}-{end} of {epochs})",
            "sparsity": c["achieved_sparsity"],
            "val/loss": p,
            "ratio": p / d,
            "bytes_sparse": c["deployable/bytes_sparse"] / c["deployable/bytes_dense"],
        },
    ]


# ----- (b) latency of 50% structured channel pruning -------------------------------------------------
def build(overrides: list[str]) -> torch.nn.Module:
    cfg = composed(overrides)
    model = build_model(cfg, build_datamodule(cfg))
    return model.eval()


def channel_latency(
    family: str, extra: list[str], batch: int, repeats: int, rounds: int
) -> list[dict[str, Any]]:
    """Latency of dense / masked / slim (/ half-width) nets, timed round-robin so load drift hits all alike."""
    overrides = [f"model={family}", "data=digits", "data.image_size=32", *extra]
    model = build(overrides)
    x = model.example_input(batch)
    args = x if isinstance(x, tuple) else (x,)
    dense_net = deployable_of(model)

    pruned_model = build(overrides)
    pruned_model.load_state_dict(model.state_dict())
    masked_net = deployable_of(pruned_model)
    PruningCallback(method="ln_structured", dim=0, scope="layer", final_sparsity=0.5).prune_to(
        masked_net, 0.5
    )
    slim_net, removed = slim(masked_net)
    with torch.no_grad():
        max_diff = float((slim_net(*args) - masked_net(*args)).abs().max())

    nets = {
        f"{family} dense": (dense_net, 0.0),
        f"{family} 50% channels masked": (masked_net, 0.0),
        f"{family} masked + slim ({removed} ch removed)": (slim_net, max_diff),
    }
    if family == "vae":  # what removing half of every channel would give, as a dense architecture
        half = build([*overrides, f"model.hidden_channels={model.hparams.hidden_channels // 2}"])
        nets["vae dense, half width (reference)"] = (deployable_of(half), math.nan)

    times: dict[str, list[float]] = {name: [] for name in nets}
    for _ in range(rounds):
        for name, (net, _) in nets.items():
            times[name].append(cpu_latency_ms(net, x, repeats=repeats, warmup=2))
    rows = []
    for name, (net, diff) in nets.items():
        numbers = measure(net)
        latency = statistics.median(times[name])
        rows.append(
            {
                "net": name,
                "params": numbers["params"],
                "nonzero": numbers["nonzero"],
                "latency_ms": latency,
                "speedup": statistics.median(times[f"{family} dense"]) / latency,
                "max_diff": diff,
            }
        )
    return rows


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "-" if math.isnan(v) else f"{v:.4g}"
        return str(v)

    cells = [[cell(r[c]) for c in columns] for r in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = [" | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("-+-".join("-" * w for w in widths))
    lines += [" | ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-gpt", action="store_true", help="only the latency part (b)")
    parser.add_argument(
        "--gpt-override", action="append", default=[], help="extra override for both GPT runs"
    )
    parser.add_argument("--batch", type=int, default=64, help="latency batch size")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per net per round")
    parser.add_argument(
        "--rounds", type=int, default=5, help="round-robin rounds over the nets (median of medians)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads for latency")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    latency: list[dict[str, Any]] = []
    for family in ("vae", "gan"):
        if available(family):
            latency += channel_latency(family, [], args.batch, args.repeats, args.rounds)
    print(
        f"\n(b) 50% ln_structured (dim=0, per layer) channel pruning, CPU latency, batch {args.batch}, "
        f"{args.threads} thread(s), median over {args.rounds} interleaved rounds of {args.repeats}; "
        "speedup = dense / this; max_diff = |slim - masked| output"
    )
    print(table(latency, ["net", "params", "nonzero", "latency_ms", "speedup", "max_diff"]))

    if not args.skip_gpt:
        with tempfile.TemporaryDirectory(prefix="prune_tradeoff_") as tmp:
            quality = gpt_quality(args.gpt_override, Path(tmp))
        if quality:
            print(
                "\n(a) GPT gpt_shakespeare_cpu, same total steps; ratio = val/loss / dense val/loss "
                "(target <= 1.05); bytes_sparse = sparse / dense state-dict bytes"
            )
            print(table(quality, ["run", "sparsity", "val/loss", "ratio", "bytes_sparse"]))


if __name__ == "__main__":
    main()
