"""Bad input gives a short message naming the key or path, a non-zero exit, and no traceback."""

from __future__ import annotations

import pytest

from conftest import FAST

CASES = {
    "unknown model": (["model=nope"], ["model", "nope", "vae"]),
    "negative lr": (["optimizer.lr=-1"], ["optimizer.lr", "-1", "positive"]),
    "cifar10 offline": (["data=cifar10"], ["cifar10", "data.download=true", "cifar-10-batches-py"]),
    "missing checkpoint": (["ckpt_path=missing.ckpt"], ["ckpt_path", "missing.ckpt"]),
    "non-numeric epochs": (["trainer.max_epochs=abc"], ["trainer.max_epochs", "abc", "integer"]),
    "bad likelihood": (["model.likelihood=poisson"], ["model.likelihood", "bernoulli"]),
    "bad image size": (["data.image_size=4"], ["data.image_size", "native"]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_reported_briefly(cli, name: str) -> None:
    overrides, expected = CASES[name]
    result = cli([*FAST, *overrides])
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    for fragment in expected:
        assert fragment in result.stderr, (fragment, result.stderr[-2000:])
    assert len(result.stderr.strip().splitlines()) <= 12


def test_full_traceback_on_request(cli) -> None:
    result = cli([*FAST, "optimizer.lr=-1"], env={"HYDRA_FULL_ERROR": "1"})
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_corrupt_checkpoint_names_the_file(cli, tmp_path) -> None:
    bad = tmp_path / "broken.ckpt"
    bad.write_bytes(b"not a checkpoint")
    for module in ("genexp.train", "genexp.evaluate"):
        result = cli([f"ckpt_path={bad}"], module=module)
        assert result.returncode != 0 and str(bad) in result.stderr and "Traceback" not in result.stderr
