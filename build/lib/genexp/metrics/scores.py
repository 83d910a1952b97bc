"""Sample-quality scores against a held-out real reference set: FID, KID, class coverage and class KL.

``QualityScorer`` extracts the reference features once (torchmetrics keeps them across ``reset()`` with
``reset_real_features=False``) and scores any number of image sets against them. ``calibrate`` puts a
score on a scale: the floor is real train images against the reference, the ceiling uniform noise.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from genexp.metrics.features import DomainClassifier, predict

COVERAGE_SHARE = 0.03  # a class is covered when at least 3% of the samples fall in it
_BATCH = 500


class QualityScorer:
    """Scores image sets (float, [0, 1], ``(N, C, H, W)``) against ``reference`` real images.

    Args:
        features: a module mapping images to ``(N, d)`` features (``num_features`` attribute).
        classifier: the domain classifier whose predictions give the class histogram.
        reference: real images (the held-out split) and their labels.
        num_classes: classes of the data set.
    """

    def __init__(
        self,
        features: nn.Module,
        classifier: DomainClassifier,
        reference: tuple[torch.Tensor, torch.Tensor],
        num_classes: int = 10,
    ) -> None:
        self.classifier, self.num_classes = classifier, num_classes
        images, labels = reference
        self.real_share = torch.bincount(labels.long(), minlength=num_classes).double() / len(labels)
        self.fid = FrechetInceptionDistance(feature=features, reset_real_features=False)
        self.kid = KernelInceptionDistance(feature=features, reset_real_features=False, subsets=50)
        self.num_real = len(images)
        for i in range(0, len(images), _BATCH):
            chunk = images[i : i + _BATCH].float()
            self.fid.update(chunk, real=True)
            self.kid.update(chunk, real=True)

    @torch.no_grad()
    def fid_of(self, images: torch.Tensor) -> float:
        self.fid.reset()
        for i in range(0, len(images), _BATCH):
            self.fid.update(images[i : i + _BATCH].float(), real=False)
        return float(self.fid.compute())

    @torch.no_grad()
    def kid_of(self, images: torch.Tensor) -> float:
        self.kid.reset()
        for i in range(0, len(images), _BATCH):
            self.kid.update(images[i : i + _BATCH].float(), real=False)
        self.kid.subset_size = min(1000, self.num_real, len(images))
        mean, _ = self.kid.compute()
        return float(mean)

    def class_share(self, images: torch.Tensor) -> torch.Tensor:
        """Share of ``images`` the classifier puts in each class."""
        counts = torch.bincount(predict(self.classifier, images), minlength=self.num_classes)
        return counts.double() / max(1, len(images))

    def score(self, images: torch.Tensor) -> dict[str, float]:
        """``fid``, ``kid``, ``classes_covered`` (share >= 3%), ``class_kl``, ``min_class_share``, ``class_share/<k>``.

        ``class_kl`` is KL(sample class distribution || reference class distribution), in nats: 0 when
        the samples' classes are spread like the real ones, log(10) ~ 2.3 when all fall in one class.
        """
        share = self.class_share(images)
        out = {
            "fid": self.fid_of(images),
            "kid": self.kid_of(images),
            "classes_covered": float((share >= COVERAGE_SHARE).sum()),
            "class_kl": kl_divergence(share, self.real_share),
            "min_class_share": float(share.min()),
        }
        out.update({f"class_share/{k}": float(v) for k, v in enumerate(share)})
        return out

    def calibrate(self, real: torch.Tensor, n: int, seed: int = 0) -> dict[str, float]:
        """``floor``: FID of ``n`` real (train) images; ``ceiling``: FID of ``n`` uniform-noise images."""
        generator = torch.Generator().manual_seed(seed)
        pick = torch.randperm(len(real), generator=generator)[:n]
        noise = torch.rand(n, *real.shape[1:], generator=generator)
        return {"floor": self.fid_of(real[pick]), "ceiling": self.fid_of(noise)}


def kl_divergence(p: torch.Tensor, q: torch.Tensor, eps: float = 1e-8) -> float:
    """KL(p || q) in nats for two discrete distributions (terms with p = 0 contribute 0)."""
    p, q = p.double(), q.double().clamp_min(eps)
    mask = p > 0
    value = float((p[mask] * (p[mask] / q[mask]).log()).sum())
    return value if math.isfinite(value) else float("inf")
