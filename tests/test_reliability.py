"""Hard kills: resume after SIGKILL with the compression state, and checkpoints that are never half-written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import FAST, REPO, run_cli, run_dirs
from genexp.checkpoints.rebuild import load_checkpoint, saved_config
from genexp.runtime.errors import CheckpointError

PRUNE = [
    "compression=[prune]",
    "compression.prune.final_sparsity=0.6",
    "compression.prune.start_epoch=1",
    "compression.prune.end_epoch=4",
    "trainer.max_epochs=6",
    "test=false",
    "model.hidden_channels=8",
    "trainer.limit_train_batches=6",
]


def _popen(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "genexp.train", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _kill_after_epoch(proc: subprocess.Popen, last: Path, epoch: int, timeout: float = 240) -> None:
    """SIGKILL the run once ``last.ckpt`` records ``epoch`` (so the kill lands inside the next epoch)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if last.is_file():
            try:
                if torch.load(last, weights_only=True, map_location="cpu")["epoch"] >= epoch:
                    break
            except Exception:  # noqa: BLE001 - being replaced right now; look again
                pass
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def _sparsity(run: Path) -> float:
    return json.loads((run / "compression.json").read_text())["achieved_sparsity"]


def _kill_and_resume(args: list[str], tmp_path: Path) -> tuple[Path, Path, Path]:
    """An uninterrupted run, and the same run SIGKILLed inside epoch 3 then resumed from its last.ckpt.

    Returns (uninterrupted run, killed run, resumed run) folders.
    """
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    whole.mkdir(), killed.mkdir()
    assert run_cli([*FAST, *args], cwd=whole).returncode == 0
    [reference] = run_dirs(whole)

    proc = _popen([*FAST, *args, "hydra.run.dir=outputs/train/runs/victim"], cwd=killed)
    victim = killed / "outputs" / "train" / "runs" / "victim"
    _kill_after_epoch(proc, victim / "checkpoints" / "last.ckpt", epoch=2)
    assert proc.returncode == -signal.SIGKILL

    resumed = run_cli([*FAST, *args, f"ckpt_path={victim}/checkpoints/last.ckpt"], cwd=killed)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    [after] = [d for d in run_dirs(killed) if d != victim]
    loss_a = json.loads((reference / "metrics.json").read_text())["val/loss"]
    loss_b = json.loads((after / "metrics.json").read_text())["val/loss"]
    assert abs(loss_a - loss_b) / loss_a < 0.05, (loss_a, loss_b)
    return reference, victim, after


def test_sigkill_mid_schedule_then_resume_matches_uninterrupted_run(tmp_path: Path) -> None:
    reference, victim, after = _kill_and_resume(PRUNE, tmp_path)
    saved = torch.load(victim / "checkpoints" / "last.ckpt", weights_only=True)
    assert 2 <= saved["epoch"] < 5, "killed mid-schedule"
    assert _sparsity(after) == pytest.approx(_sparsity(reference), abs=1e-6) == pytest.approx(0.6, abs=5e-3)
    final = torch.load(after / "checkpoints" / "last.ckpt", weights_only=True)
    assert final["epoch"] == 5 and final["global_step"] == 6 * 6


WRITER = """
import sys, torch
from lightning.fabric.utilities.cloud_io import _atomic_save
state = {"weights": torch.randn(4_000_000), "epoch": 0}
i = 0
while True:
    i += 1
    state["epoch"] = i
    _atomic_save(state, sys.argv[1])
"""


def test_kill_during_checkpoint_save_never_leaves_a_corrupt_file(tmp_path: Path) -> None:
    """Lightning writes checkpoints to a temporary file and renames it; a SIGKILL at any moment leaves either
    the previous complete checkpoint or the new one."""
    target = tmp_path / "last.ckpt"
    for attempt in range(6):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)])
        deadline = time.monotonic() + 60
        while not target.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05 + 0.37 * attempt)  # land the kill at different points of the save loop
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        state = torch.load(target, weights_only=True)
        assert state["weights"].numel() == 4_000_000 and state["epoch"] >= 1


def test_truncated_checkpoint_names_the_file(tmp_path: Path) -> None:
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": {"w": torch.ones(1000)}, "genexp_config": {}}, good)
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(good.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="cut.ckpt.*corrupt or truncated"):
        load_checkpoint(cut)


def test_config_from_checkpoint_is_validated_before_instantiation(tmp_path: Path) -> None:
    crafted = {
        "genexp_config": {
            "data": {"_target_": "genexp.data.images.ImageDataModule"},
            "model": {"_target_": "os.system", "command": "echo pwned"},
            "optimizer": {"_target_": "torch.optim.Adam", "_partial_": True},
        },
        "state_dict": {},
    }
    with pytest.raises(CheckpointError, match="os.system"):
        saved_config(crafted, tmp_path / "x.ckpt")


QAT = [
    "compression=[quantize]",
    "compression.quantize.mode=qat",
    "compression.quantize.start_epoch=1",
    "compression.quantize.latency_repeats=0",
    "trainer.max_epochs=5",
    "test=false",
    "model.hidden_channels=8",
    "trainer.limit_train_batches=6",
]


def test_sigkill_during_qat_then_resume_finishes_with_int8_artifact(tmp_path: Path) -> None:
    _, victim, after = _kill_and_resume(QAT, tmp_path)  # killed in epoch 3: fake-quant active since epoch 1
    assert not (victim / "quantized").exists(), "the killed run never reached fit end"
    recipe = json.loads((after / "quantized" / "recipe.json").read_text())
    assert recipe["recipe"]["mode"] == "qat"
    assert torch.load(after / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 4
