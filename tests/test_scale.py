"""Scale-out on the CPU through real subprocesses: DDP (Lightning's launcher, single run and multirun), torchrun,
Optuna; resume in an unfinished folder; clear messages for precision/accelerator/devices that cannot work here."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from conftest import FAST, run_dirs
from genexp.checks.run import validate_train_config
from genexp.runtime.distributed import relaunch_argv
from genexp.runtime.errors import ConfigError, GenexpError
from genexp.train import _optimized_value, train
from rank_probe import probe_overrides, read_probes

TESTS = Path(__file__).resolve().parent
PROBE_ENV = {"PYTHONPATH": str(TESTS)}  # run_cli puts src/ in front
TINY = [*FAST, "model.hidden_channels=8", "model.num_samples=4", "callbacks.model_summary=null"]
DDP = ["trainer=ddp_cpu", *TINY]
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def only_child(folder: Path) -> Path:
    children = [p for p in folder.iterdir()]
    assert len(children) == 1, children
    return children[0]


def assert_ranks_agree(ranks: list[dict], run: Path, cluster: str) -> None:
    """Two ranks, both working in rank 0's run folder, with the same synchronised val/test metrics."""
    assert [r["global_rank"] for r in ranks] == [0, 1]
    assert {r["world_size"] for r in ranks} == {2}
    assert {r["cluster"] for r in ranks} == {cluster}
    assert {r["root_dir"] for r in ranks} == {str(run)}
    first, second = ranks[0]["metrics"], ranks[1]["metrics"]
    assert {"val/loss", "test/loss"} <= set(first)
    assert first == pytest.approx(second, rel=1e-6)
    assert ranks[0]["lr"] == ranks[1]["lr"]


@pytest.mark.slow
def test_ddp_cpu_two_processes_one_run_folder(cli, tmp_path: Path) -> None:
    proc = cli([*DDP, *probe_overrides(tmp_path / "probe")], env=PROBE_ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = only_child(tmp_path / "outputs" / "train" / "runs")
    assert run_dirs(tmp_path) == [run]
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    metrics = json.loads((run / "metrics.json").read_text())
    (ranks,) = read_probes(tmp_path / "probe").values()
    assert_ranks_agree(ranks, run, "LightningEnvironment")
    assert metrics["val/loss"] == pytest.approx(ranks[0]["metrics"]["val/loss"])
    # rank 1 joined without its own .hydra/ or log lines: the log file is rank 0's alone
    assert (run / "train.log").read_text().count("Run folder:") == 1


@pytest.mark.slow
def test_ddp_cpu_multirun_runs_each_job_once(cli, tmp_path: Path) -> None:
    """Lightning re-launches sys.argv for rank 1; with -m that would re-run the sweep. Each job must run once."""
    proc = cli(["-m", *DDP, "optimizer.lr=0.01,0.002", *probe_overrides(tmp_path / "probe")], env=PROBE_ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = only_child(tmp_path / "outputs" / "train" / "multiruns")
    assert sorted(p.name for p in sweep.iterdir()) == ["0", "1", "multirun.yaml"]
    assert not (tmp_path / "outputs" / "train" / "runs").exists()
    assert run_dirs(tmp_path) == [sweep / "0", sweep / "1"]
    probes = read_probes(tmp_path / "probe")
    assert sorted(probes) == ["0", "1"]
    for job, lr in (("0", 0.01), ("1", 0.002)):
        assert_ranks_agree(probes[job], sweep / job, "LightningEnvironment")
        assert probes[job][1]["lr"] == lr  # rank 1 ran this job's point, not the first one
        assert (sweep / job / "metrics.json").is_file()


@pytest.mark.slow
def test_torchrun_two_ranks_one_run_folder(cli, tmp_path: Path) -> None:
    args = ["--nproc_per_node=2", "-m", "genexp.train", *DDP, *probe_overrides(tmp_path / "probe")]
    proc = cli(args, module="torch.distributed.run", env=PROBE_ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = only_child(tmp_path / "outputs" / "train" / "runs")
    assert run_dirs(tmp_path) == [run]
    assert (run / "metrics.json").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    (ranks,) = read_probes(tmp_path / "probe").values()
    assert_ranks_agree(ranks, run, "TorchElasticEnvironment")


def test_torchrun_refuses_multirun(monkeypatch) -> None:
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")
    with pytest.raises(GenexpError, match="torchrun runs one job"):
        relaunch_argv(["genexp-train", "-m", "optimizer.lr=0.1,0.01"])


@pytest.mark.slow
def test_optuna_search_over_lr_survives_a_failing_trial(cli, tmp_path: Path) -> None:
    # max_epochs=-5 is rejected inside the trial (an exception); the seeded sampler draws it for 3 of 4 trials.
    args = [
        "-m",
        "hparams_search=optuna",
        *(o for o in TINY if not o.startswith("trainer.max_epochs=")),
        "logger=csv",
        "test=false",
        "hydra.sweeper.n_trials=4",
        "trainer.max_epochs=choice(1,-5)",
    ]
    proc = cli(args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Failed experiment" in proc.stdout + proc.stderr
    sweep = only_child(tmp_path / "outputs" / "train" / "multiruns")
    trials = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name for p in trials] == ["0", "1", "2", "3"]
    finished = [p for p in trials if (p / "metrics.json").is_file()]
    assert len(finished) == 1
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["name"] == "optuna"
    assert results["best_params"]["trainer.max_epochs"] == 1
    best = min(json.loads((p / "metrics.json").read_text())["val/loss"] for p in finished)
    assert results["best_value"] == pytest.approx(best)


@pytest.mark.slow
def test_optuna_preset_samples_lr_for_three_trials(cli, tmp_path: Path) -> None:
    proc = cli(["-m", "hparams_search=optuna", *TINY, "logger=csv", "test=false", "hydra.sweeper.n_trials=3"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = only_child(tmp_path / "outputs" / "train" / "multiruns")
    lrs = []
    for trial in sorted(p for p in sweep.iterdir() if p.is_dir()):
        assert (trial / "metrics.json").is_file()
        lrs.append(yaml.safe_load((trial / ".hydra" / "config.yaml").read_text())["optimizer"]["lr"])
    assert len(lrs) == 3 and len(set(lrs)) == 3 and all(1e-4 <= lr <= 1e-1 for lr in lrs)
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["best_params"]["optimizer.lr"] in lrs
    assert math.isfinite(results["best_value"])


def test_diverged_run_returns_inf_not_nan(compose_train) -> None:
    cfg = compose_train([])
    assert _optimized_value(cfg, {"val/loss": float("nan")}) == float("inf")
    assert _optimized_value(cfg, {"val/loss": 1.5}) == 1.5


def test_unfinished_run_folder_resumes_from_last_ckpt(compose_train) -> None:
    """A requeued SLURM job restarts in its folder: it continues from checkpoints/last.ckpt."""
    quiet = [*TINY, "logger=csv", "test=false"]
    first = compose_train(quiet)
    train(first)
    run = Path(first.paths.output_dir)
    (run / "metrics.json").unlink()  # a preempted job never got this far
    steps = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]
    second = compose_train([*quiet, "trainer.max_epochs=2"])
    train(second)
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert (last["epoch"], last["global_step"]) == (1, 2 * steps)


@pytest.mark.parametrize(
    ("overrides", "key", "hint"),
    [
        (["trainer=ddp_cpu", "trainer.precision=16-mixed"], "trainer.precision", "bf16-mixed"),
        (["trainer=cpu", "trainer.precision=16-true"], "trainer.precision", "CUDA GPU"),
    ],
)
def test_half_precision_on_cpu_is_refused(compose_train, overrides, key, hint) -> None:
    with pytest.raises(ConfigError) as err:
        validate_train_config(compose_train(overrides))
    assert err.value.key == key and hint in str(err.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
@pytest.mark.parametrize("preset", ["gpu", "ddp", "fsdp"])
def test_gpu_presets_without_gpu_say_so(compose_train, preset: str) -> None:
    with pytest.raises(ConfigError, match="no CUDA GPU") as err:
        validate_train_config(compose_train([f"trainer={preset}"]))
    assert err.value.key == "trainer.accelerator"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_ddp_without_gpu_cli_message(cli) -> None:
    proc = cli(["trainer=ddp"])
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("genexp: error: trainer.accelerator='gpu'")
    assert "trainer=ddp_cpu" in proc.stderr and "Traceback" not in proc.stderr


def test_16_mixed_on_cpu_cli_message(cli) -> None:
    proc = cli(["trainer=ddp_cpu", "trainer.precision=16-mixed"])
    assert proc.returncode == 2
    assert "genexp: error: trainer.precision='16-mixed'" in proc.stderr and "Traceback" not in proc.stderr


def test_slurm_task_count_must_match_devices(compose_train, monkeypatch) -> None:
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "2")
    monkeypatch.setenv("SLURM_JOB_NAME", "train")
    with pytest.raises(ConfigError, match=r"trainer.devices=3: expected 2.*tasks_per_node"):
        validate_train_config(compose_train(["trainer=ddp_cpu", "trainer.devices=3"]))
    validate_train_config(compose_train(["trainer=ddp_cpu", "trainer.devices=2"]))


@needs_gpu
@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_gpu_mixed_precision(cli, tmp_path: Path, precision: str) -> None:
    proc = cli(["trainer=gpu", f"trainer.precision={precision}", *TINY, "trainer.accelerator=gpu"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(tmp_path)
    assert math.isfinite(json.loads((run / "metrics.json").read_text())["val/loss"])


@needs_gpu
def test_gpu_ddp_one_device(cli, tmp_path: Path) -> None:
    proc = cli(["trainer=ddp", "trainer.devices=1", *TINY, "trainer.accelerator=gpu"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(run_dirs(tmp_path)) == 1


def test_config_error_survives_pickling() -> None:
    """submitit sends a SLURM job's exception back pickled; the message must arrive intact."""
    import pickle

    err = pickle.loads(pickle.dumps(ConfigError("trainer.devices", 3, "2")))
    assert (err.key, err.value, str(err)) == ("trainer.devices", 3, "trainer.devices=3: expected 2")


@pytest.mark.parametrize("flags,warned", [(["avx2"], True), (["avx2", "avx512f", "avx512_bf16"], False)])
def test_bf16_on_a_cpu_without_bf16_units_warns_that_it_is_emulated(
    monkeypatch, caplog, flags, warned
) -> None:
    from omegaconf import OmegaConf

    from genexp.checks import run as validation
    from genexp.deploy import latency

    monkeypatch.setattr(latency, "cpu_flags", lambda: flags)
    monkeypatch.setattr(validation, "_cuda_devices", lambda: 0)
    cfg = OmegaConf.create({"trainer": {"accelerator": "cpu", "precision": "bf16-mixed", "devices": 1}})
    with caplog.at_level("WARNING", logger="genexp.checks.run"):
        validation.check_hardware(cfg)
    assert ("bf16 is emulated" in caplog.text) is warned
