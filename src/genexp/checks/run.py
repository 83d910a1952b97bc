"""Checks on the composed config that no single constructor owns; each names the key it rejects.

Constructors check their own arguments (``model.*``, ``data.*``, ``compression.*``); this module checks the
run-level keys (``trainer.*``, ``seed``, ``ckpt_path``) before anything is built.
"""

from __future__ import annotations

import logging
import os

from omegaconf import DictConfig, OmegaConf

from genexp.checks.values import int_at_least, is_int, number_at_least
from genexp.optim.optimizers import CUDA_ONLY
from genexp.runtime.errors import ConfigError

log = logging.getLogger(__name__)


def check_trainer(cfg: DictConfig) -> None:
    """The trainer's epoch and step counts are integers in range, its gradient clip a number >= 0."""
    trainer = cfg.get("trainer")
    if trainer is None:
        return
    minimums = {"max_epochs": -1, "min_epochs": 0, "check_val_every_n_epoch": 1, "log_every_n_steps": 1}
    if "max_steps" in trainer:
        minimums["max_steps"] = -1
    for name, minimum in minimums.items():
        int_at_least(f"trainer.{name}", OmegaConf.select(cfg, f"trainer.{name}"), minimum, allow_none=True)
    number_at_least("trainer.gradient_clip_val", trainer.get("gradient_clip_val"), 0, allow_none=True)


GPU_ACCELERATORS = ("gpu", "cuda")
HALF_PRECISIONS = ("16-mixed", "16-true", "16")


def _cuda_devices() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_hardware(cfg: DictConfig) -> None:
    """Accelerator, precision and device count against this machine (and the SLURM job it runs in)."""
    trainer = cfg.get("trainer")
    if trainer is None:
        return
    accelerator = str(trainer.get("accelerator", "auto"))
    precision = str(trainer.get("precision", "32-true"))
    gpus = _cuda_devices()
    if accelerator in GPU_ACCELERATORS and gpus == 0:
        raise ConfigError(
            "trainer.accelerator",
            accelerator,
            "cpu or auto: this machine has no CUDA GPU (use trainer=cpu or trainer=ddp_cpu instead of "
            "trainer=gpu/ddp/fsdp)",
        )
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and gpus == 0)
    if on_cpu and precision in HALF_PRECISIONS:
        raise ConfigError(
            "trainer.precision", precision, "32-true or bf16-mixed on the CPU (16-bit float needs a CUDA GPU)"
        )
    if on_cpu and precision.startswith("bf16"):
        _warn_emulated_bf16(precision)
    optimizer = str((cfg.get("optimizer") or {}).get("_target_", ""))
    if on_cpu and optimizer in CUDA_ONLY:
        raise ConfigError(
            "optimizer",
            optimizer.rsplit(".", 1)[-1],
            f"a CUDA GPU for {CUDA_ONLY[optimizer]}: its kernels are GPU kernels, ~40x slower than "
            "torch.optim.AdamW on the CPU; use optimizer=adamw here",
        )
    devices = trainer.get("devices")
    if accelerator in GPU_ACCELERATORS and is_int(devices) and devices > gpus:
        raise ConfigError("trainer.devices", devices, f"at most {gpus}, the CUDA GPUs on this machine")
    check_slurm_tasks(cfg)


def _warn_emulated_bf16(precision: str) -> None:
    """bf16 on a CPU without AVX-512 BF16 or AMX is emulated: it runs, but far slower than 32-true."""
    from genexp.deploy.latency import cpu_flags

    flags = cpu_flags()
    if flags and not {"avx512_bf16", "amx_bf16"} & set(flags):
        log.warning(
            "trainer.precision=%s: this CPU has no AVX-512 BF16 or AMX (%s), so bf16 is emulated: the baby GPT "
            "trained 11.5x slower than with 32-true (benchmarks/train_cost.py); use 32-true here",
            precision,
            ", ".join(flags),
        )


def check_slurm_tasks(cfg: DictConfig) -> None:
    """Inside a SLURM job, one task per DDP rank: trainer.devices x trainer.num_nodes = the job's tasks."""
    tasks = os.environ.get("SLURM_NTASKS")
    if tasks is None or os.environ.get("SLURM_JOB_NAME") in ("bash", "interactive"):
        return  # not a SLURM batch job (or an interactive shell, where Lightning launches its own ranks)
    devices, nodes = cfg.trainer.get("devices"), cfg.trainer.get("num_nodes", 1) or 1
    if not is_int(devices) or not is_int(nodes):
        return
    per_node = os.environ.get("SLURM_NTASKS_PER_NODE", "").split("(")[0] or str(int(tasks) // nodes)
    if devices * nodes != int(tasks) or str(devices) != per_node:
        raise ConfigError(
            "trainer.devices",
            devices,
            f"{per_node}, the tasks per node of this SLURM job (hydra.launcher.tasks_per_node / "
            f"--ntasks-per-node={per_node}, {tasks} tasks on {nodes} node(s)): one task per DDP rank",
        )


def validate_train_config(cfg: DictConfig) -> None:
    """Reject bad run-level values before any object is built."""
    int_at_least("seed", cfg.get("seed"), 0)
    check_trainer(cfg)
    check_hardware(cfg)
    metric = cfg.get("optimized_metric")
    if metric is not None and not isinstance(metric, str):
        raise ConfigError("optimized_metric", metric, "a metric name such as val/loss")
