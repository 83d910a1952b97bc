"""A NaN/Inf loss stops the run with the step and term named; skip mode drops batches up to a limit."""

from __future__ import annotations

import json

from conftest import FAST, run_dirs

# conf/tuning/vae_sgd.yaml clips gradients; these tests want the unclipped blow-up
ABSURD = [*FAST, "optimizer=sgd", "optimizer.lr=1e6", "trainer.max_epochs=3", "test=false"]
ABSURD.append("trainer.gradient_clip_val=null")


def test_nan_stops_with_step_and_term_and_keeps_last_good_checkpoint(cli, tmp_path) -> None:
    import torch

    # Epoch 0 trains at lr 1e-3; the step scheduler then multiplies it by 1e9 and the loss blows up in epoch 1.
    result = cli(
        [
            *FAST,
            "optimizer=sgd",
            "optimizer.lr=1e-3",
            "scheduler=step",
            "scheduler.scheduler.step_size=1",
            "scheduler.scheduler.gamma=1e9",
            "trainer.max_epochs=3",
            "test=false",
            "trainer.gradient_clip_val=null",
        ]
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "NaN or Inf at epoch 1, step" in result.stderr and "train/loss" in result.stderr
    [run] = run_dirs(tmp_path)
    assert not (run / "metrics.json").exists(), "a failed run is not marked finished"
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 0 and all(torch.isfinite(v).all() for v in last["state_dict"].values())


def test_skip_policy_drops_batches_up_to_the_limit(cli, tmp_path) -> None:
    result = cli([*ABSURD, "callbacks.nan_guard.policy=skip", "callbacks.nan_guard.max_skips=2"])
    assert result.returncode != 0
    assert "skipped this batch (1/2)" in result.stdout and "skipped this batch (2/2)" in result.stdout
    assert "2 batches were already skipped" in result.stderr


def test_skip_policy_keeps_weights_finite(compose_train) -> None:
    import torch

    from genexp.train import train

    # Only the first epoch's steps explode (lr drops 1e12x after epoch 0), so skipping keeps the weights finite.
    cfg = compose_train(
        [
            *FAST,
            "optimizer=sgd",
            "optimizer.lr=1e6",
            "scheduler=step",
            "scheduler.scheduler.step_size=1",
            "scheduler.scheduler.gamma=1e-12",
            "trainer.max_epochs=2",
            "test=false",
            "callbacks.nan_guard.policy=skip",
            "callbacks.nan_guard.max_skips=100",
            "trainer.gradient_clip_val=null",
        ]
    )
    train(cfg)
    state = torch.load(f"{cfg.paths.output_dir}/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values())
    metrics = json.loads(open(f"{cfg.paths.output_dir}/metrics.json").read())
    assert metrics["train/skipped_batches"] >= 1


def test_grads_finite_tells_overflow_from_nan_and_inf() -> None:
    import torch

    from genexp.callbacks.nan_guard import grads_finite

    fine = [torch.randn(5, 3), torch.randn(7, dtype=torch.bfloat16)]
    assert grads_finite(fine) and grads_finite([])
    # large but finite: the 2-norm overflows to inf, the gradients are still finite
    assert grads_finite([*fine, torch.full((4,), 1e30)])
    assert not grads_finite([*fine, torch.tensor([1.0, float("nan")])])
    assert not grads_finite([torch.tensor([float("-inf"), 2.0]), *fine])
