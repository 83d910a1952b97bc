"""What used to be tracebacks is one line naming the key or file, with a non-zero exit (real subprocesses)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import FAST, run_dirs

pytestmark = pytest.mark.slow


def one_error_line(result) -> str:
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [x for x in result.stderr.splitlines() if x.startswith("genexp: error:")]
    assert len(lines) == 1, result.stderr[-3000:]
    return lines[0]


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    path = tmp_path / "words.txt"
    path.write_text("the quick brown fox jumps over the lazy dog\n" * 200, encoding="utf-8")
    return path


def test_model_and_data_of_different_kinds(cli, text_file: Path) -> None:
    line = one_error_line(cli(["model=gpt", *FAST]))
    assert "data='digits': expected text data for the GPT model" in line and "data=shakespeare" in line
    line = one_error_line(cli(["model=vae", "data=text", f"data.path={text_file}", *FAST]))
    assert "expected image data for the VAE model" in line and "data=digits" in line


def test_resuming_a_checkpoint_of_another_family_or_shape(cli, tmp_path: Path, text_file: Path) -> None:
    first = cli([*FAST, "model.hidden_channels=8"])
    assert first.returncode == 0, first.stderr[-3000:]
    ckpt = run_dirs(tmp_path)[0] / "checkpoints" / "last.ckpt"
    line = one_error_line(
        cli(["model=gpt", "data=text", f"data.path={text_file}", f"ckpt_path={ckpt}", *FAST])
    )
    assert f"ckpt_path={ckpt}: holds a VAE" in line and "this run builds a GPT" in line
    line = one_error_line(cli([*FAST, "model.hidden_channels=16", f"ckpt_path={ckpt}"]))
    assert f"ckpt_path={ckpt}: its " in line and "has shape" in line


def test_a_failed_multirun_job_prints_its_error_line(cli, tmp_path: Path) -> None:
    result = cli(["-m", *FAST, "model.hidden_channels=8", "model.latent_dim=4,0"])
    assert result.returncode != 0
    assert "genexp: error: model.latent_dim=0: expected a positive integer" in result.stderr
    assert (run_dirs(tmp_path)[0] / "metrics.json").is_file()  # the good job finished


def test_default_prune_schedule_reaches_the_asked_sparsity(cli, tmp_path: Path) -> None:
    result = cli(
        [*FAST, "trainer.max_epochs=3", "compression=[prune]", "compression.prune.final_sparsity=0.8"]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((run_dirs(tmp_path)[0] / "compression.json").read_text())
    assert report["achieved_sparsity"] == pytest.approx(0.8, abs=0.0005)
    assert report["schedule"]["end_epoch"] == 2  # the last epoch of trainer.max_epochs=3
    assert "is after the last epoch" not in result.stderr


@pytest.mark.parametrize("extra", [[], ["compression=[quantize]", "compression.quantize.latency_repeats=0"]])
def test_a_default_run_console_is_quiet(cli, extra) -> None:
    result = cli(
        ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", *extra]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    console = result.stdout + result.stderr
    for noise in ("Failed to load", "litmodels", "litlogger", "💡", "deprecated", "srun"):
        assert noise not in console, (noise, console[-3000:])
    assert "Run folder:" in console and "Metrics:" in console


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("target.metric=val/nonexistent", "target.metric"),
        ("optimized_metric=val/nonexistent", "optimized_metric"),
    ],
)
@pytest.mark.parametrize("sanity", [[], ["+trainer.num_sanity_val_steps=0"]])
def test_a_metric_the_run_never_logs_fails_before_training(
    cli, tmp_path: Path, override, key, sanity
) -> None:
    result = cli([*FAST, "model.hidden_channels=8", override, "target.value=1", *sanity])
    assert result.returncode == 2
    line = one_error_line(result)
    assert f"{key}='val/nonexistent': expected a metric the run logs in validation:" in line
    assert "val/loss" in line and "val/nelbo" in line  # the metrics it does log
    (run,) = run_dirs(tmp_path)
    trained = [] if sanity else list((run / "checkpoints").glob("*.ckpt"))  # sanity check: before any step
    assert not trained and not (run / "metrics.json").exists()


def test_a_metric_a_callback_logs_later_passes_the_check(cli, tmp_path: Path) -> None:
    result = cli(
        [
            *FAST,
            "model=gan",
            "model.g_channels=8",
            "model.d_channels=8",
            "callbacks=quality",
            "callbacks.sample_quality.every_n_epochs=1",
            "callbacks.sample_quality.num_samples=50",
            "target.metric=val/fid",
            "target.value=1e9",
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dirs(tmp_path)[0] / "metrics.json").read_text())
    assert metrics["cost/target_step"] > 0  # reached in the first validation that scored samples
