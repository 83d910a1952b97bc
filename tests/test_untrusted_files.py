"""One trust check in every loader: a crafted artifact or checkpoint is refused before anything is built."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import FAST, run_dirs
from genexp.checkpoints.rebuild import load_deployable
from genexp.runtime.errors import CheckpointError

pytestmark = pytest.mark.slow
PTQ = ["compression=[quantize]", "compression.quantize.latency_repeats=0", "model.hidden_channels=8"]


@pytest.fixture
def artifact_run(cli, tmp_path: Path) -> Path:
    done = cli([*FAST, *PTQ])
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = run_dirs(tmp_path)
    return run


def craft(source: Path, victim: Path, where: str) -> dict:
    """``source`` with its saved model config (or its model_kwargs) turned into a call of torch.save on ``victim``."""
    blob = torch.load(source, map_location="cpu", weights_only=True)
    attack = {"_target_": "torch.save", "obj": "overwritten", "f": str(victim)}
    if where == "model":
        blob["genexp_config"]["model"] = attack
        blob["model_kwargs"] = {}
    else:
        blob["model_kwargs"] = {"image_shape": attack}
    return blob


@pytest.mark.parametrize("where", ["model", "model_kwargs"])
def test_crafted_artifact_is_refused_by_every_loader(
    cli, artifact_run: Path, tmp_path: Path, where: str
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    folder = tmp_path / "crafted" / "quantized"
    folder.mkdir(parents=True)
    torch.save(craft(artifact_run / "quantized" / "deployable.pt", victim, where), folder / "deployable.pt")

    with pytest.raises(
        CheckpointError, match=r"deployable.pt.*torch\.save.*expected a callable from genexp\."
    ):
        load_deployable(folder)
    for args in ([f"target={folder}"], [f"compare=[{folder}]"]):
        result = cli(args, module="genexp.evaluate")
        assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
        assert "torch.save" in result.stderr
    assert victim.read_text() == "precious"


def test_crafted_teacher_checkpoint_is_refused(cli, artifact_run: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    blob = torch.load(artifact_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    blob["genexp_config"]["model"] = {"_target_": "torch.save", "obj": "overwritten", "f": str(victim)}
    torch.save(blob, tmp_path / "crafted.ckpt")
    result = cli([*FAST, "compression=[distill]", f"compression.distill.teacher={tmp_path / 'crafted.ckpt'}"])
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("genexp: error:")]
    assert "compression.distill.teacher=" in line and "torch.save" in line
    assert victim.read_text() == "precious"
