"""The diffusion family's ONNX export (registered for ``Diffusion`` in ``genexp.exporters.registry``).

- ``model.onnx``: the EMA denoiser (``Diffusion.deployable()``), ``z_t`` float32 (batch, C, H, W) and ``t``
  float32 (batch,) in [0, 1] -> the UNet's prediction, named after ``model.prediction`` (``v`` or ``eps``),
  float32 (batch, C, H, W); a dynamic batch axis on all three;
- int8: static QDQ (the UNet is convolutions, as the GAN's and VAE's) of its Conv/Gemm/MatMul but the input
  and output convs (``STATIC_INT8``; 7- or 8-bit weights by the CPU's int8 scheme), calibrated on the run's
  own training images noised at random times, ``z_t = alpha_t x + sigma_t eps`` with ``x`` in [-1, 1] and ``t ~ U(0, 1)`` (seeded, so it is reproducible).

``model.json``'s ``usage`` holds what a numpy DDIM sampler needs: the image shape, the prediction type, the
cosine schedule (its formula, the time range the log-SNR clipping leaves, and alpha/sigma precomputed on the
default ``sample_steps`` grid), the step count and the mapping of the last clean-image estimate to [0, 1].

``install`` makes a rebuilt Diffusion compute through the graph: the raw and the EMA denoiser both become the
session, so its test step's denoising loss and sampling speed are the shipped graph's.
"""

from __future__ import annotations

from typing import Any

import torch

from genexp.deploy.onnx_export import Graph, float_copy
from genexp.deploy.onnx_runtime import OrtModule
from genexp.exporters.registry import Exporter, register_exporter
from genexp.exporters.vae import training_images
from genexp.models.diffusion import _T_MAX, _T_MIN, LOGSNR_MAX, LOGSNR_MIN, Diffusion, alpha_sigma

INPUTS = ["z_t", "t"]
# the UNet's weight layers only, its input and output convs in float (relative error 0.026 instead of 0.060 for
# experiment=diffusion_digits: benchmarks/int8_schemes.py); the int8 scheme follows the CPU (deploy.onnx_quantize)
STATIC_INT8 = {"op_types": ["Conv", "Gemm", "MatMul"], "float_ends": True}


def graphs(model: Diffusion, batch_size: int) -> list[Graph]:
    """The denoiser graph on ``example_input(batch_size)``."""
    z, t = model.example_input(batch_size)
    net = float_copy(model.deployable())
    batch = {0: "batch"}
    output = model.prediction
    return [
        Graph("model", net, (z.cpu(), t.cpu()), INPUTS, [output], {"z_t": batch, "t": batch, output: batch})
    ]


def usage(model: Diffusion) -> dict[str, Any]:
    """What a numpy DDIM sampler needs from ``model.json``."""
    steps = model.sample_steps
    grid = torch.tensor([i / steps for i in range(steps, -1, -1)])
    alpha, sigma = alpha_sigma(grid)
    x_hat = "alpha_t z - sigma_t v" if model.prediction == "v" else "(z - sigma_t eps) / alpha_t"
    return {
        "kind": "images",
        "image_shape": list(model.image_shape),
        "prediction": model.prediction,
        "sample_steps": steps,
        "schedule": {
            "name": "cosine",
            "formula": "angle = pi/2 * (t_min + t * (t_max - t_min)); alpha_t = cos(angle), sigma_t = sin(angle)",
            "t_min": _T_MIN,
            "t_max": _T_MAX,
            "logsnr_min": LOGSNR_MIN,
            "logsnr_max": LOGSNR_MAX,
            "grid": {
                "t": grid.tolist(),
                "alpha": alpha.flatten().tolist(),
                "sigma": sigma.flatten().tolist(),
            },
        },
        "output_range": "x_hat in [-1, 1] (clipped); pixels in [0, 1] = (x_hat + 1) / 2",
        "how": "deterministic DDIM: z ~ N(0, 1) float32 (batch, C, H, W); for i = sample_steps..1, with "
        "t = i / sample_steps and t_next = (i - 1) / sample_steps (alpha, sigma of each from the schedule): "
        f"out = model.onnx(z_t=z, t=full(batch, t)); x_hat = clip({x_hat}, -1, 1); "
        "z = alpha_next x_hat + sigma_next (z - alpha_t x_hat) / sigma_t. The last x_hat is the sample: "
        "pixels in [0, 1] = (x_hat + 1) / 2",
    }


def noised(images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``(z_t, t)``: ``images`` in [0, 1] noised at times ``t ~ U(0, 1)``, as in training."""
    x = images.float() * 2 - 1
    t = torch.rand(x.shape[0], generator=generator)
    a, s = alpha_sigma(t)
    return a * x + s * torch.randn(x.shape, generator=generator), t


def install(model: Diffusion, sessions: dict[str, Any]) -> Diffusion:
    """The raw and EMA denoiser of ``model`` replaced by the ``model`` graph's session."""
    shim = OrtModule(sessions["model"])
    model.net = shim
    if model.ema is not None:
        model.ema = shim
    return model


@register_exporter(Diffusion)
class DiffusionExporter(Exporter):
    int8 = "static"
    static_options = STATIC_INT8

    def graphs(self, model: Diffusion, batch_size: int, fused_attention: bool = False) -> list[Graph]:  # type: ignore[override]
        return graphs(model, batch_size)

    def usage(self, model: Diffusion) -> dict[str, Any]:  # type: ignore[override]
        return usage(model)

    def inputs(self, model: Diffusion, datamodule: Any, count: int, batch_size: int) -> list[Any]:  # type: ignore[override]
        """The run's training images noised at random times (seeded)."""
        generator = torch.Generator().manual_seed(1)
        return [
            noised(x, generator) for x in training_images(model.image_shape, datamodule, count, batch_size)
        ]

    def install(self, model: Diffusion, sessions: dict[str, Any]) -> None:  # type: ignore[override]
        install(model, sessions)
