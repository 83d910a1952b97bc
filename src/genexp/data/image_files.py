"""Reading (and, when asked, downloading) the image data sets as uint8 arrays.

Each loader returns ``(train_x, train_y, test_x, test_y)`` with images shaped ``(N, C, H, W)``;
``test_x`` is None where the data set has no official test split (digits).
The idx (MNIST) and pickle (CIFAR) formats are read directly, so no torchvision pin is needed.
"""

from __future__ import annotations

import gzip
import pickle
import tarfile
import urllib.request
from pathlib import Path

import numpy as np

from genexp.runtime.errors import DataNotFoundError

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]

_MNIST_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
_MNIST_URLS = {
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "fashion_mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
}
_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"

IMAGE_CHANNELS = {"digits": 1, "mnist": 1, "fashion_mnist": 1, "cifar10": 3}
NATIVE_SIZE = {"digits": 8, "mnist": 28, "fashion_mnist": 28, "cifar10": 32}


def load_digits() -> Arrays:
    """scikit-learn's bundled 8x8 digits (values 0..16) rescaled to uint8 0..255."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    x = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    return x, bunch.target.astype(np.int64), None, None


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find(folder: Path, stem: str) -> Path | None:
    for candidate in (
        folder / stem,
        folder / f"{stem}.gz",
        folder / "raw" / stem,
        folder / "raw" / f"{stem}.gz",
    ):
        if candidate.exists():
            return candidate
    return None


def _fetch(url: str, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
            out.write(response.read())
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise DataNotFoundError(f"could not download {url} to {dest}: {err}") from err
    tmp.replace(dest)


def load_mnist_like(name: str, root: str | Path, download: bool) -> Arrays:
    """MNIST or Fashion-MNIST from ``root/<name>/`` (idx files, gzipped or not)."""
    folder = Path(root) / name
    paths = {key: _find(folder, stem) for key, stem in _MNIST_FILES.items()}
    missing = [stem for key, stem in _MNIST_FILES.items() if paths[key] is None]
    if missing and download:
        for stem in missing:
            _fetch(_MNIST_URLS[name] + stem + ".gz", folder / f"{stem}.gz")
        paths = {key: _find(folder, stem) for key, stem in _MNIST_FILES.items()}
        missing = [stem for key, stem in _MNIST_FILES.items() if paths[key] is None]
    if missing:
        raise DataNotFoundError(
            f"data={name}: no {name} files in {folder} (missing {', '.join(missing)}). "
            f"Put the four idx files (optionally .gz) there, or set data.download=true; data.root sets the folder."
        )
    arrays = {key: _read_idx(path) for key, path in paths.items()}  # type: ignore[arg-type]
    return (
        arrays["train_x"][:, None],
        arrays["train_y"].astype(np.int64),
        arrays["test_x"][:, None],
        arrays["test_y"].astype(np.int64),
    )


def load_cifar10(root: str | Path, download: bool) -> Arrays:
    """CIFAR-10 from ``root/cifar10/cifar-10-batches-py/`` (the python pickle version)."""
    folder = Path(root) / "cifar10" / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    if not all((folder / n).exists() for n in names) and download:
        archive = folder.parent / "cifar-10-python.tar.gz"
        _fetch(_CIFAR_URL, archive)
        with tarfile.open(archive) as tar:
            tar.extractall(folder.parent, filter="data")
    missing = [n for n in names if not (folder / n).exists()]
    if missing:
        raise DataNotFoundError(
            f"data=cifar10: no CIFAR-10 files in {folder} (missing {', '.join(missing)}). "
            f"Unpack cifar-10-python.tar.gz there, or set data.download=true; data.root sets the folder."
        )

    def read(name: str) -> tuple[np.ndarray, np.ndarray]:
        with open(folder / name, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        return batch[b"data"].reshape(-1, 3, 32, 32), np.asarray(batch[b"labels"], dtype=np.int64)

    train = [read(n) for n in names[:5]]
    test_x, test_y = read("test_batch")
    return np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]), test_x, test_y


def load_image_arrays(name: str, root: str | Path, download: bool) -> Arrays:
    """Dispatch on the data set name (one of ``IMAGE_CHANNELS``)."""
    if name == "digits":
        return load_digits()
    if name in ("mnist", "fashion_mnist"):
        return load_mnist_like(name, root, download)
    if name == "cifar10":
        return load_cifar10(root, download)
    raise ValueError(name)
