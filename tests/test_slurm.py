"""SLURM through hydra-submitit-launcher on the real single-node cluster that CI starts (.ci/slurm-up.sh).

Skips when ``sinfo`` does not answer (no cluster on this machine); CI brings one up, so there it always runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import CONF, FAST, has_sinfo, run_dirs
from rank_probe import probe_overrides, read_probes

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.xdist_group("slurm"),  # one job at a time on the 2-CPU node
    pytest.mark.slow,
    pytest.mark.skipif(not has_sinfo(), reason="no SLURM cluster: sinfo does not answer (CI starts one)"),
]

TESTS = Path(__file__).resolve().parent
PROBE_ENV = {"PYTHONPATH": str(TESTS)}  # jobs inherit the submitting environment (sbatch --export=ALL)
# The CPU preset on the default partition; jobs are small enough for the 2-CPU CI node.
SLURM_CPU = [
    "hydra/launcher=slurm_cpu",
    "hydra.launcher.timeout_min=10",
    "hydra.launcher.mem_gb=1",
    "trainer=ddp_cpu",  # 2 devices -> tasks_per_node=2
    *FAST,
    "model.hidden_channels=8",
    "model.num_samples=4",
    "callbacks.model_summary=null",
]
# Pruning lives on another branch until it is merged: use it when its config exists, so that this test checks
# the final sparsity of every DDP job as soon as it can, and runs the same jobs without compression until then.
HAS_PRUNE = (CONF / "compression" / "prune.yaml").is_file()
PRUNE = (
    [
        "compression=[prune]",
        "compression.prune.final_sparsity=0.5",
        "compression.prune.end_epoch=0",
        "compression.prune.latency_repeats=0",
    ]
    if HAS_PRUNE
    else []
)


def test_two_jobs_each_ddp_with_two_tasks(cli, tmp_path: Path) -> None:
    args = ["-m", *SLURM_CPU, *PRUNE, "optimizer.lr=0.01,0.002", *probe_overrides(tmp_path / "probe")]
    proc = cli(args, env=PROBE_ENV, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    (sweep,) = (tmp_path / "outputs" / "train" / "multiruns").iterdir()
    # exactly one folder per job (plus submitit's own folder and Hydra's sweep record), nothing per rank
    assert sorted(p.name for p in sweep.iterdir()) == [".submitit", "0", "1", "multirun.yaml"]
    assert run_dirs(tmp_path) == [sweep / "0", sweep / "1"]
    probes = read_probes(tmp_path / "probe")
    assert sorted(probes) == ["0", "1"]
    for job, lr in (("0", 0.01), ("1", 0.002)):
        run = sweep / job
        ranks = probes[job]
        assert [r["global_rank"] for r in ranks] == [0, 1] and {r["world_size"] for r in ranks} == {2}
        assert {r["cluster"] for r in ranks} == {"SLURMEnvironment"}
        assert {r["root_dir"] for r in ranks} == {str(run)}
        assert {r["lr"] for r in ranks} == {lr}
        assert ranks[0]["metrics"] == pytest.approx(ranks[1]["metrics"], rel=1e-6)  # synchronised
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["val/loss"] == pytest.approx(ranks[0]["metrics"]["val/loss"])
        assert (run / "checkpoints" / "last.ckpt").is_file()
        assert list((run / "tensorboard").glob("events.out.tfevents.*"))
        assert (run / "train.log").read_text().count("Run folder:") == 1  # rank 0's log only
        if HAS_PRUNE:
            report = json.loads((run / "compression.json").read_text())
            assert report["achieved_sparsity"] == pytest.approx(0.5, abs=0.02)
    task_logs = sorted(p.name for p in (sweep / ".submitit").rglob("*_log.err"))
    assert len(task_logs) == 4  # 2 jobs x 2 tasks


def test_devices_must_match_tasks_per_node(cli) -> None:
    args = ["-m", *SLURM_CPU, "trainer.devices=3", "hydra.launcher.tasks_per_node=2"]
    proc = cli(args, timeout=300)
    assert proc.returncode != 0
    assert "trainer.devices=3: expected 2, the tasks per node of this SLURM job" in proc.stderr


def test_unknown_partition_is_named(cli, tmp_path: Path) -> None:
    proc = cli(["-m", *SLURM_CPU, "hydra.launcher.partition=no_such_partition"], timeout=120)
    assert proc.returncode != 0
    assert "invalid partition specified: no_such_partition" in proc.stderr


def test_gpu_preset_asks_no_gpus_for_cpu_devices(cli, tmp_path: Path) -> None:
    """hydra/launcher=slurm with trainer=ddp_cpu derives gpus_per_node from the accelerator: none on CPU."""
    args = [
        "-m",
        "hydra/launcher=slurm",
        "hydra.launcher.timeout_min=10",
        "hydra.launcher.mem_gb=1",
        "hydra.launcher.cpus_per_task=1",
        "trainer=ddp_cpu",
        "trainer.devices=1",
        *FAST,
        "model.hidden_channels=8",
        "callbacks.model_summary=null",
    ]
    proc = cli(args, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    (sweep,) = (tmp_path / "outputs" / "train" / "multiruns").iterdir()
    assert (sweep / "0" / "metrics.json").is_file()
    (script,) = (sweep / ".submitit").rglob("*_submission.sh")
    assert "--gpus-per-node" not in script.read_text() and "--gres" not in script.read_text()


def test_search_trials_run_as_slurm_jobs(cli, tmp_path: Path) -> None:
    """genexp-optimize launcher=slurm_cpu: a batch of two trials is one multirun of two SLURM jobs; the export and
    the timing stay in the search's own process."""
    base = tmp_path / "base"
    proc = cli([*FAST, "model.sample_every_n_epochs=0", f"hydra.run.dir={base}"], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    space = (
        (CONF / "search" / "vae.yaml")
        .read_text()
        .replace("    low: 1\n    high: 4\n", "    low: 1\n    high: 1\n")
    )
    (tmp_path / "space.yaml").write_text(space)
    args = [
        f"base={base}",
        f"space={tmp_path / 'space.yaml'}",
        f"out={tmp_path / 'opt'}",
        "launcher=slurm_cpu",
        "n_trials=2",
        "parallel=2",
        "budget=10",
        "latency.repeats=4",
        "latency.rounds=2",
        "trial_overrides=['hydra.launcher.timeout_min=10','hydra.launcher.mem_gb=1','trainer.devices=1']",
    ]
    proc = cli(args, module="genexp.optimize", timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    trials = tmp_path / "opt" / "trials"
    assert (trials / ".submitit").is_dir()  # the fine-tunes ran as SLURM jobs
    assert all((trials / n / "metrics.json").is_file() for n in ("000", "001"))
    assert json.loads((tmp_path / "opt" / "best" / "model.json").read_text())["within_budget"]
