"""The GAN's ONNX export: ``model.onnx``, the sampling generator (EMA when the run has one), ``z`` (batch,
latent) -> ``images`` in [-1, 1], its first transposed conv as one Gemm; int8: static QDQ calibrated on noise
batches (its input is noise)."""

from __future__ import annotations

from typing import Any

import torch

from genexp.deploy.onnx_conv import project_latent
from genexp.deploy.onnx_export import Graph, float_copy
from genexp.deploy.onnx_runtime import OrtModule
from genexp.exporters.registry import Exporter, register_exporter
from genexp.models.gan import GAN


@register_exporter(GAN)
class GANExporter(Exporter):
    int8 = "static"

    def graphs(self, model: GAN, batch_size: int, fused_attention: bool = False) -> list[Graph]:  # type: ignore[override]
        z = model.example_input(batch_size).cpu()
        net = float_copy(model.deployable())
        project_latent(net)  # the first transposed conv as one Gemm (genexp.deploy.onnx_conv)
        return [Graph("model", net, (z,), ["z"], ["images"], {"z": {0: "batch"}, "images": {0: "batch"}})]

    def usage(self, model: GAN) -> dict[str, Any]:  # type: ignore[override]
        return {
            "kind": "images",
            "latent_dim": model.latent_dim,
            "image_shape": list(model.image_shape),
            "how": "z ~ N(0, 1) float32 (batch, latent_dim) -> images (batch, C, H, W) in [-1, 1]; "
            "pixels in [0, 1] = (images + 1) / 2",
        }

    def inputs(self, model: GAN, datamodule: Any, count: int, batch_size: int) -> list[Any]:  # type: ignore[override]
        """Noise batches, seeded (the generator's input is noise)."""
        generator = torch.Generator().manual_seed(1)
        return [torch.randn(batch_size, model.latent_dim, generator=generator) for _ in range(count)]

    def install(self, model: GAN, sessions: dict[str, Any]) -> None:  # type: ignore[override]
        shim = OrtModule(sessions["model"])
        model.generator = shim
        if model.generator_ema is not None:
            model.generator_ema = shim
