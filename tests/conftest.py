"""Shared fixtures: compose configs in-process, and run the real CLIs in a subprocess."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

if os.environ.get(
    "PYTEST_XDIST_WORKER"
):  # pytest -n N: N workers share the cores; one thread each, no spinning
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
SHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"

# Fast settings for any in-process or CLI run in tests.
FAST = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "trainer.accelerator=cpu",
    "trainer.enable_model_summary=false",
    "callbacks.progress_bar=null",
]


def shell_commands(block: str) -> list[str]:
    """The command lines of a ``bash`` block as a reader types them: continued lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)  # a trailing backslash continues the line
    lines = [line.split("  #", 1)[0].split(" # ", 1)[0].strip() for line in joined.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


@pytest.fixture
def compose_train(tmp_path: Path):
    """Compose ``conf/train.yaml`` with overrides, as ``genexp-train`` would, with outputs in tmp_path."""

    def _compose(overrides: list[str] | None = None, config_name: str = "train") -> DictConfig:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=list(overrides or []), return_hydra_config=True)
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / "run")
            cfg.paths.data_dir = str(tmp_path / "data")
            cfg.paths.log_dir = str(tmp_path / "outputs")
        from hydra.core.hydra_config import HydraConfig

        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            del cfg["hydra"]
        return cfg

    yield _compose
    GlobalHydra.instance().clear()


def run_cli(
    args: list[str],
    cwd: Path,
    module: str = "genexp.train",
    timeout: float = 300,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """Run ``python -m <module> args`` the way a user runs ``genexp-train``; returns the finished process."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None) if not env or "HYDRA_FULL_ERROR" not in env else None
    src = str(REPO / "src")
    full_env["PYTHONPATH"] = src + os.pathsep + full_env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def cli(tmp_path: Path):
    """``cli(args)`` runs genexp-train in tmp_path; ``cli(args, module="genexp.evaluate")`` runs genexp-eval."""

    def _run(args: list[str], module: str = "genexp.train", **kwargs) -> subprocess.CompletedProcess:
        return run_cli(args, cwd=tmp_path, module=module, **kwargs)

    return _run


def run_dirs(root: Path, task: str = "train") -> list[Path]:
    """Finished or unfinished run folders under ``root/outputs/<task>/`` (runs and multirun jobs)."""
    base = root / "outputs" / task
    return sorted(p.parent for p in base.rglob(".hydra") if p.is_dir())


@pytest.fixture
def shakespeare() -> Iterator[Path]:
    """The shared Tiny Shakespeare corpus; skips cleanly when ../shared is absent."""
    if not SHAKESPEARE.is_file():
        pytest.skip(f"{SHAKESPEARE} not present")
    yield SHAKESPEARE


def has_sinfo() -> bool:
    if shutil.which("sinfo") is None:
        return False
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


# ----- CI guard: no test may be skipped by accident ------------------------------------------------------
ALLOWED_SKIPS = ("needs a CUDA GPU",)  # the only skips CI accepts (this machine has no GPU)
_skipped: list[tuple[str, str]] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped:
        reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _skipped.append((report.nodeid, reason))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("GENEXP_NO_SKIPS") != "1":
        return
    accidental = [(node, why) for node, why in _skipped if not any(ok in why for ok in ALLOWED_SKIPS)]
    if accidental:
        print("\nGENEXP_NO_SKIPS=1: these tests were skipped, which CI does not allow:")
        for node, why in accidental:
            print(f"  {node}: {why}")
        session.exitstatus = 1
