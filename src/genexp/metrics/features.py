"""Offline feature extractors for FID/KID: a small domain classifier (default) or local Inception weights.

The domain classifier is a small CNN trained once on the data set's train split and cached under
``<data_dir>/genexp_features/`` per data set, image shape, resize mode and seed; later runs load it.
Its penultimate layer gives the features (``DomainFeatures``) and its predictions the class histogram.
Every extractor takes float images in [0, 1] shaped ``(N, C, H, W)`` and returns ``(N, num_features)``,
which is what torchmetrics' ``FrechetInceptionDistance(feature=<module>)`` expects of a custom module.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from genexp.runtime.errors import ConfigError, GenexpError

log = logging.getLogger(__name__)
CACHE_FOLDER = "genexp_features"
CACHE_VERSION = 1  # bump when DomainClassifier's architecture or training changes


class DomainClassifier(nn.Module):
    """Three stride-2 conv blocks, global average pooling, a ``feature_dim`` hidden layer, class logits."""

    def __init__(self, channels: int, num_classes: int = 10, width: int = 32, feature_dim: int = 64) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.hidden = nn.Linear(2 * width, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)
        self.feature_dim = feature_dim

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations ``(N, feature_dim)`` of images in [0, 1]."""
        return F.relu(self.hidden(self.conv(x * 2 - 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class DomainFeatures(nn.Module):
    """A frozen classifier's penultimate features, as torchmetrics' custom FID/KID feature module."""

    def __init__(self, classifier: DomainClassifier) -> None:
        super().__init__()
        self.classifier = classifier.eval().requires_grad_(False)
        self.num_features = classifier.feature_dim

    def train(self, mode: bool = True) -> DomainFeatures:  # stays in eval mode inside a metric
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(x.float())


class InceptionFeatures(nn.Module):
    """Standard FID features: torchmetrics' Inception-v3 (2048-d pool3) from local weights.

    Needs the ``torch-fidelity`` package and a weights file (``pt_inception-2015-12-05-6726825d.pth``);
    grayscale images are repeated to three channels.
    """

    num_features = 2048

    def __init__(self, weights: str | Path, key: str = "inception_weights") -> None:
        super().__init__()
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ConfigError(
                key, str(weights), "an existing Inception-v3 weights file (FID's pt_inception-*.pth)"
            )
        try:
            from torchmetrics.image.fid import NoTrainInceptionV3

            self.net = NoTrainInceptionV3(
                name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=str(path)
            )
        except ModuleNotFoundError as err:
            raise GenexpError(
                f"{key}={weights}: Inception FID needs the torch-fidelity package "
                "(pip install torch-fidelity), or set it to null for the domain-classifier FID"
            ) from err

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        return self.net((x.clamp(0, 1) * 255).round().to(torch.uint8)).float()


@dataclass
class Classifier:
    """A trained domain classifier with its held-out accuracy and where it is cached."""

    model: DomainClassifier
    accuracy: float
    path: Path
    trained_now: bool


def cache_path(
    cache_dir: str | Path, name: str, image_shape: tuple[int, ...], resize: str, seed: int
) -> Path:
    c, h, w = image_shape
    return Path(cache_dir) / CACHE_FOLDER / f"{name}-{c}x{h}x{w}-{resize}-seed{seed}-v{CACHE_VERSION}.pt"


def train_classifier(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    num_classes: int = 10,
    seed: int = 0,
    epochs: int = 20,
    max_steps: int = 3000,
    batch_size: int = 32,
) -> tuple[DomainClassifier, float]:
    """Train a DomainClassifier with Adam (small shifts as augmentation); returns it and its test accuracy."""
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = DomainClassifier(train_x.shape[1], num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    steps_per_epoch = max(1, len(train_x) // batch_size)
    total = min(max_steps, epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=total)
    model.train()
    step = 0
    while step < total:
        order = torch.randperm(len(train_x), generator=generator)
        for i in range(steps_per_epoch):
            if step >= total:
                break
            idx = order[i * batch_size : (i + 1) * batch_size]
            x = _shift(train_x[idx], generator)
            loss = F.cross_entropy(model(x), train_y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
    model.eval()
    return model, accuracy(model, test_x, test_y)


def _shift(x: torch.Tensor, generator: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Random translation by up to ``max_shift`` pixels (one shift per batch; cheap augmentation)."""
    dx, dy = (int(v) for v in torch.randint(-max_shift, max_shift + 1, (2,), generator=generator))
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


@torch.no_grad()
def predict(model: DomainClassifier, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Predicted class of each image."""
    model.eval()
    return torch.cat(
        [model(images[i : i + batch_size].float()).argmax(1) for i in range(0, len(images), batch_size)]
    )


def accuracy(model: DomainClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    return float((predict(model, images) == labels).float().mean())


def load_or_train_classifier(
    cache_dir: str | Path,
    name: str,
    resize: str,
    seed: int,
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    num_classes: int = 10,
) -> Classifier:
    """The cached classifier for this data set, image shape, resize mode and seed; trained on a miss."""
    image_shape = tuple(train[0].shape[1:])
    path = cache_path(cache_dir, name, image_shape, resize, seed)
    if path.is_file():
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            model = DomainClassifier(image_shape[0], num_classes)
            model.load_state_dict(saved["state_dict"])
            log.info("Domain classifier: loaded %s (test accuracy %.4f)", path, saved["accuracy"])
            return Classifier(model.eval(), float(saved["accuracy"]), path, trained_now=False)
        except Exception as err:  # a corrupt or stale cache file is rebuilt, never trusted
            log.warning("Domain classifier cache %s unreadable (%s); retraining", path, err)
    start = time.perf_counter()
    with torch.inference_mode(False), torch.enable_grad():  # may be called from a validation/test hook
        model, acc = train_classifier(*train, *test, num_classes=num_classes, seed=seed)
    _save_atomic({"state_dict": model.state_dict(), "accuracy": acc, "image_shape": list(image_shape)}, path)
    log.info(
        "Domain classifier: trained on %d %s images in %.1fs, test accuracy %.4f, cached at %s",
        len(train[0]),
        name,
        time.perf_counter() - start,
        acc,
        path,
    )
    return Classifier(model, acc, path, trained_now=True)


def _save_atomic(payload: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    torch.save(payload, tmp)
    os.replace(tmp, path)
