"""genexp installs like a library: the built wheel, in a fresh virtual environment, trains from any folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from conftest import REPO

pytestmark = pytest.mark.slow
SRC = REPO / "src" / "genexp"


def test_pyproject_lists_every_package() -> None:
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"genexp"} | {
        "genexp." + ".".join(p.parent.relative_to(SRC).parts)
        for p in SRC.rglob("__init__.py")
        if p.parent != SRC
    }
    assert listed == found | {"genexp.conf"}


def run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (args, result.stdout[-2000:], result.stderr[-3000:])
    return result


def reuse_site_packages(venv: Path) -> None:
    """Make the running interpreter's site-packages (a venv's, the system's or the user's: wherever pytest found
    genexp's dependencies) importable in ``venv``, after its own: a ``.pth`` file of plain paths. Their own
    ``.pth`` files are not read, so an editable genexp there stays invisible and the wheel's is the one imported.
    (``venv --system-site-packages`` would reach the base interpreter only, not the venv pytest runs in.)"""
    (purelib,) = {Path(p) for p in venv.glob("lib/python*/site-packages")}
    here = [p for p in sys.path if p.endswith(("site-packages", "dist-packages")) and Path(p).is_dir()]
    (purelib / "_genexp_test_dependencies.pth").write_text("\n".join(here) + "\n")


def test_wheel_in_a_fresh_venv_trains_one_epoch_from_a_temp_folder(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HYDRA_FULL_ERROR")}
    wheels = tmp_path / "wheels"
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(wheels),
            str(REPO),
        ],
        tmp_path,
        env,
    )
    (wheel,) = wheels.glob("genexp-*.whl")
    venv = tmp_path / "venv"  # genexp from the wheel; its dependencies from this interpreter's site-packages
    run([sys.executable, "-m", "venv", str(venv)], tmp_path, env)
    bin_dir = venv / "bin"
    reuse_site_packages(venv)
    run([str(bin_dir / "python"), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], tmp_path, env)

    work = tmp_path / "elsewhere"  # no conf/ here, no source tree above
    work.mkdir()
    where = run(
        [
            str(bin_dir / "python"),
            "-c",
            "import genexp, genexp.runtime.startup as s; print(genexp.__file__); print(s.config_dir())",
        ],
        work,
        env,
    )
    module, conf = where.stdout.split()
    assert module.startswith(str(venv)) and conf.startswith(str(venv)) and conf.endswith("genexp/conf")

    job = run([str(bin_dir / "genexp-train"), "--cfg", "job"], work, env)
    assert "_target_: genexp.models.vae.VAE" in job.stdout
    fast = [
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "callbacks.progress_bar=null",
    ]
    run([str(bin_dir / "genexp-train"), *fast], work, env)
    (metrics,) = (work / "outputs" / "train" / "runs").glob("*/metrics.json")
    assert "test/nelbo" in metrics.read_text()
    run(
        [
            str(bin_dir / "genexp-eval"),
            f"target={metrics.parent}",
            "report.repeats=2",
            "callbacks.sample_quality=null",
        ],
        work,
        env,
    )
