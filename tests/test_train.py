"""genexp-train end to end: composition, every optimizer x scheduler, plateau, resume, run folders."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from conftest import FAST, run_dirs
from genexp.train import train

OPTIMIZERS = ["sgd", "momentum", "adam", "adamw", "adagrad", "rmsprop"]
SCHEDULERS = ["none", "step", "cosine", "warmup_cosine", "plateau", "onecycle"]
QUIET = [
    *FAST,
    "logger=csv",
    "callbacks.model_summary=null",
    "test=false",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "model.num_samples=4",
]


@pytest.mark.parametrize("scheduler", SCHEDULERS)
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_every_optimizer_scheduler_pair_trains(compose_train, optimizer: str, scheduler: str) -> None:
    cfg = compose_train(
        [*QUIET, f"optimizer={optimizer}", f"scheduler={scheduler}", "model.hidden_channels=8"]
    )
    value = train(cfg)
    assert value is not None and torch.isfinite(torch.tensor(value))
    assert (Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt").is_file()


def test_plateau_reduces_lr_when_val_loss_stalls(compose_train) -> None:
    # A 50% relative-improvement threshold makes every epoch after the first a stall.
    cfg = compose_train(
        [
            *QUIET,
            "scheduler=plateau",
            "scheduler.scheduler.patience=0",
            "scheduler.scheduler.threshold=0.5",
            "optimizer.lr=1e-3",
            "trainer.max_epochs=4",
            "trainer.log_every_n_steps=1",
        ]
    )
    train(cfg)
    rows = list(csv.DictReader(open(Path(cfg.paths.output_dir) / "csv" / "metrics.csv")))
    lrs = [float(r["lr-Adam"]) for r in rows if r.get("lr-Adam")]
    assert sorted(set(lrs), reverse=True) == pytest.approx(
        [1e-3, 5e-4, 2.5e-4]
    )  # halved after epochs 2 and 3
    assert lrs == sorted(lrs, reverse=True)


def test_cosine_and_warmup_follow_their_curves(compose_train) -> None:
    cfg = compose_train(
        [
            *QUIET,
            "scheduler=warmup_cosine",
            "scheduler.scheduler.warmup_steps=2",
            "scheduler.scheduler.total_steps=6",
            "scheduler.scheduler.min_lr=1e-4",
            "optimizer.lr=1e-2",
            "trainer.max_epochs=3",
        ]
    )
    train(cfg)
    ckpt = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(
        1e-4, rel=1e-6
    )  # 6 steps: at floor


def test_resume_continues_epoch_optimizer_and_scheduler(cli, tmp_path: Path) -> None:
    common = [
        *FAST,
        "scheduler=step",
        "scheduler.scheduler.step_size=1",
        "scheduler.scheduler.gamma=0.5",
        "optimizer.lr=0.01",
        "test=false",
    ]
    first = cli([*common, "trainer.max_epochs=2"])
    assert first.returncode == 0, first.stderr
    [run] = run_dirs(tmp_path)
    second = cli([*common, "trainer.max_epochs=3", f"ckpt_path={run}/checkpoints/last.ckpt"])
    assert second.returncode == 0, second.stderr
    resumed = [d for d in run_dirs(tmp_path) if d != run]
    assert len(resumed) == 1, "resume writes a new run folder and leaves the first untouched"
    ckpt = torch.load(resumed[0] / "checkpoints" / "last.ckpt", weights_only=False)
    assert (
        ckpt["epoch"] == 2 and ckpt["global_step"] == 9
    )  # last epoch index 2; 3 epochs x 3 batches, not from 0
    assert ckpt["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(0.01 * 0.5**3)
    adam_steps = {float(s["step"]) for s in ckpt["optimizer_states"][0]["state"].values()}
    assert adam_steps == {9.0}, "Adam moments restored, not restarted"
    assert json.loads((run / "metrics.json").read_text())  # first run still complete


def test_default_run_leaves_checkpoint_events_and_metrics(cli, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = cli(["trainer.max_epochs=2", "trainer.limit_train_batches=4", "trainer.log_every_n_steps=2"])
    assert result.returncode == 0, result.stderr
    [run] = run_dirs(tmp_path)
    assert (run / ".hydra" / "config.yaml").is_file() and (run / "train.log").is_file()
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert any(p.name.startswith("epoch") for p in (run / "checkpoints").iterdir()), "best checkpoint"
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("train/loss", "val/loss", "val/nelbo", "val/kl", "val/recon", "test/loss", "test/nelbo"):
        assert key in metrics and metrics[key] == metrics[key], key
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0}).Reload()
    tags = events.Tags()
    assert "samples" in tags["images"] and {"val/loss", "train/loss_epoch"} <= set(tags["scalars"])
    assert any(tag.startswith("lr-") for tag in tags["scalars"]), "learning rate is logged"
    assert {"cost/step_ms", "cost/rss_mb"} <= set(tags["scalars"]), "step time and memory are plotted"
    assert (run / "samples.png").is_file()
    assert (
        metrics["cost/train_batches"] == 8
        and 0 < metrics["cost/step_ms_median"] <= metrics["cost/step_ms_p90"]
    )
    assert metrics["cost/fit_seconds"] > 8 * metrics["cost/step_ms_median"] / 1e3
    assert (
        metrics["cost/samples_per_s"] > 0 and metrics["cost/peak_rss_mb"] >= metrics["cost/start_rss_mb"] > 50
    )


def test_cli_overrides_and_cfg_job(cli) -> None:
    shown = cli(
        ["model.latent_dim=8", "optimizer=sgd", "optimizer.lr=0.05", "scheduler=plateau", "--cfg", "job"]
    )
    assert shown.returncode == 0, shown.stderr
    assert "latent_dim: 8" in shown.stdout and "torch.optim.SGD" in shown.stdout
    assert "ReduceLROnPlateau" in shown.stdout and "lr: 0.05" in shown.stdout


def test_help_lists_groups(cli) -> None:
    result = cli(["--help"])
    assert result.returncode == 0
    for line in (
        "optimizer: adagrad, adam, adamw, adamw4bit, adamw8bit, momentum, rmsprop, sgd",
        "scheduler: cosine, none, onecycle, plateau, step, warmup_cosine",
        "model: ",
    ):
        assert line in result.stdout


def test_two_job_multirun_writes_two_run_folders(cli, tmp_path: Path) -> None:
    result = cli(["-m", *FAST, "test=false", "optimizer=adam,sgd"])
    assert result.returncode == 0, result.stderr
    runs = run_dirs(tmp_path)
    assert len(runs) == 2 and runs[0].parent == runs[1].parent and {r.name for r in runs} == {"0", "1"}
    optimizers = sorted((r / ".hydra" / "overrides.yaml").read_text() for r in runs)
    assert "optimizer=adam" in optimizers[0] and "optimizer=sgd" in optimizers[1]
    assert all((r / "metrics.json").is_file() and (r / "checkpoints" / "last.ckpt").is_file() for r in runs)


def test_finished_run_folder_is_never_reused(cli, tmp_path: Path) -> None:
    target = tmp_path / "fixed"
    assert cli([*FAST, "test=false", f"hydra.run.dir={target}"]).returncode == 0
    before = (target / "metrics.json").read_bytes()
    again = cli([*FAST, "test=false", f"hydra.run.dir={target}"])
    assert again.returncode != 0 and "finished run" in again.stderr and "Traceback" not in again.stderr
    assert (target / "metrics.json").read_bytes() == before


def test_eval_rebuilds_from_checkpoint(cli, tmp_path: Path) -> None:
    assert cli([*FAST, "model.latent_dim=4"]).returncode == 0
    [run] = run_dirs(tmp_path)
    result = cli(
        [
            f"ckpt_path={run}/checkpoints/last.ckpt",
            "trainer.limit_test_batches=2",
            "trainer.enable_progress_bar=false",
        ],
        module="genexp.evaluate",
    )
    assert result.returncode == 0, result.stderr
    [eval_run] = run_dirs(tmp_path, task="eval")
    metrics = json.loads((eval_run / "metrics.json").read_text())
    assert metrics["test/nelbo"] > 0 and metrics["checkpoint/epoch"] == 0


def test_the_cli_freezes_the_gc_once_the_run_is_done(monkeypatch: pytest.MonkeyPatch) -> None:
    """genexp-train skips the interpreter's final garbage collections (~0.85 s at exit) only after the run."""
    import gc

    import genexp.train as cli

    seen = {}

    def run() -> float:
        seen["frozen_during_run"] = gc.get_freeze_count()
        return 1.5

    monkeypatch.setattr(cli, "relaunch_argv", lambda argv: argv)
    monkeypatch.setattr(cli, "_hydra_main", run)
    gc.unfreeze()
    try:
        assert cli.main() == 1.5
        assert seen["frozen_during_run"] == 0 and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
