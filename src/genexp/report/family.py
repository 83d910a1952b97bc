"""Each model family's quality metric: what the report ranks by, and how the plot labels it.

Every metric is read from the test stage ``genexp-eval`` runs (lower is better for each ``primary``):

- VAE: negative ELBO per image in nats (``test/nelbo``), with its reconstruction and KL terms (and the
  samples' domain FID and class coverage when ``callbacks.sample_quality`` ran);
- GAN: domain-classifier FID of 1,000 samples against the test split (``test/fid``, from
  ``genexp.callbacks.sample_quality.SampleQuality``), with the number of digit classes covered;
- Diffusion: the same domain FID and class coverage of its DDIM samples, with the sampling throughput
  (``test/images_per_s`` at ``test/sample_steps`` DDIM steps);
- GPT: held-out loss in nats per character (``test/loss``, on the text's own test split: the last 5%,
  never seen by validation), bits per character and perplexity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Family:
    """How a model family's quality is reported."""

    name: str
    primary: str  # the metric that ranks runs (lower is better)
    label: str  # axis label, with units
    metrics: tuple[str, ...]  # the quality columns of the tables (primary first)


FAMILIES: dict[str, Family] = {
    "VAE": Family(
        "vae",
        "test/nelbo",
        "test negative ELBO (nats/image)",
        ("test/nelbo", "test/recon", "test/kl", "test/fid", "test/classes_covered"),
    ),
    "GAN": Family(
        "gan", "test/fid", "domain FID vs test split (lower is better)", ("test/fid", "test/classes_covered")
    ),
    "Diffusion": Family(
        "diffusion",
        "test/fid",
        "domain FID vs test split (lower is better)",
        ("test/fid", "test/classes_covered", "test/images_per_s", "test/sample_steps"),
    ),
    "GPT": Family("gpt", "test/loss", "test loss (nats/char)", ("test/loss", "test/bpc", "test/ppl")),
}


def model_class(config: dict[str, Any]) -> str:
    """The model's class name from a run config (``model._target_``'s last part)."""
    target = str((config.get("model") or {}).get("_target_", "?"))
    return target.rsplit(".", 1)[-1]


def family_of(config: dict[str, Any]) -> Family:
    """The family of a run config; an unknown model is ranked by ``test/loss``."""
    name = model_class(config)
    return FAMILIES.get(name, Family(name.lower(), "test/loss", "test loss", ("test/loss",)))


def compression_of(config: dict[str, Any]) -> dict[str, Any]:
    """What compression a run config asked for: ``{"prune": sparsity|None, "quantize": mode|None,
    "distill": bool, "label": "..."}``."""
    chosen = {  # an option without _target_ builds no callback (e.g. a stray ++compression.quantize.mode)
        name: node
        for name, node in (config.get("compression") or {}).items()
        if isinstance(node, dict) and "_target_" in node
    }
    prune = chosen.get("prune")
    quantize = chosen.get("quantize")
    sparsity = float(prune.get("final_sparsity", 0.0)) if isinstance(prune, dict) else None
    mode = None
    if isinstance(quantize, dict):
        kind = str(quantize.get("mode") or "on")
        detail = quantize.get("dtype") if kind == "half" else quantize.get("scheme")
        mode = f"{kind} {detail}" if detail else kind  # e.g. "ptq int8_weight_only", "half bfloat16"
    distill = isinstance(chosen.get("distill"), dict)
    parts = []
    if sparsity:
        parts.append(f"prune {sparsity:g}")
    if mode:
        parts.append(f"quantize {mode}")
    if distill:
        parts.append("distill")
    others = sorted(k for k in chosen if k not in ("prune", "quantize", "distill"))
    parts += others
    return {
        "prune": sparsity,
        "quantize": mode,
        "distill": distill,
        "label": " + ".join(parts) or "dense",
        "baseline": not parts,
    }
