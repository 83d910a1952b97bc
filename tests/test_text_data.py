"""TextDataModule: vocabulary, splits, windows, and the errors for bad files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from genexp.data.text import TextDataModule
from genexp.runtime.errors import ConfigError, DataNotFoundError

CORPUS = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 20


def make(path: Path, **kwargs) -> TextDataModule:
    kwargs = {"block_size": 16, "batch_size": 4, "batches_per_epoch": 5, "val_batches": 2, **kwargs}
    return TextDataModule(path=str(path), **kwargs)


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(CORPUS, encoding="utf-8")
    return path


def test_vocab_split_and_windows(corpus: Path) -> None:
    dm = make(corpus)
    dm.setup("fit")
    assert dm.model_kwargs() == {
        "vocab_size": len(set(CORPUS)),
        "vocab": sorted(set(CORPUS)),
        "block_size": 16,
    }
    assert dm.decode(dm.encode(CORPUS[:50])) == CORPUS[:50]
    n = len(CORPUS)  # 90/5/5: train, val, test, contiguous and disjoint
    assert len(dm.val_data) == len(dm.test_data) == int(0.05 * n)
    assert len(dm.train_data) == n - 2 * int(0.05 * n)
    assert torch.equal(torch.cat([dm.train_data, dm.val_data, dm.test_data]), dm.encode(CORPUS))
    test_windows, val_windows = list(dm.test_dataloader()), list(dm.val_dataloader())
    assert len(test_windows) == 2  # drawn from the test split, not the validation split
    assert torch.equal(test_windows[0][0][0], dm.test_data[:16]) and torch.equal(
        val_windows[0][0][0], dm.val_data[:16]
    )

    batches = list(dm.train_dataloader())
    assert len(batches) == 5 and len(dm.train_dataloader()) == 5
    x, y = batches[0]
    assert x.shape == y.shape == (4, 16) and torch.equal(x[:, 1:], y[:, :-1])  # y is x shifted by one

    first, second = list(dm.val_dataloader()), list(dm.val_dataloader())
    assert len(first) == 2
    assert all(
        torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, second, strict=True)
    )
    # A new "epoch" draws new training windows; the same seed repeats them.
    again = list(dm.train_dataloader())
    assert not torch.equal(again[0][0], x)
    other = make(corpus)
    other.setup("fit")
    assert torch.equal(next(iter(other.train_dataloader()))[0], x)


def test_vocab_comes_from_the_checkpoint_state(corpus: Path, tmp_path: Path) -> None:
    state = make(corpus).state_dict()
    smaller = tmp_path / "smaller.txt"
    smaller.write_text("to be or not to be " * 10, encoding="utf-8")
    dm = make(smaller)
    dm.load_state_dict(state)
    assert dm.model_kwargs()["vocab"] == sorted(set(CORPUS))
    dm.setup("test")  # text encoded with the restored vocabulary
    text = "to be or not to be " * 10
    assert dm.decode(dm.test_data[:5]) == text[-len(dm.test_data) :][:5]


def test_tiny_file_of_block_size_plus_one(tmp_path: Path) -> None:
    path = tmp_path / "tiny.txt"
    path.write_text("abcdefghijklmnopq", encoding="utf-8")  # 17 = block_size + 1
    dm = make(path)
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert dm.decode(x[0]) == "abcdefghijklmnop" and dm.decode(y[0]) == "bcdefghijklmnopq"
    assert next(iter(dm.val_dataloader()))[0].shape == (4, 16)
    assert next(iter(dm.test_dataloader()))[0].shape == (4, 16)


def test_split_fractions_must_leave_training_text(corpus: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"data.test_fraction=0.5: expected a fraction with data.val_fraction"
    ):
        make(corpus, val_fraction=0.5, test_fraction=0.5)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty"),
        (b"too short", "at least data.block_size + 1 = 17 characters (it has 9)"),
        (b"caf\xe9 latin-1 text, not utf-8 at all, long enough", "UTF-8"),
    ],
)
def test_bad_files_name_the_key(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match="data.path") as err:
        make(path).setup("fit")
    assert message in str(err.value) and str(path) in str(err.value)


def test_missing_file_and_failed_download(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "input.txt"
    with pytest.raises(DataNotFoundError, match=r"data.path=.*nowhere/input.txt: no such file"):
        make(missing).setup("fit")
    offline = make(missing, url="http://127.0.0.1:9/input.txt", download=True)
    with pytest.raises(DataNotFoundError, match=r"download it by hand and put it at .*nowhere/input.txt"):
        offline.setup("fit")
    assert not missing.exists() and not missing.with_name("input.txt.part").exists()


@pytest.mark.parametrize("key", ["block_size", "batch_size", "batches_per_epoch", "val_batches"])
def test_bad_sizes_name_the_key(corpus: Path, key: str) -> None:
    with pytest.raises(ConfigError, match=f"data.{key}=0"):
        make(corpus, **{key: 0})


def test_shakespeare(shakespeare: Path) -> None:
    dm = make(shakespeare, block_size=64, batch_size=12, batches_per_epoch=2, val_batches=20)
    dm.setup("fit")
    assert dm.model_kwargs()["vocab_size"] == 65
    assert len(dm.val_data) == len(dm.test_data) == 55_769  # 5% each, the last 10% of the play
    assert next(iter(dm.val_dataloader()))[0].shape == (12, 64)
