"""One Hydra run folder per job, whatever the number of DDP ranks, and however the ranks were started.

- **Lightning's launcher** (``trainer=ddp_cpu`` / ``trainer=ddp`` from a shell, single run or ``-m``): Lightning
  re-runs ``sys.argv`` for ranks > 0 with ``hydra.run.dir=<run.dir>``. In a multirun that argv still holds ``-m``
  and the whole sweep (each child would run the sweep again, in new folders), so rank 0 puts its job's overrides
  and folder into ``GENEXP_DDP_JOB`` and `relaunch_argv` rebuilds the child's argv from it: one job, rank 0's
  folder, no ``.hydra/`` and no log file. After each job rank 0 tears its process group down and forgets
  Lightning's env vars, so the next job of a sweep launches fresh ranks instead of hanging.
- **torchrun**: every rank runs Hydra itself (each would stamp its own folder), so rank 0 publishes its folder
  in torchrun's agent store (``MASTER_ADDR:MASTER_PORT``) and ranks > 0 wait for it before Hydra starts.
- **SLURM** (hydra-submitit-launcher): every task runs the same pickled job config, so the folder is shared;
  tasks > 0 drop Hydra's log file handler.

Only rank 0 writes files (Lightning's loggers and checkpoints are rank-zero; ``train`` guards metrics.json).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

from genexp.runtime.errors import GenexpError

JOB_ENV = "GENEXP_DDP_JOB"
# What Lightning's launcher sets in rank 0's own environment before it starts ranks > 0.
LAUNCHER_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", JOB_ENV)
STORE_TIMEOUT = timedelta(minutes=5)
# Ranks > 0 log to the console only: one log file per run folder, written by rank 0.
CHILD_OVERRIDES = ("hydra.mode=RUN", "hydra.output_subdir=null", "hydra.job_logging.root.handlers=[console]")


def _torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _store_key() -> str:
    return f"genexp/run_dir/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"


def _agent_store():  # torch.distributed.TCPStore, imported lazily: the CLI's --help must stay fast
    from torch.distributed import TCPStore

    return TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False, timeout=STORE_TIMEOUT
    )


def relaunch_argv(argv: list[str]) -> list[str]:
    """The argv a DDP rank > 0 must run so that it joins rank 0's job and folder; ``argv`` unchanged otherwise."""
    if _torchrun():
        if any(arg in ("-m", "--multirun") for arg in argv[1:]):
            raise GenexpError(
                "torchrun runs one job: drop -m/--multirun, or sweep without torchrun "
                "(trainer=ddp_cpu/ddp -m ..., or hydra/launcher=slurm)"
            )
        if os.environ.get("RANK", "0") == "0":
            return argv
        run_dir = _agent_store().get(_store_key()).decode()
        return [*argv, f"hydra.run.dir={_quote(run_dir)}", *CHILD_OVERRIDES]
    job = os.environ.get(JOB_ENV)
    if job is None or os.environ.get("LOCAL_RANK", "0") == "0":
        return argv
    spec = json.loads(job)
    return [argv[0], *spec["overrides"], f"hydra.run.dir={_quote(spec['run_dir'])}", *CHILD_OVERRIDES]


def _job_overrides() -> list[str]:
    """This job's overrides (a multirun job's own point, not the sweep), plus the ``hydra.job.*`` ones."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    overrides = HydraConfig.get().overrides
    return [*overrides.task, *(o for o in overrides.hydra if o.startswith(("hydra.job.", "hydra.verbose")))]


@contextmanager
def job_scope(output_dir: str | Path) -> Iterator[None]:
    """Around one training job: tell ranks > 0 where rank 0's folder is; clean up the ranks Lightning started."""
    if "SLURM_NTASKS" in os.environ and os.environ.get("SLURM_PROCID", "0") != "0":
        _console_logging_only()  # every SLURM task runs the Hydra job; only rank 0 writes the log file
    if _torchrun():
        if os.environ.get("RANK", "0") == "0":
            _agent_store().set(_store_key(), str(output_dir))
        yield
        return
    if "LOCAL_RANK" in os.environ:  # a rank started by Lightning (or by hand): nothing to share or clean
        yield
        return
    saved = {key: os.environ.get(key) for key in LAUNCHER_ENV}
    os.environ[JOB_ENV] = json.dumps({"overrides": _job_overrides(), "run_dir": str(output_dir)})
    try:
        yield
    finally:
        _teardown(saved)


def _console_logging_only() -> None:
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
        root.removeHandler(handler)
        handler.close()


def _teardown(saved: dict[str, str | None]) -> None:
    if "torch.distributed" in sys.modules:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
