"""What the export's graph rewrites buy: the GAN generator's first transposed conv as one Gemm.

``genexp-export`` swaps the generator's first layer (a stride-1 transposed conv on the 1x1 latent, then
BatchNorm) for one ``Gemm`` (``genexp.deploy.onnx_conv``). This script exports the ``experiment=gan_digits``
generator (latent 100, 64 channels, 16x16 digits; timing does not depend on the weights, so it is built fresh)
with and without that rewrite, and times torch eager, ORT without and ORT with it, interleaved in one process,
at batch 64 and 1; that is repeated in ``--trials`` fresh processes (a process's timings on a small VM can sit
10-40% off the next one's). The table: median ms over the processes, and ratios as median (lowest-highest).

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

import torch

from _harness import add_trial_options, latency_header, spread, trial_processes
from genexp.deploy import latency
from genexp.deploy.onnx_conv import project_latent
from genexp.deploy.onnx_export import Graph, export_graph
from genexp.deploy.onnx_runtime import open_session, session_call
from genexp.models.dcgan import Generator

VARIANTS = ("torch fp32 eager", "ORT, as torch.onnx writes it", "ORT, first layer as one Gemm")


def one_process(
    channels: int, latent: int, repeats: int, rounds: int, folder: Path
) -> dict[str, dict[str, float]]:
    """ms per variant and batch, interleaved in this process."""
    torch.manual_seed(0)
    generator = Generator((1, 16, 16), latent, channels).eval()
    rewritten = copy.deepcopy(generator)
    assert project_latent(rewritten)
    axes = {"z": {0: "batch"}, "images": {0: "batch"}}
    z = torch.randn(2, latent)
    paths = [
        export_graph(Graph("g", net, (z,), ["z"], ["images"], axes), folder / f"{name}.onnx", 17)
        for name, net in (("plain", generator), ("gemm", rewritten))
    ]
    sessions = [open_session(path) for path in paths]
    calls = {}
    for batch in (64, 1):
        example = torch.randn(batch, latent)
        calls[(VARIANTS[0], batch)] = latency.torch_call(generator, example)
        for variant, session in zip(VARIANTS[1:], sessions, strict=True):
            calls[(variant, batch)] = session_call(session, {"z": example.numpy()})
    timed = latency.interleaved_latency(calls, repeats, 3, rounds)  # type: ignore[arg-type]
    out: dict[str, dict[str, float]] = {}
    for (variant, batch), numbers in timed.items():
        out.setdefault(variant, {})[str(batch)] = numbers["median_ms"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--channels", type=int, default=64, help="model.g_channels (gan_digits: 64)")
    parser.add_argument("--latent", type=int, default=100, help="model.latent_dim (gan_digits: 100)")
    add_trial_options(parser)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="onnx_rewrites-"))
    if args.trial_json:
        result = one_process(args.channels, args.latent, args.repeats, args.rounds, folder)
        Path(args.trial_json).write_text(json.dumps(result))
        return
    trial_args = [
        "--channels",
        str(args.channels),
        "--latent",
        str(args.latent),
        "--repeats",
        str(args.repeats),
        "--rounds",
        str(args.rounds),
    ]
    trials = trial_processes(__file__, trial_args, args.trials, folder)

    print(
        f"\n{latency_header()}; {len(trials)} processes x {args.repeats} calls in "
        f"{args.rounds} interleaved rounds; GAN generator, {args.channels} channels, latent {args.latent}\n"
    )
    print("| variant | batch 64, ms | x torch | x unrewritten | batch 1, ms | x torch | x unrewritten |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for variant in VARIANTS:
        cells = []
        for batch in ("64", "1"):
            ms = [t[variant][batch] for t in trials]
            cells += [
                f"{statistics.median(ms):.3f}",
                spread([t[VARIANTS[0]][batch] / t[variant][batch] for t in trials]),
            ]
            cells.append(
                spread([t[VARIANTS[1]][batch] / t[variant][batch] for t in trials])
                if variant != VARIANTS[0]
                else "–"
            )
        print(f"| {variant} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
