"""The GAN generator's first transposed conv (and its BatchNorm) exports as one Gemm that computes the same."""

from __future__ import annotations

import collections
import copy
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from genexp.deploy.onnx_conv import LatentProjection, SubPixelConv, project_latent, subpixel_copy
from genexp.deploy.onnx_export import Graph, export_graph
from genexp.deploy.onnx_runtime import open_session
from genexp.models.dcgan import Generator


def _generator(channels: int, affine: bool = True) -> Generator:
    torch.manual_seed(0)
    gen = Generator((1, 16, 16), latent_dim=12, channels=channels)
    for m in gen.modules():  # statistics and affine terms far from their defaults
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.2, 3)
            if affine:
                m.weight.data.uniform_(0.5, 2)
                m.bias.data.uniform_(-1, 1)
            else:
                m.affine, m.weight, m.bias = False, None, None
    return gen.eval()


def _export(module: nn.Module, example: torch.Tensor, path: Path) -> tuple[Path, collections.Counter]:
    """Export ``module`` (input ``x``, output ``y``, a dynamic batch) and count the graph's ops."""
    graph = Graph("m", module, (example,), ["x"], ["y"], {"x": {0: "batch"}, "y": {0: "batch"}})
    export_graph(graph, path, 17)
    return path, collections.Counter(node.op_type for node in onnx.load(str(path)).graph.node)


@pytest.mark.parametrize("channels,affine", [(8, True), (6, False)])
def test_the_first_layer_becomes_one_gemm_with_the_same_output(
    tmp_path: Path, channels: int, affine: bool
) -> None:
    gen = _generator(channels, affine)
    copied = copy.deepcopy(gen)
    assert project_latent(copied)
    assert isinstance(copied.net[0], LatentProjection) and not isinstance(copied.net[1], nn.BatchNorm2d)
    z = torch.randn(5, 12)
    with torch.no_grad():
        expected = gen(z)
        assert torch.allclose(copied(z), expected, atol=1e-5)
    path, ops = _export(copied, z, tmp_path / "g.onnx")
    assert (
        ops["Gemm"] == 1
        and ops["ConvTranspose"] == sum(isinstance(m, nn.ConvTranspose2d) for m in gen.modules()) - 1
    )
    z3 = torch.randn(3, 12)  # another batch size than exported
    got = open_session(path).run(None, {"x": z3.numpy()})[0]
    with torch.no_grad():
        assert np.abs(got - gen(z3).numpy()).max() < 1e-4


def test_a_strided_first_layer_is_left_alone() -> None:
    net = nn.Module()
    net.net = nn.Sequential(nn.ConvTranspose2d(4, 4, 4, 2, 1), nn.BatchNorm2d(4))
    assert not project_latent(net)
    assert isinstance(net.net[0], nn.ConvTranspose2d)


@pytest.mark.parametrize(
    "kernel,stride,padding,bias", [(4, 2, 1, True), (4, 2, 1, False), (2, 2, 0, True), (8, 4, 2, True)]
)
def test_a_strided_transposed_conv_becomes_a_sub_pixel_conv_with_the_same_output(
    tmp_path: Path, kernel: int, stride: int, padding: int, bias: bool
) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.ConvTranspose2d(6, 5, kernel, stride, padding, bias=bias), nn.BatchNorm2d(5), nn.ReLU()
    ).eval()
    net[1].running_mean.uniform_(-1, 1)
    copied, swapped = subpixel_copy(net)
    assert swapped == 1 and isinstance(copied[0], SubPixelConv) and isinstance(net[0], nn.ConvTranspose2d)
    x = torch.randn(3, 6, 5, 7)  # not square: rows and columns are regrouped separately
    with torch.no_grad():
        expected = net(x)
        assert expected.shape[-2:] == (5 * stride, 7 * stride)
        assert torch.allclose(copied(x), expected, atol=1e-5)
    path, ops = _export(copied, x, tmp_path / "m.onnx")
    assert ops["ConvTranspose"] == 0 and ops["DepthToSpace"] == 1
    got = open_session(path).run(None, {"x": x[:2].numpy()})[0]
    assert np.abs(got - expected[:2].numpy()).max() < 1e-4


@pytest.mark.parametrize(
    "conv",
    [
        nn.ConvTranspose2d(4, 4, 3, 2, 1),  # output 2H - 1: not stride x the input
        nn.ConvTranspose2d(4, 4, 4, 2, 1, output_padding=1),
        nn.ConvTranspose2d(4, 4, 4, 2, 1, groups=2),
        nn.ConvTranspose2d(4, 4, 4, 1, 0),  # stride 1: project_latent's case, not this one
        nn.ConvTranspose2d(4, 4, 5, 2, 1),  # the phases' windows are not centred
    ],
)
def test_transposed_convs_without_a_sub_pixel_form_are_left_alone(conv: nn.ConvTranspose2d) -> None:
    copied, swapped = subpixel_copy(nn.Sequential(conv))
    assert swapped == 0 and type(copied[0]) is nn.ConvTranspose2d
