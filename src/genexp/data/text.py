"""TextDataModule: character-level language modelling on any UTF-8 text file (Tiny Shakespeare by default).

The vocabulary (sorted unique characters) is built from the file and travels with every checkpoint through
``state_dict``/``load_state_dict``, so a run can be evaluated or sampled from even if the file changes.
The text is split 90/10 into contiguous train and val parts. Training batches are random windows of
``block_size + 1`` characters; an "epoch" is ``batches_per_epoch`` batches, so epoch-scheduled callbacks
(validation, checkpoints, compression) mean something for text too. Validation uses ``val_batches`` fixed
windows spread evenly over the val part, the same every time; the test stage measures the same windows.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from genexp.checks.values import fraction, positive_int
from genexp.runtime.errors import ConfigError, DataNotFoundError

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"


class CharVocab:
    """A character vocabulary: ``encode`` maps a string to ids, ``decode`` maps ids back."""

    def __init__(self, chars: list[str]) -> None:
        self.chars = list(chars)
        self.index = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text: str) -> CharVocab:
        return cls(sorted(set(text)))

    def __len__(self) -> int:
        return len(self.chars)

    def unknown(self, text: str) -> list[str]:
        """The characters of ``text`` that are not in the vocabulary, sorted."""
        return sorted(set(text) - self.index.keys())

    def encode(self, text: str) -> torch.Tensor:
        """Token ids of ``text`` (every character must be in the vocabulary), vectorised for large files."""
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        table = np.zeros(max(int(codes.max(initial=0)), *map(ord, self.chars)) + 1, dtype=np.int64)
        table[[ord(c) for c in self.chars]] = np.arange(len(self.chars))
        return torch.from_numpy(table[codes])

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        return "".join(self.chars[int(i)] for i in ids)


def read_text(path: Path, key: str = "data.path") -> str:
    """The file's text; errors name ``key`` for a missing, non-UTF-8 or empty file."""
    if not path.is_file():
        raise DataNotFoundError(f"{key}={path}: no such file (expected a UTF-8 text file)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(key, str(path), f"a UTF-8 text file (byte {err.start} is not UTF-8)") from None
    if not text:
        raise ConfigError(key, str(path), "a non-empty UTF-8 text file (this one is empty)")
    return text


def download(url: str, dest: Path, key: str = "data.path") -> None:
    """Fetch ``url`` to ``dest`` through a temporary file; on failure say where to put the file by hand."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
            out.write(response.read())
        tmp.replace(dest)
    except (OSError, ValueError) as err:
        tmp.unlink(missing_ok=True)
        raise DataNotFoundError(
            f"{key}={dest}: file missing and the download from {url} failed ({err}); "
            f"download it by hand and put it at {dest}, or point {key} at a copy"
        ) from None


class RandomWindows(IterableDataset):
    """``num_batches`` batches of random ``(x, y)`` windows; ``y`` is ``x`` shifted by one character.

    Each pass draws from a generator seeded by (seed, rank, pass), so runs repeat and ranks differ.
    """

    def __init__(
        self, data: torch.Tensor, block_size: int, batch_size: int, num_batches: int, seed: int, rank: int = 0
    ) -> None:
        self.windows = data.unfold(0, block_size + 1, 1)  # a view: (len - block_size, block_size + 1)
        self.batch_size, self.num_batches, self.seed, self.rank = batch_size, num_batches, seed, rank
        self.passes = 0

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        generator = torch.Generator().manual_seed(self.seed + 1_000_003 * self.rank + 7919 * self.passes)
        self.passes += 1
        for _ in range(self.num_batches):
            yield self.batch(generator)

    def batch(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch of random windows drawn with ``generator``."""
        ix = torch.randint(len(self.windows), (self.batch_size,), generator=generator)
        chunk = self.windows[ix]
        return chunk[:, :-1], chunk[:, 1:]


def fixed_windows(data: torch.Tensor, block_size: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` windows spread evenly over ``data`` (the same every call)."""
    windows = data.unfold(0, block_size + 1, 1)
    starts = torch.linspace(0, len(windows) - 1, count).round().long()
    chunk = windows[starts]
    return chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()


class TextDataModule(L.LightningDataModule):
    """Character-level text from one UTF-8 file.

    Args:
        name: a label for the corpus (shown in TensorBoard's hparams).
        path: the text file.
        url: where to fetch ``path`` from when it is missing and ``download`` is true (e.g. Tiny Shakespeare).
        download: fetch a missing file from ``url``.
        block_size: characters of context the model sees (windows are ``block_size + 1`` long).
        batch_size: windows per batch.
        batches_per_epoch: training batches per "epoch".
        val_batches: fixed validation batches (the test stage uses as many, from its own split).
        val_fraction, test_fraction: shares of the text held out at its end, validation then test
            (0.05 and 0.05 give the 90/5/5 split: test windows are never seen by validation).
        seed: seed of the random training windows.
    """

    kind = "text"  # what the models it feeds need (GenerativeModule.data_kind)

    def __init__(
        self,
        name: str = "text",
        path: str = "input.txt",
        url: str | None = None,
        download: bool = False,
        block_size: int = 64,
        batch_size: int = 12,
        batches_per_epoch: int = 200,
        val_batches: int = 20,
        val_fraction: float = 0.05,
        test_fraction: float = 0.05,
        seed: int = 0,
    ) -> None:
        super().__init__()
        for key, value in (
            ("data.block_size", block_size),
            ("data.batch_size", batch_size),
            ("data.batches_per_epoch", batches_per_epoch),
            ("data.val_batches", val_batches),
        ):
            positive_int(key, value)
        fraction("data.val_fraction", val_fraction, open_low=True)
        fraction("data.test_fraction", test_fraction, open_low=True)
        if val_fraction + test_fraction >= 1:
            raise ConfigError(
                "data.test_fraction",
                test_fraction,
                f"a fraction with data.val_fraction + it < 1 (val: {val_fraction})",
            )
        self.save_hyperparameters(logger=False)
        self.name, self.path, self.url, self.download = name, Path(path), url, download
        self.block_size, self.batch_size = block_size, batch_size
        self.batches_per_epoch, self.val_batches = batches_per_epoch, val_batches
        self.val_fraction, self.test_fraction, self.seed = val_fraction, test_fraction, seed
        self.vocab: CharVocab | None = None  # restored from a checkpoint, or built from the file in setup()
        self.train_data: torch.Tensor | None = None
        self.val_data: torch.Tensor | None = None
        self.train_set: RandomWindows | None = None
        self.val_set: tuple[torch.Tensor, torch.Tensor] | None = None
        self.test_set: tuple[torch.Tensor, torch.Tensor] | None = None
        self._text: str | None = None

    # ----- the file and its vocabulary ---------------------------------------------------------
    def prepare_data(self) -> None:
        if not self.path.is_file() and self.download and self.url:
            download(self.url, self.path)

    def text(self) -> str:
        """The file's text, read once (fetched first when missing and ``download`` is on)."""
        if self._text is None:
            self.prepare_data()
            if not self.path.is_file():
                hint = f" or set data.download=true to fetch it from {self.url}" if self.url else ""
                raise DataNotFoundError(
                    f"data.path={self.path}: no such file; put a UTF-8 text file there{hint}"
                )
            text = read_text(self.path)
            if len(text) < self.block_size + 1:
                raise ConfigError(
                    "data.path",
                    str(self.path),
                    f"a text of at least data.block_size + 1 = {self.block_size + 1} characters "
                    f"(it has {len(text)}); use a longer file or a smaller data.block_size",
                )
            self._text = text
        return self._text

    def get_vocab(self) -> CharVocab:
        """The character vocabulary (from a restored checkpoint if there is one, else from the file)."""
        if self.vocab is None:
            self.vocab = CharVocab.from_text(self.text())
        return self.vocab

    def model_kwargs(self) -> dict[str, Any]:
        """What a model needs: the vocabulary (its size and characters) and the context length."""
        vocab = self.get_vocab()
        return {"vocab_size": len(vocab), "vocab": vocab.chars, "block_size": self.block_size}

    def encode(self, text: str) -> torch.Tensor:
        return self.get_vocab().encode(text)

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        return self.get_vocab().decode(ids)

    def state_dict(self) -> dict[str, Any]:
        """Saved inside every checkpoint (Lightning stores it under this class's name)."""
        return {"chars": self.get_vocab().chars}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.vocab = CharVocab(list(state_dict["chars"]))

    # ----- splits --------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        text, vocab = self.text(), self.get_vocab()
        unknown = vocab.unknown(text)
        if unknown:
            raise ConfigError(
                "data.path",
                str(self.path),
                f"text whose characters are in the checkpoint's vocabulary (new: {''.join(unknown[:20])!r})",
            )
        data = vocab.encode(text)
        n, need = len(data), self.block_size + 1
        # train | val | test (90/5/5 by default), each part at least one window: on tiny files they overlap.
        test_start = n - int(n * self.test_fraction)
        val_start = test_start - int(n * self.val_fraction)
        self.train_data = data[: max(val_start, need)]
        val_from = min(val_start, n - need)
        self.val_data = data[val_from : max(test_start, val_from + need)]
        self.test_data = data[min(test_start, n - need) :]
        rank = self.trainer.global_rank if self.trainer is not None else 0
        self.train_set = RandomWindows(
            self.train_data, self.block_size, self.batch_size, self.batches_per_epoch, self.seed, rank
        )
        self.val_set = fixed_windows(self.val_data, self.block_size, self.val_batches * self.batch_size)
        self.test_set = fixed_windows(self.test_data, self.block_size, self.val_batches * self.batch_size)

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None, "call setup() first"
        # Windows are cut from a tensor in memory: worker processes would only add overhead.
        return DataLoader(self.train_set, batch_size=None)

    def val_dataloader(self) -> DataLoader:
        assert self.val_set is not None, "call setup() first"
        return self._fixed_loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        assert self.test_set is not None, "call setup() first"
        return self._fixed_loader(self.test_set)

    def _fixed_loader(self, windows: tuple[torch.Tensor, torch.Tensor]) -> DataLoader:
        x, y = windows
        batches = list(zip(x.split(self.batch_size), y.split(self.batch_size), strict=True))
        return DataLoader(batches, batch_size=None, shuffle=False)
