"""Which ONNX graphs each model family ships, and how their outputs become samples.

- GPT: ``model.onnx``: ``tokens`` int64 (batch, sequence <= block_size) -> ``logits`` (batch, sequence, vocab);
  int8: ONNX Runtime's dynamic int8 (MatMul/Gemm), checked on validation windows;
- GAN: ``model.onnx``: the sampling generator (EMA when the run has one), ``z`` (batch, latent) -> ``images``
  in [-1, 1]; int8: static QDQ calibrated on noise batches (its input is noise);
- VAE: ``model.onnx``: ``images`` in [0, 1] -> reconstruction ``logits``, ``mu``, ``logvar``; ``decoder.onnx``:
  ``z`` -> ``logits``; int8: static QDQ calibrated on training images (the decoder on their posterior means);
- Diffusion: ``model.onnx``: the EMA denoiser, ``z_t`` (batch, C, H, W) and ``t`` (batch,) -> ``v`` or ``eps``;
  int8: static QDQ calibrated on training images noised at random times (``genexp.exporters.diffusion``).

``install_graphs`` makes a rebuilt model compute through ONNX Runtime sessions of these graphs (``OrtModule``
shims in place of its deployable's parts), so its own test step measures them on the same split.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from genexp.deploy.onnx_attention import fuse_attention
from genexp.deploy.onnx_conv import project_latent
from genexp.deploy.onnx_export import Family, Graph, float_copy
from genexp.deploy.onnx_runtime import OrtModule
from genexp.exporters import diffusion as onnx_diffusion
from genexp.models.base import GenerativeModule
from genexp.models.diffusion import Diffusion
from genexp.models.gan import GAN
from genexp.models.gpt import GPT
from genexp.models.vae import VAE
from genexp.runtime.errors import GenexpError


class _VAEGraph(nn.Module):
    """The VAE's deployable with its posterior exposed: images -> (logits, mu, logvar)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.encoder, self.decoder = net.encoder, net.decoder

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(x)
        return self.decoder(mu), mu, logvar


def graphs_of(model: GenerativeModule, batch_size: int = 2, fused_attention: bool = False) -> list[Graph]:
    """The graphs ``model``'s family ships, on a float copy of its deployable (the main graph first);
    ``fused_attention``: the GPT's attention as ONNX Runtime's fused op (``genexp.deploy.onnx_attention``)."""
    if isinstance(model, GPT):
        tokens = model.example_input(batch_size).cpu()
        axes = {0: "batch", 1: "sequence"}
        net = float_copy(model.deployable())
        if fused_attention:
            fuse_attention(net)
        return [Graph("model", net, (tokens,), ["tokens"], ["logits"], {"tokens": axes, "logits": axes})]
    if isinstance(model, GAN):
        z = model.example_input(batch_size).cpu()
        net = float_copy(model.deployable())
        project_latent(net)  # the first transposed conv as one Gemm (genexp.deploy.onnx_conv)
        return [Graph("model", net, (z,), ["z"], ["images"], {"z": {0: "batch"}, "images": {0: "batch"}})]
    if isinstance(model, VAE):
        full = _VAEGraph(float_copy(model.deployable()))
        x = model.example_input(batch_size).cpu()
        z = torch.randn(batch_size, model.latent_dim, generator=torch.Generator().manual_seed(0))
        batch = {0: "batch"}
        outputs = ["logits", "mu", "logvar"]
        return [
            Graph("model", full, (x,), ["images"], outputs, {name: batch for name in ["images", *outputs]}),
            Graph("decoder", full.decoder, (z,), ["z"], ["logits"], {"z": batch, "logits": batch}),
        ]
    if isinstance(model, Diffusion):
        return onnx_diffusion.graphs(model, batch_size)
    raise GenexpError(
        f"target: genexp-export knows the GPT, GAN, VAE and diffusion families, not {type(model).__name__}"
    )


def exportable(model: GenerativeModule) -> bool:
    """True for the families ``genexp-export`` writes graphs for (a user's own model is measured in torch only)."""
    return isinstance(model, (GPT, GAN, VAE, Diffusion))


def usage_of(model: GenerativeModule) -> dict[str, Any]:
    """What a user needs to turn the graphs' outputs into samples, with numpy alone."""
    if isinstance(model, GPT):
        return {
            "kind": "text",
            "vocab": list(model.vocab or []),
            "block_size": model.block_size,
            "sample_prompt": model.sample_prompt,
            "how": "ids = [vocab.index(c) for c in text] as int64 (batch, sequence <= block_size); the next "
            "character's distribution is softmax(logits[:, -1] / temperature); append the sampled id and "
            "keep the last block_size ids as the context",
        }
    if isinstance(model, GAN):
        return {
            "kind": "images",
            "latent_dim": model.latent_dim,
            "image_shape": list(model.image_shape),
            "how": "z ~ N(0, 1) float32 (batch, latent_dim) -> images (batch, C, H, W) in [-1, 1]; "
            "pixels in [0, 1] = (images + 1) / 2",
        }
    if isinstance(model, Diffusion):
        return onnx_diffusion.usage(model)
    assert isinstance(model, VAE)
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


def input_batches(model: GenerativeModule, datamodule: Any, count: int, batch_size: int) -> list[Any]:
    """``count`` batches for the main graph: the run's validation windows (GPT) or training images (VAE; noised
    ``(z_t, t)`` pairs for diffusion), noise for the GAN (and where the data module is absent)."""
    batches = _data_batches(model, datamodule, count, batch_size)
    if isinstance(model, Diffusion):
        generator = torch.Generator().manual_seed(1)
        return [onnx_diffusion.noised(images, generator) for images in batches]
    return batches


def _data_batches(model: GenerativeModule, datamodule: Any, count: int, batch_size: int) -> list[torch.Tensor]:
    images = isinstance(model, (VAE, Diffusion))
    if (images or isinstance(model, GPT)) and datamodule is not None:
        datamodule.setup("fit")
        loader = datamodule.val_dataloader() if isinstance(model, GPT) else datamodule.train_dataloader()
        batches = []
        for batch in loader:
            batches.append(batch[0][:batch_size].cpu())
            if len(batches) == count:
                return batches
        if batches:
            return batches
    generator = torch.Generator().manual_seed(1)
    if images:
        return [torch.rand(batch_size, *model.image_shape, generator=generator) for _ in range(count)]  # type: ignore[attr-defined]
    if isinstance(model, GPT):
        return [model.example_input(batch_size).cpu() for _ in range(count)]
    return [torch.randn(batch_size, model.latent_dim, generator=generator) for _ in range(count)]  # type: ignore[attr-defined]


def _feeds(graph: Graph, batches: list[Any], graphs: list[Graph]) -> list[dict[str, Any]]:
    """Feeds of ``graph`` for main-graph ``batches``: a tensor, or a tuple of one per input (the diffusion
    denoiser's ``(z_t, t)``); the VAE decoder takes the encoder's posterior means."""
    if graph.stem == "decoder":
        with torch.inference_mode():
            return [{"z": graphs[0].module(b)[1].numpy()} for b in batches]
    return [
        {name: x.numpy() for name, x in zip(graph.inputs, b if isinstance(b, tuple) else (b,), strict=True)}
        for b in batches
    ]


def family_of(model: GenerativeModule, datamodule: Any = None, fused_attention: bool = True) -> Family:
    """The export description of ``model``'s family (``fused_attention``: see ``graphs_of``)."""
    graphs_of(model)  # an unknown family fails here, before anything is written
    text = None
    if isinstance(model, GPT):
        prompt = model.encode(model.sample_prompt).cpu().numpy().reshape(1, -1) if model.vocab else None
        text = (prompt, model.block_size) if prompt is not None else None
    return Family(
        name=type(model).__name__.lower(),
        model=type(model).__name__,
        graphs=lambda batch: graphs_of(model, batch, fused_attention),
        inputs=lambda count, batch: input_batches(model, datamodule, count, batch),
        feeds=_feeds,
        int8="dynamic" if isinstance(model, GPT) else "static",
        usage=usage_of(model),
        text=text,
        static_options=onnx_diffusion.STATIC_INT8 if isinstance(model, Diffusion) else {},
    )


def install_graphs(model: GenerativeModule, sessions: dict[str, Any]) -> GenerativeModule:
    """Make ``model`` compute through ONNX Runtime: its deployable's parts replaced by ``OrtModule`` shims of
    ``sessions`` (by graph stem: ``model``, and ``decoder`` for the VAE; both denoisers of a Diffusion)."""
    if isinstance(model, GPT):
        model.net = OrtModule(sessions["model"])
    elif isinstance(model, GAN):
        shim = OrtModule(sessions["model"])
        model.generator = shim
        if model.generator_ema is not None:
            model.generator_ema = shim
    elif isinstance(model, VAE):
        model.net.encoder = OrtModule(sessions["model"], outputs=(1, 2))
        model.net.decoder = OrtModule(sessions["decoder"])
    elif isinstance(model, Diffusion):
        onnx_diffusion.install(model, sessions)
    else:
        raise GenexpError(f"target: no ONNX graphs for a {type(model).__name__}")
    return model
