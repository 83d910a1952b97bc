"""ImageDataModule: deterministic splits, sizes, value range; offline errors name the folder."""

from __future__ import annotations

import pytest
import torch

from genexp.data.images import ImageDataModule
from genexp.runtime.errors import ConfigError, DataNotFoundError


def _split(seed: int, **kwargs) -> ImageDataModule:
    dm = ImageDataModule(name="digits", seed=seed, **kwargs)
    dm.setup()
    return dm


def test_splits_are_deterministic_per_seed() -> None:
    a, b, c = _split(1), _split(1), _split(2)
    assert torch.equal(a.val_set.tensors[0], b.val_set.tensors[0])
    assert not torch.equal(a.val_set.tensors[0], c.val_set.tensors[0])
    sizes = [len(a.train_set), len(a.val_set), len(a.test_set)]
    assert sum(sizes) == 1797 and sizes[1] == sizes[2] == 270


@pytest.mark.parametrize("size,mode", [(8, "pad"), (16, "interpolate"), (32, "pad")])
def test_resize_modes(size: int, mode: str) -> None:
    x = _split(0, image_size=size, resize=mode).train_set.tensors[0]
    assert x.shape[1:] == (1, size, size) and 0.0 <= x.min() and x.max() <= 1.0
    if mode == "pad" and size > 8:
        border = (size - 8) // 2
        assert x[:, :, :border].abs().sum() == 0  # the padding is a zero border


def test_missing_files_name_the_folder(tmp_path) -> None:
    for name in ("mnist", "fashion_mnist", "cifar10"):
        dm = ImageDataModule(name=name, root=str(tmp_path), image_size=32)
        with pytest.raises(DataNotFoundError, match=str(tmp_path)):
            dm.prepare_data()


def test_mnist_idx_files_are_read(tmp_path) -> None:
    import gzip

    folder = tmp_path / "mnist"
    folder.mkdir()
    images = torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8).numpy()
    labels = torch.arange(5, dtype=torch.uint8).numpy()
    for prefix in ("train", "t10k"):
        header = bytes([0, 0, 8, 3]) + b"".join(n.to_bytes(4, "big") for n in images.shape)
        with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(header + images.tobytes())
        with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(bytes([0, 0, 8, 1]) + (5).to_bytes(4, "big") + labels.tobytes())
    dm = ImageDataModule(name="mnist", root=str(tmp_path), image_size=28, val_fraction=0.2)
    dm.setup()
    assert len(dm.test_set) == 5 and torch.equal(
        dm.test_set.tensors[0][0, 0], torch.from_numpy(images[0]) / 255.0
    )


def test_bad_values_name_the_key() -> None:
    with pytest.raises(ConfigError, match="data.batch_size"):
        ImageDataModule(batch_size=0)
    with pytest.raises(ConfigError, match="data.name"):
        ImageDataModule(name="svhn")
