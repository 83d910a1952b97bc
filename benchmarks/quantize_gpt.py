"""Quantization, measured: int8 GPT against fp32 (latency eager and compiled, Linear bytes, val loss, QAT vs PTQ),
and the GAN and VAE (size, latency, domain FID) before and after int8.

    python benchmarks/quantize_gpt.py --steps 2000          # the full gpt_shakespeare_cpu recipe
    python benchmarks/quantize_gpt.py --steps 400           # shorter: 10 epochs x 40 batches
    python benchmarks/quantize_gpt.py --ckpt RUN/checkpoints/last.ckpt --skip-images  # no QAT row
    python benchmarks/quantize_gpt.py --skip-gpt --vae RUN --gan RUN  # score finished runs

GPT (``experiment=gpt_shakespeare_cpu``, ``--steps`` AdamW steps over 10 epochs, same seed):
- fp32: a plain run; PTQ: ``QuantizationCallback(mode="ptq")`` on its final weights;
- QAT: a second run with ``compression=[quantize] compression.quantize.mode=qat`` from epoch
  ``10 - --qat-epochs``; its artifact (``<run>/quantized``) is loaded with ``load_deployable``.
Val loss is the mean cross-entropy (nats/char) over the validation batches. Latency: one forward of a
(16, 64) batch, median of interleaved rounds in this process (so every variant sees the same machine
load), eager and ``torch.compile`` (inductor, ``freezing=True`` for all variants, fp32 included).
Variants: fp32, int8_dynamic as the callback ships it (asymmetric per-token activations, what QAT
simulates), int8_dynamic with symmetric activations (a speed variant), int8_weight_only.

Images: ``genexp-train`` (VAE, default recipe) and ``experiment=gan_digits``, each with
``compression=[quantize]`` (ptq): fp32 = ``last.ckpt`` (the fit-end weights), int8 = the run's artifact.
FID is the domain-classifier FID of ``genexp.metrics`` (1,000 samples vs the test split, same noise).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from _harness import SHAKESPEARE, genexp_train
from genexp.checkpoints.rebuild import load_any, load_deployable, load_model
from genexp.compression.quantize import QuantizationCallback
from genexp.deploy.costs import measure, weight_bytes
from genexp.deploy.latency import cpu_latency_ms
from genexp.deploy.layers import CONV_TYPES as CONVS

GPT = ["experiment=gpt_shakespeare_cpu", f"data.path={SHAKESPEARE}"]


def train(args: list[str], run_dir: Path) -> Path:
    env = {"GENEXP_DATA_DIR": str(run_dir.parent / "data")}
    seconds = genexp_train([*args, "callbacks.progress_bar=null"], run_dir, env=env)
    print(f"  done in {seconds:.0f}s: {run_dir}", flush=True)
    return run_dir


def load(ckpt: Path):
    loaded = load_model(ckpt)
    loaded.datamodule.setup("fit")
    return loaded.model.eval(), loaded.datamodule, OmegaConf.create(loaded.config)


@torch.no_grad()
def val_loss(net: nn.Module, datamodule) -> float:
    losses = [
        F.cross_entropy(net(x).flatten(0, 1).float(), y.flatten()).item()
        for x, y in datamodule.val_dataloader()
    ]
    return sum(losses) / len(losses)


def int8_variants(float_net: nn.Module) -> dict[str, nn.Module]:
    """PTQ int8 copies of ``float_net``: as the callback ships it, plus torchao speed variants."""
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    out = {}
    for scheme in ("int8_dynamic", "int8_weight_only"):
        cb = QuantizationCallback(mode="ptq", scheme=scheme, latency_repeats=0)
        out[f"{scheme}" + (" (asym act, shipped)" if scheme == "int8_dynamic" else "")] = cb.convert(
            float_net
        )[1]
    sym = copy.deepcopy(float_net).eval()
    targets = set(QuantizationCallback(mode="ptq").convert(float_net)[2]["recipe"]["layers"])
    quantize_(sym, Int8DynamicActivationInt8WeightConfig(), filter_fn=lambda m, fqn: fqn in targets)
    out["int8_dynamic (sym act)"] = sym
    return out


def latency_table(
    nets: dict[str, nn.Module], example: torch.Tensor, rounds: int, repeats: int
) -> dict[str, dict]:
    import torch._inductor.config as inductor

    inductor.freezing = True
    variants: dict[tuple[str, str], Any] = {}
    for name, net in nets.items():
        variants[(name, "eager")] = net.eval()
        start = time.perf_counter()
        compiled = torch.compile(net)
        with torch.no_grad():
            compiled(example)
        print(f"  compiled {name} in {time.perf_counter() - start:.0f}s", flush=True)
        variants[(name, "compiled")] = compiled
    times: dict[tuple[str, str], list[float]] = {k: [] for k in variants}
    for _ in range(rounds):  # interleaved: every variant sees the same machine load
        for key, fn in variants.items():
            times[key].append(cpu_latency_ms(fn, example, repeats=repeats, warmup=1))
    return {k: statistics.median(v) for k, v in times.items()}


def gpt_section(args: argparse.Namespace, scratch: Path) -> None:
    qat_net = None
    if args.ckpt:
        model, datamodule, _ = load(args.ckpt)
        print("[QAT row skipped: --ckpt given; QAT needs its own training run]")
    else:
        per_epoch = max(1, args.steps // 10)
        common = [
            *GPT,
            f"data.batches_per_epoch={per_epoch}",
            f"scheduler.scheduler.total_steps={per_epoch * 10}",
            f"scheduler.scheduler.warmup_steps={min(100, per_epoch * 10 // 20)}",
            "model.sample_every_n_epochs=0",  # text samples each epoch cost more than a short run's training
            "test=false",
        ]
        fp32_run = train(common, scratch / "gpt_fp32")
        qat_run = train(
            [
                *common,
                "compression=[quantize]",
                "compression.quantize.mode=qat",
                "compression.quantize.scheme=int8_dynamic",
                f"compression.quantize.start_epoch={10 - args.qat_epochs}",
            ],
            scratch / "gpt_qat",
        )
        model, datamodule, _ = load(fp32_run / "checkpoints" / "last.ckpt")
        qat_net = load_deployable(qat_run / "quantized")
    float_net = model.deployable().eval()
    nets = {"fp32": float_net, **int8_variants(float_net)}
    if qat_net is not None:
        nets["QAT int8_dynamic (asym act)"] = qat_net
    losses = {name: val_loss(net, datamodule) for name, net in nets.items()}
    linear_bytes = {name: weight_bytes(net, (nn.Linear,)) for name, net in nets.items()}
    total_bytes = {name: measure(net, repeats=0)["bytes_dense"] for name, net in nets.items()}
    example = model.example_input(16)
    lat = latency_table(
        {k: v for k, v in nets.items() if k != "QAT int8_dynamic (asym act)"},
        example,
        args.rounds,
        args.repeats,
    )

    steps = "from --ckpt" if args.ckpt else f"{max(1, args.steps // 10) * 10} steps"
    print(f"\nGPT gpt_shakespeare_cpu ({steps}), CPU threads {torch.get_num_threads()}, batch (16, 64)")
    head = f"{'variant':30s} {'val loss':>9s} {'vs fp32':>8s} {'Linear MB':>10s} {'x smaller':>9s} {'total MB':>9s}"
    head += f" {'eager ms':>9s} {'x faster':>8s} {'compiled ms':>11s} {'x faster':>8s}"
    print(head)
    for name in nets:
        row = f"{name:30s} {losses[name]:9.5f} {losses[name] / losses['fp32'] - 1:+8.3%} "
        row += f"{linear_bytes[name] / 1e6:10.3f} {linear_bytes['fp32'] / linear_bytes[name]:9.2f} {total_bytes[name] / 1e6:9.3f}"
        if (name, "eager") in lat:
            e, c = lat[(name, "eager")], lat[(name, "compiled")]
            row += (
                f" {e:9.1f} {lat[('fp32', 'eager')] / e:8.2f} {c:11.1f} {lat[('fp32', 'compiled')] / c:8.2f}"
            )
        print(row)
    if qat_net is not None:
        print(
            f"QAT vs PTQ (int8_dynamic, asym act): val loss {losses['QAT int8_dynamic (asym act)']:.4f} vs "
            f"{losses['int8_dynamic (asym act, shipped)']:.4f} (fp32 {losses['fp32']:.4f}; QAT from epoch {10 - args.qat_epochs})"
        )


def image_section(args: argparse.Namespace, scratch: Path) -> None:
    from genexp.metrics.features import DomainFeatures, load_or_train_classifier
    from genexp.metrics.scores import QualityScorer

    rows = []
    scorer = None
    for name, recipe in (("VAE", []), ("GAN", ["experiment=gan_digits"])):
        run = getattr(args, name.lower()) or train(
            [
                *recipe,
                "compression=[quantize]",
                "compression.quantize.mode=ptq",
                "compression.quantize.scheme=int8_weight_only",
            ],
            scratch / name.lower(),
        )
        model, datamodule, cfg = load(run / "checkpoints" / "last.ckpt")
        quant_model = load_any(run / "quantized").model.eval()
        if scorer is None:
            classifier = load_or_train_classifier(
                Path(cfg.paths.data_dir), datamodule.name, datamodule.resize, datamodule.seed,
                datamodule.train_set.tensors, datamodule.test_set.tensors,
            )  # fmt: skip
            scorer = QualityScorer(
                DomainFeatures(classifier.model), classifier.model, datamodule.test_set.tensors
            )
        example = model.example_input(16)
        for label, m in (("fp32", model), ("int8 ptq", quant_model)):
            torch.manual_seed(0)
            with torch.no_grad():
                fid = scorer.score(m.sample(1000).float().clamp(0, 1))["fid"]
            net = m.deployable().eval()
            rows.append(
                (
                    name,
                    label,
                    measure(net, repeats=0)["bytes_dense"],
                    weight_bytes(net, CONVS),
                    fid,
                    net,
                    example,
                )
            )
    lat = {}
    for _ in range(args.rounds):
        for name, label, *_, net, example in rows:
            lat.setdefault((name, label), []).append(
                cpu_latency_ms(net, example, repeats=args.repeats, warmup=1)
            )
    print("\nImages (digits 16x16), batch 16, eager CPU; FID: domain classifier, 1000 samples vs test split")
    print(f"{'model':5s} {'variant':11s} {'bytes':>9s} {'conv bytes':>10s} {'latency ms':>10s} {'FID':>8s}")
    for name, label, size, conv, fid, *_ in rows:
        print(
            f"{name:5s} {label:11s} {size:9d} {conv:10d} {statistics.median(lat[(name, label)]):10.2f} {fid:8.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=2000, help="GPT AdamW steps (10 epochs); recipe: 2000")
    parser.add_argument(
        "--qat-epochs", type=int, default=2, help="QAT run: fake quantization in the last N epochs"
    )
    parser.add_argument(
        "--ckpt", type=Path, help="a gpt_shakespeare_cpu checkpoint instead of training (no QAT row)"
    )
    parser.add_argument("--rounds", type=int, default=5, help="interleaved latency rounds")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per round")
    parser.add_argument(
        "--vae", type=Path, help="a finished VAE run with compression=[quantize] (no training)"
    )
    parser.add_argument("--gan", type=Path, help="a finished gan_digits run with compression=[quantize]")
    parser.add_argument("--skip-gpt", action="store_true")
    parser.add_argument("--skip-images", action="store_true")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="genexp-quantize-"))
    print(f"scratch: {scratch} (the machine may be shared: latencies are interleaved in one process)")
    if (
        not args.skip_images
    ):  # first: eager latencies of the image nets read high after torch.compile ran here
        image_section(args, scratch)
    if not args.skip_gpt:
        gpt_section(args, scratch)
    print(json.dumps({"scratch": str(scratch)}))


if __name__ == "__main__":
    main()
