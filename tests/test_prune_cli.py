"""compression=[prune] through the real CLI: per-epoch logs and resuming mid-schedule."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from genexp.models.vae import VAE

COMMON = [
    "compression=[prune]",
    "compression.prune.final_sparsity=0.8",
    "compression.prune.end_epoch=3",
    "compression.prune.latency_repeats=2",
    "++trainer.limit_train_batches=2",
    "++trainer.limit_val_batches=1",
    "trainer.accelerator=cpu",
    "callbacks.progress_bar=null",
    "trainer.enable_model_summary=false",
    "test=false",
    "model.sample_every_n_epochs=0",
]


def cubic(epoch: int) -> float:
    return 0.8 if epoch >= 3 else 0.8 * (1 - (1 - epoch / 3) ** 3)


def zeros(state_dict: dict) -> dict[str, torch.Tensor]:
    return {k: v == 0 for k, v in state_dict.items() if k.endswith("weight") and v.dim() > 1}


def scalars(run: Path, tag: str) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values = []
    for events in sorted((run / "tensorboard").rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events))
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            values += [e.value for e in acc.Scalars(tag)]
    return values


def test_resume_mid_schedule_ends_like_an_uninterrupted_run(cli, tmp_path: Path) -> None:
    full, first, resumed = tmp_path / "full", tmp_path / "first", tmp_path / "resumed"
    with ThreadPoolExecutor(2) as pool:
        runs = list(
            pool.map(
                cli,
                [
                    [*COMMON, "trainer.max_epochs=4", f"hydra.run.dir={full}"],
                    [*COMMON, "trainer.max_epochs=2", f"hydra.run.dir={first}"],  # cut mid-schedule
                ],
            )
        )
    for run in runs:
        assert run.returncode == 0, run.stderr[-3000:]
    last = first / "checkpoints" / "last.ckpt"
    run = cli([*COMMON, "trainer.max_epochs=4", f"ckpt_path={last}", f"hydra.run.dir={resumed}"])
    assert run.returncode == 0, run.stderr[-3000:]

    # uninterrupted: on the cubic curve every epoch, in TensorBoard and in compression.json
    report = json.loads((full / "compression.json").read_text())
    assert report["sparsity"] == 0.8 and report["achieved_sparsity"] == pytest.approx(0.8, abs=0.005)
    assert [h["target"] for h in report["history"]] == pytest.approx([cubic(e) for e in (1, 2, 3)])
    assert scalars(full, "compression/sparsity") == pytest.approx([cubic(e) for e in range(4)], abs=0.005)
    assert len(scalars(full, "compression/bytes_sparse")) == 4
    assert json.loads((full / "metrics.json").read_text())["compression/sparsity"] == pytest.approx(
        0.8, abs=0.005
    )

    # the mid-schedule checkpoint: plain weights (load into an unpruned VAE), masks + position in the callback
    ckpt = torch.load(last, weights_only=True)
    state = ckpt["callbacks"]["PruningCallback"]
    assert state["sparsity"] == pytest.approx(cubic(1)) and len(state["masks"]) == 7
    VAE(image_shape=(1, 16, 16)).load_state_dict(ckpt["state_dict"])

    # resumed: same schedule, same final sparsity, and the old masks kept
    resumed_report = json.loads((resumed / "compression.json").read_text())
    assert resumed_report["sparsity"] == 0.8
    assert resumed_report["targeted_nonzero"] == report["targeted_nonzero"]
    assert [h["epoch"] for h in resumed_report["history"]] == [1, 2, 3]
    assert [h["target"] for h in resumed_report["history"]] == pytest.approx(
        [h["target"] for h in report["history"]]
    )
    final = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)
    before, after = zeros(ckpt["state_dict"]), zeros(final["state_dict"])
    for key in before:
        assert torch.all(after[key][before[key]]), key  # pruned before the cut -> still pruned
