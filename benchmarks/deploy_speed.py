"""How much faster the ONNX deployables are: torch fp32 eager vs ONNX Runtime fp32 and int8, dense vs 50% structured.

Every variant of every run is timed interleaved in one process (alternating rounds), at batch 1 and at the
family's batch (GPT 16x64, GAN/VAE 64); ratios are against the *dense run's torch fp32 eager* at the same
batch. That is repeated in ``--trials`` fresh processes (3 by default): on a small VM one process's timings
can sit 10-40% off the next one's (thread placement, memory layout), so the table gives the median time and
the median (min-max) ratio over processes. Quality: the family's test metric (GPT test loss, VAE -ELBO, GAN
domain FID) of each variant on the same split; GPT generation tokens/s for 256 new tokens, without and with the
key/value cache (``x cache``: cache / no cache of the same variant; ``benchmarks/generation.py`` has the
interleaved table and the quality check). The CPU, its
int8/bf16 flags, the thread count and ``OMP_WAIT_POLICY`` are printed: leave that unset, as a deployment
would (``PASSIVE`` slows torch eager, not ONNX Runtime, and the script warns).

    python benchmarks/deploy_speed.py --run outputs/train/runs/<dense> --run outputs/train/runs/<pruned>
    python benchmarks/deploy_speed.py --train gpt --override data.path=../shared/data/tinyshakespeare/input.txt
    python benchmarks/deploy_speed.py --train vae --train gan                 # digits: no download
    python benchmarks/deploy_speed.py --train vae --quick                     # a smoke test (1 epoch, few batches)

``--train FAMILY`` trains two runs with genexp-train: the family's recipe (``experiment=gpt_shakespeare_cpu``,
``experiment=gan_digits``, the default VAE) and the same with ``compression=[prune]
compression.prune.method=ln_structured final_sparsity=0.5`` on the cubic schedule (heads, MLP units and conv
channels removed at fit end; the GPT with ``scope=layer``: half the heads and half the MLP units of each block).
GPT graphs are exported with the fused attention op (``genexp-export``'s default ``fused_attention=true``).
Timings under load are worthless: run it on a quiet machine."""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from _harness import add_trial_options, genexp_train, latency_header, spread, trial_processes
from generation import steps as generation_steps
from genexp.checkpoints.rebuild import load_any
from genexp.deploy import latency
from genexp.deploy.onnx_package import write_package
from genexp.deploy.onnx_runtime import open_session, session_call
from genexp.exporters.registry import family_of as export_family
from genexp.exporters.registry import graphs_of, install_graphs
from genexp.models.gpt import GPT
from genexp.report.family import family_of
from genexp.report.measure_run import test_quality
from genexp.runtime.run_folder import find_checkpoint

RECIPES = {
    "gpt": ["experiment=gpt_shakespeare_cpu"],
    "gan": ["experiment=gan_digits"],
    "vae": [],
}
PRUNE = [
    "compression=[prune]",
    "compression.prune.method=ln_structured",
    "compression.prune.final_sparsity=0.5",
    "compression.prune.start_epoch=2",
    "compression.prune.end_epoch=8",
    "compression.prune.latency_repeats=0",
]
QUICK = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=2",
    "compression.prune.start_epoch=0",
    "compression.prune.end_epoch=0",
    "callbacks.sample_quality=null",
    "callbacks.model_checkpoint.monitor=val/loss",
]  # the GAN's val/fid comes from sample_quality
BATCH = {"gpt": 16, "gan": 64, "vae": 64}
# The GPT's heads own 16k weights each and its MLP units 256: one global ranking prunes MLP units only, so each
# block loses half of its heads and half of its MLP units (``scope=layer``); conv channels rank globally.
PRUNE_SCOPE = {"gpt": ["compression.prune.scope=layer"], "gan": [], "vae": []}


def train(family: str, overrides: list[str], quick: bool, root: Path) -> list[Path]:
    """The dense and the 50% structured run of ``family`` (genexp-train in a subprocess)."""
    runs = []
    for name, extra in (("dense", []), ("structured50", PRUNE + PRUNE_SCOPE[family])):
        run = root / f"{family}_{name}"
        args = [*RECIPES[family], *overrides, *extra, f"hydra.run.dir={run}", "callbacks.progress_bar=null"]
        if quick:
            args += [q for q in QUICK if extra or "prune" not in q]
            args = [a for a in args if not (a.startswith("callbacks.sample_quality") and family != "gan")]
        genexp_train(args, env={"OMP_WAIT_POLICY": "PASSIVE"})
        runs.append(run)
    return runs


def callbacks_for(family: str, data_dir: Path) -> list[Any]:
    if family != "gan":
        return []
    from genexp.callbacks.sample_quality import SampleQuality

    return [SampleQuality(cache_dir=str(data_dir), seed=12345)]


def measure_run(
    run: Path, out: Path, quality: bool, data_dir: Path, tolerance: float = 0.1
) -> dict[str, Any]:
    """Export one run (fp32 + int8) and build its variants: label -> (main graph call maker, quality)."""
    loaded = load_any(find_checkpoint(run, "--run"), key="--run")
    family = family_of(loaded.config)
    folder = out / run.name
    info = write_package(
        export_family(loaded.model, loaded.datamodule),
        folder,
        quantize="int8",
        tolerance=tolerance,
        batch_size=BATCH[family.name],
        timing={"repeats": 0},
    )
    trainer = {
        "_target_": "lightning.Trainer",
        "accelerator": "cpu",
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    variants: dict[str, Any] = {}
    for variant, suffix in (
        ("torch fp32 eager", None),
        ("onnxruntime fp32", ".onnx"),
        ("onnxruntime int8", ".int8.onnx"),
    ):
        if (
            suffix == ".int8.onnx" and "int8" not in info["variants"]
        ):  # missed its tolerance: a row that says so
            variants[variant] = {"suffix": suffix, "missed": info["int8"]["missed"]}
            continue
        if suffix is None:
            model = loaded.model
        else:
            sessions = {g.stem: open_session(folder / f"{g.stem}{suffix}") for g in graphs_of(loaded.model)}
            model = install_graphs(copy.deepcopy(loaded.model), sessions)
        metric = float("nan")
        if quality:
            metrics = test_quality(
                replace(loaded, model=model),
                OmegaConf.create(trainer),
                callbacks_for(family.name, data_dir),
                verbose=False,
            )
            metric = metrics.get(family.primary, float("nan"))
        variants[variant] = {"suffix": suffix, "quality": metric}
    params = sum(p.numel() for p in loaded.model.deployable().parameters())
    return {
        "run": run,
        "loaded": loaded,
        "family": family,
        "folder": folder,
        "variants": variants,
        "params": params,
    }


def timed_variants(item: dict[str, Any]) -> dict[str, Any]:
    """The variants that have a graph to time (an int8 graph that missed its tolerance has none)."""
    return {variant: spec for variant, spec in item["variants"].items() if "missed" not in spec}


def calls_for(item: dict[str, Any], batch: int) -> dict[str, Any]:
    main = graphs_of(item["loaded"].model, batch)[0]
    calls = {}
    for variant, spec in timed_variants(item).items():
        if spec["suffix"] is None:
            calls[variant] = latency.torch_call(main.module, main.example)
        else:
            session = open_session(item["folder"] / f"{main.stem}{spec['suffix']}")
            calls[variant] = session_call(session, {main.inputs[0]: main.example[0].numpy()})
    return calls


def generation(item: dict[str, Any]) -> dict[str, float]:
    model: GPT = item["loaded"].model
    main = graphs_of(model, 1)[0]
    prompt = model.encode(model.sample_prompt).cpu().numpy().reshape(1, -1)
    out = {}
    for variant, spec in timed_variants(item).items():
        if spec["suffix"] is None:

            def step(ids: Any, net: Any = main.module) -> Any:
                with torch.inference_mode():
                    return net(torch.from_numpy(ids))[:, -1].numpy()
        else:
            session = open_session(item["folder"] / f"model{spec['suffix']}")

            def step(ids: Any, s: Any = session) -> Any:
                return s.run(None, {"tokens": ids})[0][:, -1]

        out[variant] = latency.tokens_per_s(step, prompt, 256, model.block_size)
    return out


def generation_cached(item: dict[str, Any]) -> dict[str, float]:
    """Tokens/s with the key/value cache (``decoder_with_past``; benchmarks/generation.py has the full table)."""
    model: GPT = item["loaded"].model
    prompt = model.encode(model.sample_prompt).cpu().numpy().reshape(1, -1)
    calls = generation_steps(model, item["folder"])
    return {
        variant: latency.tokens_per_s_cached(
            calls[variant][1], calls[variant][2], prompt, 256, model.block_size
        )
        for variant in timed_variants(item)
        if variant in calls
    }


def time_items(items: list[dict[str, Any]], repeats: int, rounds: int) -> dict[str, Any]:
    """One process's timings: ``{run: {variant: {batch: ms}}}`` interleaved, and GPT generation tokens/s."""
    calls, where = {}, {}
    for i, item in enumerate(items):
        for batch in sorted({1, BATCH[item["family"].name]}):
            for variant, call in calls_for(item, batch).items():
                calls[(i, variant, batch)] = call
                where[(i, variant, batch)] = (item["run"].name, variant, str(batch))
    timed = latency.interleaved_latency(calls, repeats, 3, rounds)  # type: ignore[arg-type]
    out: dict[str, Any] = {"ms": {}, "tokens_per_s": {}, "tokens_per_s_cached": {}}
    for key, (run, variant, batch) in where.items():
        out["ms"].setdefault(run, {}).setdefault(variant, {})[batch] = timed[key]["median_ms"]
    for item in items:
        if item["family"].name == "gpt":
            out["tokens_per_s"][item["run"].name] = generation(item)
            out["tokens_per_s_cached"][item["run"].name] = generation_cached(item)
    return out


def print_table(items: list[dict[str, Any]], trials: list[dict[str, Any]], args: argparse.Namespace) -> None:
    policy = latency.omp_wait_policy()
    print(
        f"\n{latency_header()}; {len(trials)} process(es), each the median of {args.repeats} calls in {args.rounds} "
        "interleaved rounds; ms: median over processes; x = dense torch fp32 eager / this, median (min-max) "
        "over processes\n"
    )
    if policy.upper() == "PASSIVE":
        print(
            "warning: OMP_WAIT_POLICY=PASSIVE puts torch's OpenMP threads to sleep after every op: torch eager "
            "is 20-90% slower with it, ONNX Runtime (its own threads) is not, so the ratios flatter ONNX Runtime\n"
        )
    print(
        "| family | run | backend | params | quality | batch B, ms | x | batch 1, ms | x | tokens/s | x "
        "| tokens/s, cache | x cache |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    dense_of: dict[str, str] = {}
    for item in items:
        dense_of.setdefault(item["family"].name, item["run"].name)
    for item in items:
        fam, run = item["family"].name, item["run"].name
        base, big = dense_of[fam], str(BATCH[fam])
        for variant, spec in item["variants"].items():
            if "missed" in spec:
                missed = spec["missed"]
                print(
                    f"| {fam} | {run} | {variant} | {item['params']:,} | not written: relative error "
                    f"{missed['relative_error']:.3f} > tolerance {missed['tolerance']} | – | – | – | – | – | – | – | – |"
                )
                continue
            cells = []
            for batch in (big, "1"):
                ms = [t["ms"][run][variant][batch] for t in trials]
                ratios = [
                    t["ms"][base]["torch fp32 eager"][batch] / t["ms"][run][variant][batch] for t in trials
                ]
                cells += [f"{statistics.median(ms):.3f}", spread(ratios)]
            if fam == "gpt":
                tok = [t["tokens_per_s"][run][variant] for t in trials]
                ratios = [
                    t["tokens_per_s"][run][variant] / t["tokens_per_s"][base]["torch fp32 eager"]
                    for t in trials
                ]
                cells += [f"{statistics.median(tok):,.0f}", spread(ratios)]
                cached = [t["tokens_per_s_cached"][run][variant] for t in trials]
                gains = [
                    t["tokens_per_s_cached"][run][variant] / t["tokens_per_s"][run][variant] for t in trials
                ]
                cells += [f"{statistics.median(cached):,.0f}", spread(gains)]
            else:
                cells += ["–", "–", "–", "–"]
            print(
                f"| {fam} | {run} | {variant} | {item['params']:,} | {spec['quality']:.5g} | "
                + " | ".join(cells)
                + " |"
            )
    print(f"\n(batch B: GPT {BATCH['gpt']} windows of the context length, GAN/VAE 64)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", action="append", default=[], help="an existing run folder (dense first)")
    parser.add_argument(
        "--train", action="append", default=[], choices=sorted(RECIPES), help="train dense + 50%% structured"
    )
    parser.add_argument(
        "--override", action="append", default=[], help="genexp-train override for --train (every family)"
    )
    parser.add_argument("--quick", action="store_true", help="tiny training: checks that the script runs")
    add_trial_options(parser)
    parser.add_argument("--no-quality", action="store_true", help="skip the quality of each variant")
    parser.add_argument(
        "--tolerance", type=float, default=0.1, help="int8: largest relative error against fp32"
    )
    parser.add_argument(
        "--out", default=None, help="where trained runs and exports go (default: a temporary folder)"
    )
    args = parser.parse_args()
    # a trial process exports next to its JSON file (trial0/, trial1/, ...)
    root = (
        Path(args.trial_json).with_suffix("")
        if args.trial_json
        else Path(args.out or tempfile.mkdtemp(prefix="deploy_speed-"))
    )
    runs = [Path(r) for r in args.run]
    for family in args.train:
        runs += train(family, args.override, args.quick, root / "runs")
    if not runs:
        parser.error("give --run DIR or --train FAMILY")
    items = [
        measure_run(run, root / "exports", not args.no_quality, Path("data"), args.tolerance) for run in runs
    ]
    if args.trial_json:
        Path(args.trial_json).write_text(json.dumps(time_items(items, args.repeats, args.rounds)))
        return
    if args.trials > 1:
        trial_args = [
            "--no-quality",
            "--tolerance",
            str(args.tolerance),
            "--trials",
            "1",
            "--repeats",
            str(args.repeats),
            "--rounds",
            str(args.rounds),
            *[arg for run in runs for arg in ("--run", str(run))],
        ]
        trials = trial_processes(__file__, trial_args, args.trials, root)
    else:
        trials = [time_items(items, args.repeats, args.rounds)]
    print_table(items, trials, args)
    print(f"(exports in {root / 'exports'})")


if __name__ == "__main__":
    main()
