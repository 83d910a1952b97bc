"""The GPT's ONNX export: ``model.onnx``, ``tokens`` int64 (batch, sequence <= block_size) -> ``logits``
(batch, sequence, vocab), attention optionally as ONNX Runtime's fused op; int8: ONNX Runtime's dynamic int8
(MatMul/Gemm), checked on validation windows."""

from __future__ import annotations

from typing import Any

from genexp.deploy.onnx_attention import fuse_attention
from genexp.deploy.onnx_export import Graph, float_copy
from genexp.deploy.onnx_runtime import OrtModule
from genexp.exporters.registry import Exporter, data_batches, register_exporter
from genexp.models.gpt import GPT


@register_exporter(GPT)
class GPTExporter(Exporter):
    int8 = "dynamic"

    def graphs(self, model: GPT, batch_size: int, fused_attention: bool = False) -> list[Graph]:  # type: ignore[override]
        tokens = model.example_input(batch_size).cpu()
        axes = {0: "batch", 1: "sequence"}
        net = float_copy(model.deployable())
        if fused_attention:
            fuse_attention(net)
        return [Graph("model", net, (tokens,), ["tokens"], ["logits"], {"tokens": axes, "logits": axes})]

    def usage(self, model: GPT) -> dict[str, Any]:  # type: ignore[override]
        return {
            "kind": "text",
            "vocab": list(model.vocab or []),
            "block_size": model.block_size,
            "sample_prompt": model.sample_prompt,
            "how": "ids = [vocab.index(c) for c in text] as int64 (batch, sequence <= block_size); the next "
            "character's distribution is softmax(logits[:, -1] / temperature); append the sampled id and "
            "keep the last block_size ids as the context",
        }

    def inputs(self, model: GPT, datamodule: Any, count: int, batch_size: int) -> list[Any]:  # type: ignore[override]
        """The run's validation windows (example inputs without a data module)."""
        batches = data_batches(datamodule, count, batch_size, split="val")
        return batches or [model.example_input(batch_size).cpu() for _ in range(count)]

    def install(self, model: GPT, sessions: dict[str, Any]) -> None:  # type: ignore[override]
        model.net = OrtModule(sessions["model"])

    def text(self, model: GPT) -> tuple[Any, int] | None:  # type: ignore[override]
        if not model.vocab:
            return None
        return model.encode(model.sample_prompt).cpu().numpy().reshape(1, -1), model.block_size
