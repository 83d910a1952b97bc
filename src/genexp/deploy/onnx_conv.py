"""A generator's first transposed convolution, exported as one matrix product.

A DCGAN generator starts with ``ConvTranspose2d(latent, C, k, stride=1, padding=0)`` on a 1x1 input, then
BatchNorm. That layer is a linear map from the latent vector to ``C x k x k`` values, but ONNX Runtime's CPU
``ConvTranspose`` runs it as one tiny GEMM per image plus a col2im pass. ``project_latent(generator)`` swaps,
in an export copy, the layer and its BatchNorm (eval statistics folded in) for ``LatentProjection``: one
``Gemm`` and a ``Reshape`` in the graph, exactly the same function. Measured on the ``gan_digits`` generator
(``benchmarks/onnx_rewrites.py``; 2 AMD EPYC cores, AVX-512, 3 processes): the ORT graph runs 1.25x (1.09-1.25x)
faster at batch 64 (2.86 -> 2.28 ms) and 1.11x at batch 1.

The strided transposed convs that follow (``k=4, stride=2, padding=1``, in the GAN generator and the VAE decoder)
have a second, exact form: a ``stride`` x ``stride`` sub-pixel convolution. Each output phase ``(a, b)`` of a
transposed conv is an ordinary conv of the input with a subset of its taps, so one ``Conv2d`` with
``stride**2`` times the output channels followed by ``PixelShuffle`` (``DepthToSpace`` in the graph) computes the
same values (``SubPixelConv``). Which form runs faster depends on the runtime, the precision and the widths:
OpenVINO's bf16 kernels run the sub-pixel VAE decoder much faster while ONNX Runtime runs the GAN's last layer
faster as a transposed conv. So the export writes both (``<stem>.subpixel.onnx`` beside ``<stem>.onnx``,
``subpixel_copy``) and the backends are timed on each (``genexp.deploy.backends``).
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights


class LatentProjection(nn.Module):
    """``(N, latent, 1, 1)`` (or ``(N, latent)``) -> ``(N, C, k, k)``: a transposed conv on a 1x1 input (and the
    BatchNorm after it, when given, folded into the weights), as one Linear."""

    def __init__(self, conv: nn.ConvTranspose2d, norm: nn.BatchNorm2d | None = None) -> None:
        super().__init__()
        weight, bias = conv.weight.detach().float(), conv.bias  # weight: (latent, C, k, k)
        latent, channels, kh, kw = weight.shape
        if norm is not None:  # torch's own conv+BN fold; transpose: the output channels are dim 1
            weight, bias = fuse_conv_bn_weights(
                weight,
                bias,
                norm.running_mean,
                norm.running_var,
                norm.eps,
                norm.weight,
                norm.bias,
                transpose=True,
            )
        bias = bias.detach().float() if bias is not None else torch.zeros(channels)
        self.shape = (channels, kh, kw)
        self.linear = nn.Linear(latent, channels * kh * kw)
        with torch.no_grad():
            self.linear.weight.copy_(weight.reshape(latent, -1).t())
            self.linear.bias.copy_(bias.repeat_interleave(kh * kw))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.linear(z.flatten(1)).view(-1, *self.shape)


def _projects_latent(conv: nn.Module) -> bool:
    return (
        type(conv) is nn.ConvTranspose2d
        and conv.stride == (1, 1)
        and conv.padding == (0, 0)
        and conv.output_padding == (0, 0)
        and conv.dilation == (1, 1)
        and conv.groups == 1
    )


def project_latent(generator: nn.Module) -> bool:
    """Swap ``generator.net[0]`` (and a BatchNorm at ``net[1]``) for a ``LatentProjection``, in place, when it is
    a plain stride-1, unpadded transposed conv; the generator must feed it a 1x1 input (genexp's ``Generator``
    does). Returns whether it swapped. Only for eval copies: the BatchNorm's running statistics are folded."""
    net = getattr(generator, "net", None)
    if not isinstance(net, nn.Sequential) or len(net) < 2 or not _projects_latent(net[0]):
        return False
    norm = net[1] if type(net[1]) is nn.BatchNorm2d and net[1].track_running_stats else None
    layers = [LatentProjection(net[0], norm), *list(net)[2 if norm is not None else 1 :]]
    generator.net = nn.Sequential(*layers)
    return True


class SubPixelConv(nn.Module):
    """A ``ConvTranspose2d`` whose output is ``stride`` times its input, as ``Conv2d`` (``stride**2`` times the
    output channels, the transposed conv's taps regrouped per output phase) and ``PixelShuffle(stride)``."""

    def __init__(self, conv: nn.ConvTranspose2d) -> None:
        super().__init__()
        weight = conv.weight.detach().float()  # (in, out, kh, kw)
        cin, cout, kh, kw = weight.shape
        s = conv.stride[0]
        reach = _reach(kh, s, conv.padding[0])
        size = 2 * reach + 1
        kernel = torch.zeros(cout, s, s, cin, size, size)
        for a in range(s):
            for ky, ry in _phase_taps(kh, s, conv.padding[0], a):
                for b in range(s):
                    for kx, rx in _phase_taps(kw, s, conv.padding[1], b):
                        kernel[:, a, b, :, ry + reach, rx + reach] = weight[:, :, ky, kx].t()
        self.conv = nn.Conv2d(cin, cout * s * s, size, padding=reach, bias=conv.bias is not None)
        self.shuffle = nn.PixelShuffle(s)
        with torch.no_grad():
            self.conv.weight.copy_(kernel.reshape(cout * s * s, cin, size, size))
            if conv.bias is not None:
                self.conv.bias.copy_(conv.bias.detach().float().repeat_interleave(s * s))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.conv(x))


def _phase_taps(kernel: int, stride: int, padding: int, phase: int) -> list[tuple[int, int]]:
    """``(tap, input offset)`` pairs of output phase ``phase``: output ``stride * m + phase`` sums
    ``x[m + offset] * w[tap]`` (from ``o = stride * i + tap - padding``)."""
    return [
        (k, (phase + padding - k) // stride) for k in range(kernel) if (phase + padding - k) % stride == 0
    ]


def _reach(kernel: int, stride: int, padding: int) -> int:
    """How far (in input pixels) the phases look on either side; -1 when the window is not symmetric."""
    offsets = [r for a in range(stride) for _, r in _phase_taps(kernel, stride, padding, a)]
    return max(offsets) if offsets and min(offsets) == -max(offsets) else -1


def _has_subpixel_form(conv: nn.Module) -> bool:
    if type(conv) is not nn.ConvTranspose2d or conv.groups != 1 or conv.dilation != (1, 1):
        return False
    (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
    return (
        sh == sw > 1
        and (kh, ph) == (kw, pw)
        and kh - 2 * ph == sh  # the output is exactly stride x the input
        and conv.output_padding == (0, 0)
        and _reach(kh, sh, ph) >= 0
    )


def subpixel_copy(module: nn.Module) -> tuple[nn.Module, int]:
    """``(copy, count)``: a deep copy of ``module`` whose strided transposed convs that have a sub-pixel form
    are ``SubPixelConv`` (the same function), and how many were swapped (0: the copy is not needed)."""
    fresh = copy.deepcopy(module)
    swaps = [name for name, m in fresh.named_modules() if _has_subpixel_form(m)]
    for name in swaps:
        parent, _, leaf = name.rpartition(".")
        setattr(fresh.get_submodule(parent), leaf, SubPixelConv(fresh.get_submodule(name)))
    return fresh, len(swaps)
