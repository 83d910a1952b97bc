"""What the export's graph rewrites buy, per backend: the GAN generator's first transposed conv as one Gemm, and
the strided transposed convs of the GAN generator and the VAE decoder as sub-pixel convs.

``genexp-export`` swaps the generator's first layer (a stride-1 transposed conv on the 1x1 latent, then
BatchNorm) for one ``Gemm`` in every graph, and writes each conv net twice: ``model.onnx`` as torch.onnx writes
its strided transposed convs, and ``model.subpixel.onnx`` with them as ``Conv2d`` + ``DepthToSpace``
(``genexp.deploy.onnx_conv``); every backend is timed on both and the fastest ships. This script builds the
``experiment=gan_digits`` generator (latent 100, 64 channels, 16x16 digits) and the default VAE (32 channels,
latent 16; its full graph, images to reconstruction), fresh (timing does not depend on the weights), exports
each variant and times torch eager and every variant on ONNX Runtime fp32 and OpenVINO (bf16 where the CPU has
it, else fp32; when installed), interleaved in one process at batch 64 and 1. That is repeated in ``--trials``
fresh processes (a process's timings on a small VM can sit 10-40% off the next one's). The table: median ms
over the processes, and ratios as median (lowest-highest).

    python benchmarks/onnx_rewrites.py
    python benchmarks/onnx_rewrites.py --trials 5 --channels 32
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from _harness import add_trial_options, latency_header, spread, trial_processes
from genexp.deploy import latency, openvino_runtime
from genexp.deploy.backends import Backend
from genexp.deploy.onnx_conv import project_latent, subpixel_copy
from genexp.deploy.onnx_export import Graph, export_graph
from genexp.deploy.onnx_runtime import session_call
from genexp.models.dcgan import Generator
from genexp.models.vae_net import VAENet

TORCH = "torch fp32 eager"
BATCHES = ("64", "1")


def graphs(net: str, channels: int, latent: int) -> tuple[nn.Module, dict[str, nn.Module], torch.Size]:
    """``(torch module, {graph label: module to export}, input shape without the batch)`` of one net."""
    torch.manual_seed(0)
    if net == "gan":
        generator = Generator((1, 16, 16), latent, channels).eval()
        gemm = copy.deepcopy(generator)
        assert project_latent(gemm)
        labels = {
            "as torch.onnx writes it": generator,
            "first layer as one Gemm": gemm,
            "Gemm + sub-pixel convs": subpixel_copy(gemm)[0],
        }
        return generator, labels, torch.Size([latent])
    vae = VAENet((1, 16, 16), channels // 2, 16).eval()
    labels = {"as torch.onnx writes it": vae, "sub-pixel convs": subpixel_copy(vae)[0]}
    return vae, labels, torch.Size([1, 16, 16])


def backends() -> list[Backend]:
    """ONNX Runtime fp32, and OpenVINO at its best float precision here when it is installed."""
    found = [Backend("onnxruntime", "fp32")]
    if openvino_runtime.available():
        found.append(Backend("openvino", openvino_runtime.precisions()[-1]))
    return found


def variant_name(backend: Backend, label: str) -> str:
    runtime = "ORT" if backend.runtime == "onnxruntime" else f"OpenVINO {backend.precision}"
    return f"{runtime}, {label}"


def one_process(
    net: str, channels: int, latent: int, repeats: int, rounds: int, folder: Path
) -> dict[str, dict[str, float]]:
    """ms per variant and batch, interleaved in this process."""
    module, labels, shape = graphs(net, channels, latent)
    axes = {"x": {0: "batch"}, "y": {0: "batch"}}
    example = torch.randn(2, *shape)
    paths = {
        label: export_graph(Graph("g", m, (example,), ["x"], ["y"], axes), folder / f"{i}.onnx", 17)
        for i, (label, m) in enumerate(labels.items())
    }
    sessions = {
        variant_name(b, label): b.open(path, key="benchmark")
        for b in backends()
        for label, path in paths.items()
    }
    calls: dict[tuple[str, int], Any] = {}
    for batch in (int(b) for b in BATCHES):
        x = torch.randn(batch, *shape)
        calls[(TORCH, batch)] = latency.torch_call(module, (x,))
        for variant, session in sessions.items():
            calls[(variant, batch)] = session_call(session, {"x": x.numpy()})
    timed = latency.interleaved_latency(calls, repeats, 3, rounds)  # type: ignore[arg-type]
    out: dict[str, dict[str, float]] = {}
    for (variant, batch), numbers in timed.items():
        out.setdefault(variant, {})[str(batch)] = numbers["median_ms"]
    return out


def print_table(net: str, trials: list[dict[str, dict[str, float]]]) -> None:
    """One markdown table: ms, x torch and x the same backend on the unrewritten graph, per batch."""
    variants = list(trials[0])
    print(f"\n{net}:\n")
    print("| variant | batch 64, ms | x torch | x unrewritten | batch 1, ms | x torch | x unrewritten |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for variant in variants:
        plain = variant.split(", ")[0] + ", as torch.onnx writes it"
        cells = []
        for batch in BATCHES:
            ms = [t[variant][batch] for t in trials]
            cells += [
                f"{statistics.median(ms):.3f}",
                spread([t[TORCH][batch] / t[variant][batch] for t in trials]),
            ]
            cells.append(
                spread([t[plain][batch] / t[variant][batch] for t in trials]) if variant != TORCH else "–"
            )
        print(f"| {variant} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--channels",
        type=int,
        default=64,
        help="the GAN's model.g_channels (gan_digits: 64); "
        "the VAE gets half (its default hidden_channels: 32)",
    )
    parser.add_argument(
        "--latent", type=int, default=100, help="the GAN's model.latent_dim (gan_digits: 100)"
    )
    parser.add_argument("--nets", nargs="+", default=["gan", "vae"], choices=["gan", "vae"])
    add_trial_options(parser)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="onnx_rewrites-"))
    if args.trial_json:
        result = {
            net: one_process(net, args.channels, args.latent, args.repeats, args.rounds, folder / net)
            for net in args.nets
        }
        Path(args.trial_json).write_text(json.dumps(result))
        return
    options = {"--channels": args.channels, "--latent": args.latent, "--repeats": args.repeats}
    trial_args = [str(v) for item in options.items() for v in item]
    trial_args += ["--rounds", str(args.rounds), "--nets", *args.nets]
    trials = trial_processes(__file__, trial_args, args.trials, folder)
    print(
        f"\n{latency_header()}; {len(trials)} processes x {args.repeats} calls in {args.rounds} interleaved "
        f"rounds; GAN generator {args.channels} channels, latent {args.latent}; VAE {args.channels // 2} channels"
    )
    for net in args.nets:
        print_table(net, [t[net] for t in trials])


if __name__ == "__main__":
    main()
