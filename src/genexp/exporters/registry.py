"""The export registry: model class -> the ``Exporter`` that knows what that family ships as ONNX.

torchao's config-to-handler registry is the pattern: each built-in family registers its exporter
(``@register_exporter(GPT)`` in ``exporters/gpt.py``, ...), and the lookup walks the model's class hierarchy,
so a subclass of a family exports as that family. A class nobody registered gets the base ``Exporter``: one
graph, ``model.onnx``, of ``deployable()`` on ``example_input()`` (inputs ``input`` / ``input_<i>``, outputs
``output`` / ``output_<i>``, a dynamic batch axis on all), dynamic int8 (MatMul/Gemm weights, no calibration
data needed), and ONNX Runtime installed in place of the deployable's attribute. So a user's own
``GenerativeModule`` exports with ``genexp-export`` and ``genexp-eval`` measures its graph like the built-ins.

An exporter gives: ``graphs`` (on a float copy of the deployable; the main graph first), ``usage`` (what
model.json says about turning outputs into samples), ``inputs`` (batches for calibration and the int8 check),
``feeds`` (those batches as one graph's feeds), ``install`` (ONNX Runtime sessions in place of the model's
parts), ``int8`` (``dynamic`` or ``static``), ``static_options`` and ``text`` (the GPT's generation prompt).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import nn

from genexp.deploy.layers import set_submodule
from genexp.deploy.onnx_export import Family, Graph, float_copy
from genexp.deploy.onnx_runtime import OrtModule
from genexp.models.base import GenerativeModule
from genexp.runtime.errors import GenexpError

E = TypeVar("E", bound="type[Exporter]")


class Exporter:
    """The default export of any ``GenerativeModule``: its ``deployable()`` on its ``example_input()``."""

    cached: str | None = None  # the stem of a cached decoder graph (GPT: decoder_with_past)
    int8 = "dynamic"  # the default: weights-only int8 of MatMul/Gemm, which needs no representative data
    static_options: dict[str, Any] = {}

    def graphs(self, model: GenerativeModule, batch_size: int, fused_attention: bool = False) -> list[Graph]:
        """The graphs ``model`` ships on inputs of ``batch_size``, on a float copy of its deployable."""
        example = as_tuple(model.example_input(batch_size))
        net = float_copy(model.deployable())
        inputs = names("input", len(example))
        with torch.inference_mode():
            outputs = names("output", len(as_tuple(net(*(x.cpu() for x in example)))))
        batch = {0: "batch"}
        dynamic = {name: batch for name in (*inputs, *outputs)}
        return [Graph("model", net, tuple(x.cpu() for x in example), inputs, outputs, dynamic)]

    def usage(self, model: GenerativeModule) -> dict[str, Any]:
        """model.json's ``usage``: the graph's inputs and outputs (the model's own code makes samples)."""
        graph = self.graphs(model, 1)[0]
        shapes = {name: list(x.shape[1:]) for name, x in zip(graph.inputs, graph.example, strict=True)}
        return {
            "kind": "deployable",
            "inputs": {name: {"shape": ["batch", *shape]} for name, shape in shapes.items()},
            "outputs": graph.outputs,
            "how": f"model.onnx is {type(model).__name__}.deployable(): feed tensors shaped like its "
            "example_input() (any batch size); its outputs are the deployable's, in order",
        }

    def inputs(self, model: GenerativeModule, datamodule: Any, count: int, batch_size: int) -> list[Any]:
        """``count`` batches for the main graph: ``example_input(batch_size)``, which is what the model offers."""
        return [as_tuple(model.example_input(batch_size)) for _ in range(count)]

    def feeds(self, graph: Graph, batches: list[Any], graphs: list[Graph]) -> list[dict[str, Any]]:
        """``batches`` (a tensor, or a tuple of one per input) as ``graph``'s feeds."""
        return [
            {name: x.cpu().numpy() for name, x in zip(graph.inputs, as_tuple(b), strict=True)}
            for b in batches
        ]

    def install(self, model: GenerativeModule, sessions: dict[str, Any]) -> None:
        """Replace the deployable (an attribute of ``model``) with the ``model`` graph's session."""
        deployable = model.deployable()
        name = next((n for n, m in model.named_modules() if m is deployable and n), None)
        if name is None:
            raise GenexpError(
                f"target: {type(model).__name__}.deployable() is the model itself or not one of its submodules; "
                "the default export installs ONNX Runtime in place of a submodule (register an Exporter)"
            )
        session = sessions["model"]
        set_submodule(model, name, OrtModule(session, outputs=tuple(range(len(session.get_outputs())))))

    def text(self, model: GenerativeModule) -> tuple[Any, int] | None:
        """``(prompt ids, block_size)`` for the generation throughput of a text model, else None."""
        return None


_EXPORTERS: dict[type, Exporter] = {}
DEFAULT = Exporter()


def register_exporter(model_class: type[GenerativeModule]) -> Callable[[E], E]:
    """Class decorator: ``@register_exporter(GPT) class GPTExporter(Exporter)`` makes it GPT's exporter."""

    def register(exporter_class: E) -> E:
        _EXPORTERS[model_class] = exporter_class()
        return exporter_class

    return register


def exporter_for(model: nn.Module) -> Exporter:
    """The exporter registered for ``model``'s class or its nearest registered base, else the default."""
    return next((_EXPORTERS[c] for c in type(model).__mro__ if c in _EXPORTERS), DEFAULT)


def is_registered(model: nn.Module) -> bool:
    """True when a family registered an exporter for ``model``'s class (or a base of it)."""
    return exporter_for(model) is not DEFAULT


def exportable(model: GenerativeModule) -> bool:
    """True when ``model`` has graphs to export: a registered family, or a deployable with an example input."""
    if is_registered(model):
        return True
    try:
        model.example_input(1)
        model.deployable()
    except NotImplementedError:
        return False
    return True


def graphs_of(model: GenerativeModule, batch_size: int = 2, fused_attention: bool = False) -> list[Graph]:
    """The graphs ``model``'s family ships, on a float copy of its deployable (the main graph first);
    ``fused_attention``: the GPT's attention as ONNX Runtime's fused op (``genexp.deploy.onnx_attention``)."""
    if not exportable(model):
        raise GenexpError(
            f"target: a {type(model).__name__} has no graphs to export: implement deployable() and "
            "example_input(), or register an Exporter (genexp.exporters.registry.register_exporter)"
        )
    return exporter_for(model).graphs(model, batch_size, fused_attention)


def family_of(model: GenerativeModule, datamodule: Any = None, fused_attention: bool = True) -> Family:
    """The export description of ``model`` (``fused_attention``: see ``graphs_of``)."""
    graphs_of(model)  # a model without graphs fails here, before anything is written
    exporter = exporter_for(model)
    return Family(
        name=type(model).__name__.lower(),
        model=type(model).__name__,
        graphs=lambda batch: exporter.graphs(model, batch, fused_attention),
        inputs=lambda count, batch: exporter.inputs(model, datamodule, count, batch),
        feeds=exporter.feeds,
        int8=exporter.int8,
        usage=exporter.usage(model),
        text=exporter.text(model),
        cached=exporter.cached,
        static_options=dict(exporter.static_options),
    )


def install_graphs(model: GenerativeModule, sessions: dict[str, Any]) -> GenerativeModule:
    """Make ``model`` compute through ONNX Runtime: its deployable's parts replaced by ``OrtModule`` shims of
    ``sessions`` (by graph stem), as its exporter says."""
    exporter_for(model).install(model, sessions)
    return model


# ----- helpers the family exporters share ---------------------------------------------------------
def as_tuple(value: Any) -> tuple[Any, ...]:
    return value if isinstance(value, tuple) else tuple(value) if isinstance(value, list) else (value,)


def names(stem: str, count: int) -> list[str]:
    """``[stem]`` for one, ``[stem_0, stem_1, ...]`` for several."""
    return [stem] if count == 1 else [f"{stem}_{i}" for i in range(count)]


def data_batches(datamodule: Any, count: int, batch_size: int, split: str = "train") -> list[torch.Tensor]:
    """Up to ``count`` batches (their first tensor, ``batch_size`` rows) of the run's ``split``; [] without data."""
    if datamodule is None:
        return []
    datamodule.setup("fit")
    loader = datamodule.val_dataloader() if split == "val" else datamodule.train_dataloader()
    batches = []
    for batch in loader:
        batches.append(batch[0][:batch_size].cpu())
        if len(batches) == count:
            break
    return batches
