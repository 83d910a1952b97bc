"""benchmarks/_slim.py (the prune_tradeoff benchmark's helper): pruned channels are physically removed only where the function stays exactly the same."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn

from genexp.compression.prune import PruningCallback

_SPEC = importlib.util.spec_from_file_location(
    "_slim", Path(__file__).resolve().parents[1] / "benchmarks" / "_slim.py"
)
assert _SPEC is not None and _SPEC.loader is not None
_SLIM = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(_SLIM)
slim = _SLIM.slim


def chain(act: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        act(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.GELU(),
        nn.ConvTranspose2d(8, 6, 4, stride=2, padding=1),
        nn.Conv2d(6, 2, 1),
    )


def test_unread_input_channels_are_removed_exactly() -> None:
    net = chain()
    PruningCallback(method="ln_structured", dim=1, scope="layer", include=["^2$"]).prune_to(net, 0.5)
    x = torch.randn(3, 1, 8, 8)
    slimmed, removed = slim(net)
    assert removed == 4 and slimmed[0].out_channels == 4 and slimmed[2].in_channels == 4
    assert torch.allclose(slimmed(x), net(x), atol=1e-6)
    assert not any(n.endswith("_orig") for n, _ in slimmed.named_parameters())  # plain, deployable


def test_dead_output_channels_need_a_zero_bias_and_zero_preserving_activations() -> None:
    net = chain()
    PruningCallback(method="ln_structured", dim=0, scope="layer", include=["^0$"]).prune_to(net, 0.5)
    assert slim(net)[1] == 0  # the bias still feeds the next layer: not removable exactly
    dead = net[0].weight_mask.flatten(1).sum(1) == 0
    with torch.no_grad():
        net[0].bias[dead] = 0
    x = torch.randn(3, 1, 8, 8)
    slimmed, removed = slim(net)
    assert removed == 4 and torch.allclose(slimmed(x), net(x), atol=1e-6)

    sig = chain(nn.Sigmoid)  # sigmoid(0) = 0.5: a zero channel still carries a signal
    PruningCallback(method="ln_structured", dim=0, scope="layer", include=["^0$"]).prune_to(sig, 0.5)
    with torch.no_grad():
        sig[0].bias.zero_()
    assert slim(sig)[1] == 0


def test_convtranspose_input_channels_slim_the_layer_before() -> None:
    net = chain()
    PruningCallback(method="ln_structured", dim=0, scope="layer", include=["^4$"]).prune_to(net, 0.5)
    x = torch.randn(2, 1, 8, 8)
    slimmed, removed = slim(net)
    assert removed == 4 and slimmed[2].out_channels == 4 and slimmed[4].in_channels == 4
    assert torch.allclose(slimmed(x), net(x), atol=1e-6)
