"""The GPT's ONNX export.

- ``model.onnx``: ``tokens`` int64 (batch, sequence <= block_size) -> ``logits`` (batch, sequence, vocab);
- ``decoder_with_past.onnx``: the cached decoder (``models/kv_cache.py``): ``tokens`` (batch, sequence) and
  ``past_<i>`` float32 (2, batch, heads_i, past, head_size_i) per block -> ``logits`` and ``present_<i>``
  (2, batch, heads_i, past + sequence, head_size_i); start with ``past = 0`` positions, keep
  ``past + sequence <= block_size``.

Attention optionally as ONNX Runtime's fused op (with its ``past`` input in the cached decoder). int8, checked on
validation windows: ``model.onnx`` with ONNX Runtime's dynamic int8 (MatMul/Gemm, ``QAttention``); the cached
decoder, which runs one token a step, weight-only int8 (``MatMulNBits``: no per-step activation quantization).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from genexp.deploy.onnx_attention import fuse_attention
from genexp.deploy.onnx_export import Graph, float_copy
from genexp.deploy.onnx_runtime import OrtModule
from genexp.exporters.registry import Exporter, data_batches, register_exporter
from genexp.models.gpt import GPT
from genexp.models.kv_cache import CachedDecoder, refill_length
from genexp.runtime.errors import GenexpError

CACHED = "decoder_with_past"


@register_exporter(GPT)
class GPTExporter(Exporter):
    int8 = "dynamic"
    cached = CACHED

    def graphs(self, model: GPT, batch_size: int, fused_attention: bool = False) -> list[Graph]:  # type: ignore[override]
        tokens = model.example_input(batch_size).cpu()
        axes = {0: "batch", 1: "sequence"}
        net = float_copy(model.deployable())
        if fused_attention:
            fuse_attention(net)
        main = Graph("model", net, (tokens,), ["tokens"], ["logits"], {"tokens": axes, "logits": axes})
        return [main, cached_graph(model, tokens, fused_attention)]

    def usage(self, model: GPT) -> dict[str, Any]:  # type: ignore[override]
        past = model.net.empty_past(1) if hasattr(model.net, "empty_past") else []
        names = [f"past_{i}" for i in range(len(past))]
        return {
            "kind": "text",
            "vocab": list(model.vocab or []),
            "block_size": model.block_size,
            "sample_prompt": model.sample_prompt,
            "how": "ids = [vocab.index(c) for c in text] as int64 (batch, sequence <= block_size); the next "
            "character's distribution is softmax(logits[:, -1] / temperature); append the sampled id and "
            "keep the last block_size ids as the context",
            "cached": {
                "graph": f"{CACHED}.onnx",
                "int8_graph": f"{CACHED}.int8.onnx",
                "inputs": ["tokens", *names],
                "outputs": ["logits", *[f"present_{i}" for i in range(len(past))]],
                "empty_past": {name: list(p.shape) for name, p in zip(names, past, strict=True)},
                "refill": refill_length(model.block_size),
                "how": "feed tokens int64 (batch, new ids) and past_<i> float32 (2, batch, heads, past, head_size): "
                "the keys and values of the ids already fed; start with empty_past (past = 0, batch 1) and the "
                "prompt's ids; each call returns logits (batch, new, vocab) and present_<i> (past + new "
                "positions), the next call's past_<i>, with the next id alone as tokens. past + new must stay "
                "<= block_size: when full, start again from empty_past with the last `refill` ids",
            },
        }

    def inputs(self, model: GPT, datamodule: Any, count: int, batch_size: int) -> list[Any]:  # type: ignore[override]
        """The run's validation windows (example inputs without a data module)."""
        batches = data_batches(datamodule, count, batch_size, split="val")
        return batches or [model.example_input(batch_size).cpu() for _ in range(count)]

    def feeds(self, graph: Graph, batches: list[Any], graphs: list[Graph]) -> list[dict[str, Any]]:
        """Windows as ``model.onnx``'s tokens; for the cached decoder, the second half of each window after
        the first half's keys and values (computed by the torch decoder)."""
        if graph.stem != CACHED:
            return super().feeds(graph, batches, graphs)
        out = []
        for window in batches:
            half = window.shape[1] // 2
            empty = [
                torch.zeros(2, window.shape[0], *p.shape[2:3], 0, *p.shape[4:]) for p in graph.example[1:]
            ]
            with torch.inference_mode():
                present = graph.module(window[:, :half], *empty)[1:]
            feed = {"tokens": window[:, half:].numpy()}
            feed.update({name: p.numpy() for name, p in zip(graph.inputs[1:], present, strict=True)})
            out.append(feed)
        return out

    def install(self, model: GPT, sessions: dict[str, Any]) -> None:  # type: ignore[override]
        cache = model.net.empty_past(1) if hasattr(model.net, "empty_past") else None
        if CACHED in sessions:
            shapes = [list(p.shape) for p in cache] if cache is not None else None
            model.cached_decoder = OrtCachedDecoder(sessions[CACHED], shapes)
        model.net = OrtModule(sessions["model"])

    def text(self, model: GPT) -> tuple[Any, int] | None:  # type: ignore[override]
        if not model.vocab:
            return None
        return model.encode(model.sample_prompt).cpu().numpy().reshape(1, -1), model.block_size


def cached_graph(model: GPT, tokens: torch.Tensor, fused_attention: bool) -> Graph:
    """``decoder_with_past``: a float copy of the network behind ``CachedDecoder``, traced on 2 new tokens after
    3 cached positions (both axes dynamic)."""
    net = float_copy(model.deployable())
    if fused_attention:
        fuse_attention(net)
    decoder = CachedDecoder(net).eval()
    with torch.inference_mode():
        past = net.forward_cached(tokens[:, :3], net.empty_past(tokens.shape[0]))[1]
    past = [p.clone() for p in past]
    count = len(past)
    inputs = ["tokens", *[f"past_{i}" for i in range(count)]]
    outputs = ["logits", *[f"present_{i}" for i in range(count)]]
    axes = {0: "batch", 1: "sequence"}
    dynamic: dict[str, dict[int, str]] = {"tokens": axes, "logits": axes}
    dynamic.update({f"past_{i}": {1: "batch", 3: "past"} for i in range(count)})
    dynamic.update({f"present_{i}": {1: "batch", 3: "total"} for i in range(count)})
    example = (tokens[:, 3:5].clone(), *past)
    return Graph(CACHED, decoder, example, inputs, outputs, dynamic, int8="weight_only")


class OrtCachedDecoder:
    """``decoder_with_past.onnx`` behind ``GPT.cached_step``: ``step(new_ids, past)`` and ``empty_past(batch)``.

    The graph's past inputs must have this model's cache shape (heads and head size per block), else a
    ``GenexpError`` names the graph, the input and both shapes.
    """

    def __init__(self, session: Any, wanted: list[list[int]] | None = None) -> None:
        self.session = session
        self.names = [i.name for i in session.get_inputs()]
        given = [list(i.shape) for i in session.get_inputs()[1:]]
        if wanted is not None and [_layout(g) for g in given] != [_layout(w) for w in wanted]:
            raise GenexpError(
                f"{CACHED} graph: its past inputs are {[_layout(g) for g in given]} (2, batch, heads, past, "
                f"head size), this model's cache is {[_layout(w) for w in wanted]}: the graph belongs to another "
                "model (export the run again: genexp-export target=<run>)"
            )
        self.shapes = [(2, int(g[2]), int(g[4])) for g in given]

    def empty_past(self, batch: int) -> list[torch.Tensor]:
        return [torch.zeros(two, batch, heads, 0, size) for two, heads, size in self.shapes]

    def step(
        self, new_ids: torch.Tensor, past: list[torch.Tensor]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        feeds = {"tokens": new_ids.cpu().numpy()}
        feeds.update({name: p.numpy() for name, p in zip(self.names[1:], past, strict=True)})
        try:
            results = self.session.run(None, feeds)
        except Exception as err:  # noqa: BLE001 - ORT raises its own pybind types for bad feeds
            shapes = {name: list(x.shape) for name, x in feeds.items()}
            detail = " ".join(str(err).split()).split("INVALID_ARGUMENT : ")[-1][:300]
            raise GenexpError(f"{CACHED} graph: fed {shapes}: {detail}") from err
        out = [torch.from_numpy(np.ascontiguousarray(r)) for r in results]
        return out[0], out[1:]


def _layout(shape: list[Any]) -> tuple[Any, ...]:
    """A past shape with its batch and past axes named: ``(2, 'batch', heads, 'past', head_size)``."""
    return (shape[0], "batch", shape[2], "past", shape[4]) if len(shape) == 5 else tuple(shape)
