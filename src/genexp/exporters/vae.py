"""The VAE's ONNX export: ``model.onnx``, ``images`` in [0, 1] -> reconstruction ``logits``, ``mu``,
``logvar``; ``decoder.onnx``: ``z`` -> ``logits``; int8: static QDQ calibrated on training images (the decoder
on their posterior means)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from genexp.deploy.onnx_export import Graph, float_copy
from genexp.deploy.onnx_runtime import OrtModule
from genexp.exporters.registry import Exporter, data_batches, register_exporter
from genexp.models.vae import VAE


class _VAEGraph(nn.Module):
    """The VAE's deployable with its posterior exposed: images -> (logits, mu, logvar)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.encoder, self.decoder = net.encoder, net.decoder

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(x)
        return self.decoder(mu), mu, logvar


@register_exporter(VAE)
class VAEExporter(Exporter):
    int8 = "static"

    def graphs(self, model: VAE, batch_size: int, fused_attention: bool = False) -> list[Graph]:  # type: ignore[override]
        full = _VAEGraph(float_copy(model.deployable()))
        x = model.example_input(batch_size).cpu()
        z = torch.randn(batch_size, model.latent_dim, generator=torch.Generator().manual_seed(0))
        batch = {0: "batch"}
        outputs = ["logits", "mu", "logvar"]
        return [
            Graph("model", full, (x,), ["images"], outputs, {name: batch for name in ["images", *outputs]}),
            Graph("decoder", full.decoder, (z,), ["z"], ["logits"], {"z": batch, "logits": batch}),
        ]

    def usage(self, model: VAE) -> dict[str, Any]:  # type: ignore[override]
        squash = "sigmoid(logits)" if model.likelihood == "bernoulli" else "clip(logits, 0, 1)"
        return {
            "kind": "images",
            "latent_dim": model.latent_dim,
            "image_shape": list(model.image_shape),
            "likelihood": model.likelihood,
            "sample_graph": "decoder.onnx",
            "how": f"decoder.onnx: z ~ N(0, 1) float32 (batch, latent_dim) -> logits; samples = {squash}. "
            "model.onnx: images in [0, 1] (batch, C, H, W) -> reconstruction logits, posterior mu, logvar",
        }

    def inputs(self, model: VAE, datamodule: Any, count: int, batch_size: int) -> list[Any]:  # type: ignore[override]
        """The run's training images (uniform noise images without a data module)."""
        return training_images(model.image_shape, datamodule, count, batch_size)

    def feeds(self, graph: Graph, batches: list[Any], graphs: list[Graph]) -> list[dict[str, Any]]:
        """The decoder takes the encoder's posterior means of the image batches."""
        if graph.stem == "decoder":
            with torch.inference_mode():
                return [{"z": graphs[0].module(b)[1].numpy()} for b in batches]
        return super().feeds(graph, batches, graphs)

    def install(self, model: VAE, sessions: dict[str, Any]) -> None:  # type: ignore[override]
        model.net.encoder = OrtModule(sessions["model"], outputs=(1, 2))
        model.net.decoder = OrtModule(sessions["decoder"])


def training_images(image_shape: Any, datamodule: Any, count: int, batch_size: int) -> list[torch.Tensor]:
    """``count`` batches of the run's training images, or seeded uniform images without a data module."""
    batches = data_batches(datamodule, count, batch_size)
    if batches:
        return batches
    generator = torch.Generator().manual_seed(1)
    return [torch.rand(batch_size, *image_shape, generator=generator) for _ in range(count)]
