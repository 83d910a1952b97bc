"""ImageDataModule: digits, MNIST, Fashion-MNIST and CIFAR-10 as float tensors in [0, 1]."""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from genexp.checks.values import fraction, int_at_least, one_of, positive_int
from genexp.data.image_files import IMAGE_CHANNELS, NATIVE_SIZE, load_image_arrays
from genexp.runtime.errors import ConfigError

RESIZE_MODES = ("interpolate", "pad")


class ImageDataModule(L.LightningDataModule):
    """Deterministic train/val/test splits of a small image data set, held in memory.

    Args:
        name: digits, mnist, fashion_mnist or cifar10.
        root: folder holding the data set files (``root/<name>/``).
        download: fetch missing files from their public URLs.
        image_size: side of the square images the model sees; native size, or larger (``resize``).
        resize: ``interpolate`` (bilinear) or ``pad`` (centre on a zero border).
        batch_size, num_workers: DataLoader settings.
        val_fraction: share of the training data held out for validation.
        test_fraction: share held out for test where the data set has no official test split.
        seed: split seed; the same seed always gives the same split.
    """

    kind = "images"  # what the models it feeds need (GenerativeModule.data_kind)

    def __init__(
        self,
        name: str = "digits",
        root: str = "data",
        download: bool = False,
        image_size: int | None = None,
        resize: str = "interpolate",
        batch_size: int = 64,
        num_workers: int = 0,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if name not in IMAGE_CHANNELS:
            raise ConfigError("data.name", name, f"one of {sorted(IMAGE_CHANNELS)}")
        native = NATIVE_SIZE[name]
        image_size = native if image_size is None else image_size
        if not isinstance(image_size, int) or image_size < native:
            raise ConfigError(
                "data.image_size", image_size, f"an integer >= the native size {native} of {name}"
            )
        one_of("data.resize", resize, RESIZE_MODES)
        positive_int("data.batch_size", batch_size)
        int_at_least("data.num_workers", num_workers, 0)
        fraction("data.val_fraction", val_fraction, open_low=True)
        fraction("data.test_fraction", test_fraction, open_low=True)
        self.save_hyperparameters(logger=False)
        self.name, self.root, self.download = name, root, download
        self.image_size, self.resize = image_size, resize
        self.batch_size, self.num_workers = batch_size, num_workers
        self.val_fraction, self.test_fraction, self.seed = val_fraction, test_fraction, seed
        self.train_set: TensorDataset | None = None
        self.val_set: TensorDataset | None = None
        self.test_set: TensorDataset | None = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of the images the model sees."""
        return IMAGE_CHANNELS[self.name], self.image_size, self.image_size

    @property
    def num_classes(self) -> int:
        return 10

    def model_kwargs(self) -> dict[str, Any]:
        """What a model needs to know about this data to size itself."""
        return {"image_shape": self.image_shape}

    def prepare_data(self) -> None:
        load_image_arrays(self.name, self.root, self.download)  # fetch once, on rank 0

    def _to_tensor(self, x: np.ndarray) -> torch.Tensor:
        images = torch.from_numpy(np.ascontiguousarray(x)).float().div_(255.0)
        native = images.shape[-1]
        if self.image_size == native:
            return images
        if self.resize == "pad":
            total = self.image_size - native
            left = total // 2
            return F.pad(images, (left, total - left, left, total - left))
        return F.interpolate(
            images, size=(self.image_size,) * 2, mode="bilinear", align_corners=False
        ).clamp_(0, 1)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        train_x, train_y, test_x, test_y = load_image_arrays(self.name, self.root, False)
        order = np.random.default_rng(self.seed).permutation(len(train_x))
        n_val = int(round(self.val_fraction * len(train_x)))
        if test_x is None:
            n_test = int(round(self.test_fraction * len(train_x)))
            test_idx, order = order[:n_test], order[n_test:]
            test_x, test_y = train_x[test_idx], train_y[test_idx]
        val_idx, train_idx = order[:n_val], order[n_val:]

        def dataset(x: np.ndarray, y: np.ndarray) -> TensorDataset:
            return TensorDataset(self._to_tensor(x), torch.from_numpy(np.ascontiguousarray(y)))

        self.train_set = dataset(train_x[train_idx], train_y[train_idx])
        self.val_set = dataset(train_x[val_idx], train_y[val_idx])
        self.test_set = dataset(test_x, test_y)  # type: ignore[arg-type]

    def _loader(self, data: TensorDataset | None, shuffle: bool) -> DataLoader:
        assert data is not None, "call setup() first"
        return DataLoader(
            data,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)
