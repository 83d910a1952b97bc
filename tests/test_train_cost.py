"""Training cost: time to target, the stop at the target, the validation curve, the low-bit optimizer
refusal on the CPU, activation checkpointing, the optimizer study end to end (its comparison included), and
``benchmarks/gpu_check.py`` leaving a machine without a GPU cleanly."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from conftest import FAST, run_dirs
from genexp.callbacks.training_cost import TrainingCost, batch_size_of, percentile
from genexp.models.gpt import GPT
from genexp.models.transformer import Transformer
from genexp.runtime.errors import ConfigError
from genexp.train import train

QUIET = [*FAST, "logger=csv", "callbacks.model_summary=null", "test=false", "model.num_samples=4"]


def _run(
    compose_train, overrides: list[str], name: str = "run"
) -> tuple[dict[str, float], list[dict[str, str]]]:
    cfg = compose_train([*QUIET, *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(Path(cfg.paths.output_dir).parent / name)
    train(cfg)
    run = Path(cfg.paths.output_dir)
    with (run / "train_curve.csv").open(newline="") as f:
        return json.loads((run / "metrics.json").read_text()), list(csv.DictReader(f))


def test_time_to_target_and_curve(compose_train) -> None:
    metrics, curve = _run(
        compose_train, ["trainer.max_epochs=3", "target.metric=val/loss", "target.value=1e9"]
    )
    assert [int(r["step"]) for r in curve] == [3, 6, 9] and {"val/loss", "val/nelbo", "seconds"} <= set(
        curve[0]
    )
    assert metrics["cost/target_step"] == 3  # reached at the first validation
    assert 0 < metrics["cost/target_seconds"] == pytest.approx(float(curve[0]["seconds"]), abs=0.05)
    missed, _ = _run(
        compose_train, ["trainer.max_epochs=1", "target.metric=val/loss", "target.value=-1"], "missed"
    )
    assert math.isnan(missed["cost/target_step"]) and math.isnan(missed["cost/target_seconds"])


def test_target_stop_ends_training_there(compose_train) -> None:
    metrics, curve = _run(
        compose_train,
        ["trainer.max_epochs=5", "target.metric=val/loss", "target.value=1e9", "target.stop=true"],
    )
    assert len(curve) == 1 and metrics["cost/train_batches"] == 3 and metrics["cost/target_step"] == 3


def test_bad_target_is_named() -> None:
    with pytest.raises(ConfigError, match="target.value"):
        TrainingCost(target_metric="val/loss", target_value="low")
    with pytest.raises(ConfigError, match="target.mode"):
        TrainingCost(target_mode="lowest")


def test_batch_sizes_and_percentile() -> None:
    assert batch_size_of((torch.zeros(8, 1, 4, 4), torch.zeros(8))) == (8, 0)
    assert batch_size_of((torch.zeros(3, 64, dtype=torch.long), torch.zeros(3, 64, dtype=torch.long))) == (
        3,
        192,
    )
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 0.9) == pytest.approx(4.6)


def test_low_bit_optimizer_is_refused_on_the_cpu(cli) -> None:
    result = cli(["optimizer=adamw8bit", "trainer.accelerator=cpu"])
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("genexp: error: optimizer='adamw8bit'") and "CUDA GPU" in lines[0]


@pytest.mark.parametrize(
    "overrides,fused",
    [
        (["trainer.precision=32-true"], True),  # the fused kernel: ~4x faster an AdamW step on the CPU
        (
            ["trainer.precision=bf16-mixed"],
            None,
        ),  # left to torch: Lightning refuses clipping with a self-unscaling optimizer
        (["+optimizer.fused=false"], False),  # the config decides when it says
        (["optimizer=rmsprop"], None),  # no fused kernel
    ],
)
def test_optimizers_take_the_fused_kernel_where_it_works(compose_train, overrides: list[str], fused) -> None:
    from genexp.runtime.build import build_datamodule, build_model, build_trainer

    cfg = compose_train([*QUIET, *overrides, "trainer.gradient_clip_val=1.0", "trainer.max_steps=2"])
    datamodule = build_datamodule(cfg)
    model = build_model(cfg, datamodule)
    trainer = build_trainer(cfg, callbacks=[], loggers=[])
    trainer.fit(model, datamodule=datamodule)
    assert trainer.global_step == 2 and trainer.optimizers[0].defaults.get("fused") == fused


def test_activation_checkpointing_gives_the_same_gradients_and_keeps_less() -> None:
    torch.manual_seed(0)
    net = Transformer(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16, dropout=0.0, bias=False)
    idx = torch.randint(11, (3, 8))
    grads, kept = [], []
    for mode in ("none", "mlp", "block"):
        net.zero_grad()
        net.activation_checkpointing = mode
        saved: list[int] = []

        def keep(t: torch.Tensor, saved: list[int] = saved) -> torch.Tensor:
            saved.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
            loss = net(idx).square().mean()
        loss.backward()
        grads.append([p.grad.clone() for p in net.parameters()])
        kept.append(sum(saved))
    for plain, *recomputed in zip(*grads, strict=True):
        for grad in recomputed:
            torch.testing.assert_close(plain, grad)
    assert kept[0] > kept[1] > kept[2]  # the MLP's hidden activations, then whole blocks, are not kept


@pytest.mark.parametrize("value", [1, "all", None])
def test_activation_checkpointing_refuses_what_it_does_not_know(value: object) -> None:
    with pytest.raises(ConfigError, match="model.activation_checkpointing"):
        GPT(activation_checkpointing=value)


@pytest.mark.slow
def test_optimizer_study_end_to_end(cli, tmp_path: Path) -> None:
    """The study recipe at small scale: 2 optimizers x 2 lr factors, then its comparison and plots."""
    result = cli(
        [
            "-m",
            "experiment=optimizer_study",
            "optimizer=adam,momentum",
            "lr_factor=1,2",
            "trainer.max_epochs=2",
            "trainer.limit_train_batches=3",
            "trainer.limit_val_batches=2",
            "trainer.limit_test_batches=2",
            "target.value=1e9",
        ],
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = [d for d in run_dirs(tmp_path) if d.name.isdigit()]  # not compare/, genexp-eval's own folder
    assert len(jobs) == 4
    compare = jobs[0].parent / "compare"
    report = json.loads((compare / "report.json").read_text())
    rows = {(r["optimizer"], r["lr"]): r for r in report["runs"]}
    assert set(rows) == {("Adam", 1e-3), ("Adam", 2e-3), ("SGD+momentum", 0.01), ("SGD+momentum", 0.02)}
    for row in rows.values():
        assert row["cost"]["train_batches"] == 6 and row["cost"]["target_step"] == 3
        assert row["cost"]["samples_per_s"] > 0 and row["cost"]["peak_rss_mb"] > 0
    assert report["curves_plot"] == "curves.png" and (compare / "curves.png").stat().st_size > 10_000
    markdown = (compare / "report.md").read_text()
    assert "## Training cost" in markdown and "steps to target" in markdown and "curves.png" in markdown


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the script runs its 8-minute check")
def test_gpu_check_says_there_is_no_gpu_and_exits_0(tmp_path: Path) -> None:
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
    done = subprocess.run(
        [sys.executable, str(script), "--steps", "2"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert (
        done.stdout.strip().splitlines()[-1]
        == "gpu_check: no CUDA GPU on this machine; nothing to measure (exit 0)"
    )
    assert list(tmp_path.iterdir()) == []  # nothing trained, nothing written
