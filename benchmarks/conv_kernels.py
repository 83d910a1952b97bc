"""Why the GAN and VAE graphs are not 1.8x faster in ONNX Runtime: its conv kernels, layer by layer, against torch's.

Every conv and transposed conv of the ``gan_digits`` generator and of the default digits VAE, each alone at batch
64, timed as torch eager (oneDNN) and as ONNX Runtime's CPU kernel for the same layer; for the stride-2 transposed
convs also two rewrites ONNX Runtime might run faster, each checked against torch before it is timed:

- *sub-pixel*: one 3x3 ``Conv`` into 4x the channels, then ``DepthToSpace`` (ORT's NCHWc conv kernels);
- *im2col MatMul*: channels-last, the 3x3 neighbourhoods gathered by ``Slice``/``Concat``, one ``MatMul`` for all
  four output phases (fp32, and ``quantize_dynamic`` int8, which runs on VNNI where the CPU has it; with
  genexp's int8 scheme: 7-bit weights on x86 without VNNI, where 8-bit ones saturate ORT's int16 pair sums).

Interleaved in one process, repeated in ``--trials`` fresh processes; the table gives median ms and the ratio
torch / variant as median (lowest-highest). Weights are random: timing does not depend on them.

    python benchmarks/conv_kernels.py
    python benchmarks/conv_kernels.py --trials 5 --batch 64
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from onnxruntime.quantization import QuantType, quantize_dynamic
from torch import nn

from _harness import add_trial_options, latency_header, spread, trial_processes
from genexp.deploy import latency
from genexp.deploy.onnx_export import Graph, export_graph
from genexp.deploy.onnx_quantize import int8_scheme
from genexp.deploy.onnx_runtime import open_session, session_call
from genexp.models.dcgan import Generator
from genexp.models.vae_net import VAENet

SCHEME = int8_scheme()  # 7-bit weights on x86 without VNNI, where 8-bit ones saturate ORT's int16 pair sums
VARIANTS = ("torch eager", "ORT kernel", "ORT sub-pixel", "ORT im2col MatMul", "ORT im2col int8")


def _phase_taps(weight: torch.Tensor) -> torch.Tensor:
    """A k4/s2/p1 transposed-conv weight [in, out, 4, 4] as [3, 3, in, 2, 2, out]: the weight each input pixel
    of a 3x3 neighbourhood gives to each of the 2x2 output phases (output 2i+a reads input i+d at tap a+1-2d)."""
    cin, cout = weight.shape[:2]
    taps = weight.new_zeros(3, 3, cin, 2, 2, cout)
    for a in range(2):
        for b in range(2):
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ky, kx = a + 1 - 2 * dy, b + 1 - 2 * dx
                    if 0 <= ky < 4 and 0 <= kx < 4:
                        taps[dy + 1, dx + 1, :, a, b, :] = weight[:, :, ky, kx]
    return taps


class SubPixel(nn.Module):
    """ConvTranspose2d(k=4, s=2, p=1) as Conv2d(k=3, p=1) into 4x the channels + PixelShuffle(2)."""

    def __init__(self, layer: nn.ConvTranspose2d) -> None:
        super().__init__()
        taps = _phase_taps(layer.weight.detach())  # [3, 3, in, 2, 2, out]
        cout = layer.out_channels
        self.conv = nn.Conv2d(layer.in_channels, 4 * cout, 3, padding=1, bias=layer.bias is not None)
        self.conv.weight.data = taps.permute(5, 3, 4, 2, 0, 1).reshape(4 * cout, layer.in_channels, 3, 3)
        if layer.bias is not None:
            self.conv.bias.data = layer.bias.detach().repeat_interleave(4)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.conv(x))


class Im2colMatMul(nn.Module):
    """ConvTranspose2d(k=4, s=2, p=1) channels-last: 3x3 neighbourhoods concatenated, one MatMul, phases interleaved."""

    def __init__(self, layer: nn.ConvTranspose2d) -> None:
        super().__init__()
        self.cout = layer.out_channels
        self.weight = nn.Parameter(
            _phase_taps(layer.weight.detach()).reshape(9 * layer.in_channels, 4 * self.cout)
        )
        bias = layer.bias.detach() if layer.bias is not None else torch.zeros(self.cout)
        self.bias = nn.Parameter(bias.repeat(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [N, H, W, C]
        n, h, w, _ = x.shape
        padded = F.pad(x, (0, 0, 1, 1, 1, 1))
        cols = torch.cat([padded[:, i : i + h, j : j + w, :] for i in range(3) for j in range(3)], dim=-1)
        y = (cols @ self.weight + self.bias).view(n, h, w, 2, 2, self.cout)
        return y.permute(0, 1, 3, 2, 4, 5).reshape(n, 2 * h, 2 * w, self.cout)


def layers_of(net: nn.Module, example: torch.Tensor) -> list[tuple[nn.Module, tuple[int, ...]]]:
    """Each conv / transposed conv of ``net`` with the input shape it sees on ``example``."""
    seen: list[tuple[nn.Module, tuple[int, ...]]] = []
    hooks = [
        m.register_forward_hook(lambda m, args, out: seen.append((m, tuple(args[0].shape))))
        for m in net.modules()
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)
    ]
    with torch.no_grad():
        net.eval()(example)
    for hook in hooks:
        hook.remove()
    return seen


def describe(layer: nn.Module, shape: tuple[int, ...]) -> str:
    kind = "ConvT" if isinstance(layer, nn.ConvTranspose2d) else "Conv"
    return f"{kind} {layer.in_channels}->{layer.out_channels} k{layer.kernel_size[0]}s{layer.stride[0]} @{shape[2]}x{shape[3]}"


def one_process(batch: int, repeats: int, rounds: int, folder: Path) -> dict[str, dict[str, float]]:
    """ms per layer and variant, interleaved in this process."""
    torch.manual_seed(0)
    nets = [
        ("gan", Generator((1, 16, 16), 100, 64), torch.randn(2, 100)),
        ("vae", VAENet((1, 16, 16), 32, 16), torch.rand(2, 1, 16, 16)),
    ]
    calls, out = {}, {}
    for family, net, example in nets:
        for k, (layer, shape) in enumerate(layers_of(net, example)):
            if shape[2] == 1:
                continue  # the generator's first layer: the export writes it as one Gemm (onnx_rewrites.py)
            name = f"{family} {describe(layer, shape)}"
            x = torch.randn(batch, *shape[1:])
            calls[(name, VARIANTS[0])] = latency.torch_call(layer, x)
            graphs = [(VARIANTS[1], layer, x)]
            if isinstance(layer, nn.ConvTranspose2d) and layer.stride[0] == 2 and layer.kernel_size[0] == 4:
                graphs += [
                    (VARIANTS[2], SubPixel(layer), x),
                    (VARIANTS[3], Im2colMatMul(layer), x.permute(0, 2, 3, 1)),
                ]
            with torch.no_grad():
                want = layer(x)
            for variant, module, feed in graphs:
                feed = feed.contiguous()
                path = export_graph(
                    Graph(f"{family}{k}", module.eval(), (feed,), ["x"], ["y"], {"x": {0: "n"}}),
                    folder / f"{family}{k}_{VARIANTS.index(variant)}.onnx",
                    17,
                )
                calls[(name, variant)], _ = checked_call(name, variant, path, feed, want, 1e-4)
                if variant == VARIANTS[3]:
                    int8 = path.with_suffix(".int8.onnx")
                    quantize_dynamic(
                        str(path), str(int8), weight_type=QuantType.QInt8, reduce_range=SCHEME["reduce_range"]
                    )
                    calls[(name, VARIANTS[4])], error = checked_call(
                        name, VARIANTS[4], int8, feed, want, None
                    )
                    out.setdefault(name, {})["int8 max error"] = error
    timed = latency.interleaved_latency(calls, repeats, 3, rounds)  # type: ignore[arg-type]
    for (name, variant), numbers in timed.items():
        out.setdefault(name, {})[variant] = numbers["median_ms"]
    return out


def checked_call(
    name: str, variant: str, path: Path, feed: torch.Tensor, want: torch.Tensor, tol: float | None
) -> tuple[Callable[[], Any], float]:
    """A timing call for the graph at ``path`` and its max abs error against torch's output ``want``; exits
    when the error exceeds ``tol``."""
    session = open_session(path)
    feeds = {"x": feed.numpy()}
    got = torch.from_numpy(session.run(None, feeds)[0])
    if "im2col" in variant:
        got = got.permute(0, 3, 1, 2)  # channels-last back to NCHW
    error = float((got - want).abs().max())
    if tol is not None and not error <= tol:  # NaN fails too
        raise SystemExit(f"{name}, {variant}: output differs from torch by {error:.2e} (> {tol})")
    return session_call(session, feeds), error


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=64)
    add_trial_options(parser)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="conv_kernels-"))
    if args.trial_json:
        Path(args.trial_json).write_text(
            json.dumps(one_process(args.batch, args.repeats, args.rounds, folder))
        )
        return
    trial_args = ["--batch", str(args.batch), "--repeats", str(args.repeats), "--rounds", str(args.rounds)]
    trials = trial_processes(__file__, trial_args, args.trials, folder)
    print(
        f"\n{latency_header()}; batch {args.batch}; {len(trials)} processes x "
        f"{args.repeats} calls in {args.rounds} interleaved rounds; x = torch ms / variant ms\n"
    )
    print("| layer | " + " | ".join(f"{v}, ms | x" for v in VARIANTS) + " | int8 max error |")
    print("|---|" + "---:|---:|" * len(VARIANTS) + "---:|")
    for name in trials[0]:
        cells = []
        for variant in VARIANTS:
            if variant not in trials[0][name]:
                cells += ["–", "–"]
                continue
            ms = [t[name][variant] for t in trials]
            cells += [
                f"{statistics.median(ms):.3f}",
                spread([t[name][VARIANTS[0]] / t[name][variant] for t in trials]),
            ]
        error = trials[0][name].get("int8 max error")
        print(f"| {name} | " + " | ".join(cells) + f" | {'–' if error is None else f'{error:.3f}'} |")


if __name__ == "__main__":
    main()
