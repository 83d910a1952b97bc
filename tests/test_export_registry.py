"""The export registry: a family's exporter is found through the class hierarchy, and any other
GenerativeModule gets the default graph of its deployable() on its example_input()."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from genexp.deploy.onnx_export import export_graph
from genexp.deploy.onnx_runtime import OrtModule, open_session
from genexp.exporters.gpt import GPTExporter
from genexp.exporters.registry import DEFAULT, exportable, exporter_for, family_of, graphs_of, install_graphs
from genexp.models.base import GenerativeModule
from genexp.models.gpt import GPT
from genexp.runtime.errors import GenexpError


class TwoInTwoOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(2, 4)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.a(x) + self.b(y), self.a(x).relu()


class Mine(GenerativeModule):
    """Nobody registered an exporter for it: the default applies."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = TwoInTwoOut()

    def deployable(self) -> nn.Module:
        return self.body

    def example_input(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(0)
        return torch.randn(batch_size, 3, generator=generator), torch.randn(
            batch_size, 2, generator=generator
        )


class NoExample(GenerativeModule):
    def deployable(self) -> nn.Module:
        return nn.Identity()


def test_a_subclass_of_a_family_exports_as_that_family() -> None:
    class MyGPT(GPT):
        pass

    assert isinstance(exporter_for(MyGPT.__new__(MyGPT)), GPTExporter)
    assert exporter_for(Mine()) is DEFAULT


def test_the_default_graph_runs_in_onnxruntime_like_torch(tmp_path: Path) -> None:
    model = Mine().eval()
    (graph,) = graphs_of(model, batch_size=4)
    assert (graph.inputs, graph.outputs) == (["input_0", "input_1"], ["output_0", "output_1"])
    family = family_of(model)
    assert family.int8 == "dynamic" and family.usage["kind"] == "deployable"
    export_graph(graph, tmp_path / graph.file, opset=17)
    x, y = model.example_input(5)  # another batch size: the batch axis is dynamic
    with torch.no_grad():
        expected = model.body(x, y)
    install_graphs(model, {"model": open_session(tmp_path / graph.file)})
    assert isinstance(model.body, OrtModule)
    assert len(family.feeds(graph, family.inputs(2, 4), [graph])) == 2
    got = model.body(x, y)  # every output, as the torch deployable gives them
    assert isinstance(got, tuple) and len(got) == 2
    for want, have in zip(expected, got, strict=True):
        assert torch.allclose(want, have, atol=1e-5)


def test_a_model_without_an_example_input_is_not_exportable() -> None:
    model = NoExample()
    assert not exportable(model)
    with pytest.raises(GenexpError, match="example_input"):
        graphs_of(model)
