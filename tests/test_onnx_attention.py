"""The GPT's attention exports as ONNX Runtime's fused Attention op (QAttention in int8), computes what torch does,
dense and with heads removed, and ``fused_attention=false`` keeps a standard-op graph."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from genexp.compression.structured import UnitPruner
from genexp.deploy.onnx_attention import DOMAIN
from genexp.deploy.onnx_export import export_graph
from genexp.deploy.onnx_quantize import quantize_graph
from genexp.deploy.onnx_runtime import open_session
from genexp.exporters.registry import graphs_of
from genexp.models.gpt import GPT

VOCAB = [chr(97 + i) for i in range(26)] + ["\n"]


def uses_fused_attention(path: Path) -> bool:
    return any(
        node.domain == DOMAIN and node.op_type == "Attention" for node in onnx.load(str(path)).graph.node
    )


def _gpt(heads_removed: bool) -> GPT:
    torch.manual_seed(0)
    model = GPT(vocab=VOCAB, vocab_size=len(VOCAB), block_size=16, n_layer=2, n_head=4, n_embd=32, bias=True)
    if heads_removed:  # structured pruning: 2 of 4 heads and half the MLP units of each block
        example = model.example_input(2)
        pruner = UnitPruner("layer")
        pruner.setup(model.net, example)
        pruner.apply(pruner.masks(0.5))
        pruner.remove(example)
        assert {block.attn.n_head for block in model.net.blocks} == {2}
    return model.eval()


@pytest.mark.parametrize("heads_removed", [False, True])
@pytest.mark.parametrize("fused", [True, False])
def test_the_exported_attention_computes_what_torch_does(
    tmp_path: Path, heads_removed: bool, fused: bool
) -> None:
    model = _gpt(heads_removed)
    graph = graphs_of(model, 3, fused_attention=fused)[0]
    path = export_graph(graph, tmp_path / "model.onnx", 17)
    ops = collections.Counter(node.op_type for node in onnx.load(str(path)).graph.node)
    assert uses_fused_attention(path) == fused
    assert (ops["Attention"], ops["Softmax"]) == ((2, 0) if fused else (0, 2))
    tokens = torch.randint(
        len(VOCAB), (3, 11)
    )  # a shorter window than the example: the sequence axis is dynamic
    with torch.no_grad():
        expected = model.net(tokens).numpy()
    got = open_session(path).run(None, {"tokens": tokens.numpy()})[0]
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
    if fused:
        int8 = tmp_path / "model.int8.onnx"
        quantize_graph(path, int8, "dynamic", {"tokens": tokens.numpy()})
        assert "QAttention" in {node.op_type for node in onnx.load(str(int8)).graph.node}
        out = open_session(int8).run(None, {"tokens": tokens.numpy()})[0]
        assert np.sqrt(np.mean((out - expected) ** 2)) < 0.1 * np.sqrt(np.mean(expected**2))
