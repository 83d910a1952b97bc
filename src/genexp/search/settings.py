"""genexp-optimize's arguments, checked before anything is read or written (one line per mistake)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from genexp.checks.values import number_at_least, one_of, positive_int, positive_number
from genexp.runtime.errors import ConfigError, GenexpError
from genexp.runtime.run_folder import FINISHED_MARKER, is_run_folder
from genexp.runtime.startup import config_dir

OBJECTIVES = ("latency", "size", "tokens_per_s")  # tokens_per_s: a text family's cached generation speed
BUDGET_MODES = ("relative", "absolute")
SAMPLERS = ("tpe", "nsga2")


@dataclass
class Settings:
    """The search as asked for on the command line (``conf/optimize.yaml``)."""

    base: Path
    budget: float
    budget_mode: str
    objective: str
    n_trials: int
    timeout: float | None
    space: str | None
    out: Path
    seed: int
    parallel: int = 1
    launcher: str | None = None
    trial_overrides: list[str] = field(default_factory=list)
    timing: dict[str, int] = field(default_factory=dict)
    sampler: str = "tpe"
    startup_trials: int = 8


def settings_of(cfg: DictConfig) -> Settings:
    """Check ``cfg`` and return its Settings; raises ConfigError/GenexpError naming the key."""
    objective = one_of("objective", cfg.get("objective"), OBJECTIVES)
    budget_mode = one_of("budget_mode", cfg.get("budget_mode"), BUDGET_MODES)
    budget = number_at_least("budget", cfg.get("budget"), 0.0)
    n_trials = positive_int("n_trials", cfg.get("n_trials"))
    timeout = positive_number("timeout", cfg.get("timeout"), allow_none=True)
    overrides = cfg.get("trial_overrides") or []
    if not OmegaConf.is_list(overrides) and not isinstance(overrides, list):
        raise ConfigError(
            "trial_overrides",
            overrides,
            "a list of genexp-train overrides, e.g. ['trainer.limit_train_batches=50']",
        )
    timing = {k: positive_int(f"latency.{k}", v) for k, v in dict(cfg.get("latency") or {}).items()}
    return Settings(
        base=finished_run(cfg.get("base")),
        budget=float(budget),
        budget_mode=str(budget_mode),
        objective=str(objective),
        n_trials=n_trials,
        timeout=None if timeout is None else float(timeout),
        space=str(cfg.space) if cfg.get("space") else None,
        out=Path(str(cfg.get("out") or cfg.paths.output_dir)),
        seed=int(cfg.get("seed", 0)),
        parallel=positive_int("parallel", cfg.get("parallel", 1)),
        launcher=launcher_of(cfg.get("launcher")),
        trial_overrides=[str(o) for o in overrides],
        timing=timing,
        sampler=str(one_of("sampler", cfg.get("sampler", "tpe"), SAMPLERS)),
        startup_trials=positive_int("startup_trials", cfg.get("startup_trials", 8)),
    )


def finished_run(value: Any) -> Path:
    """``base=``: a finished genexp-train run folder (its metrics.json written)."""
    if not value:
        raise ConfigError(
            "base", value, "a finished genexp-train run folder, e.g. base=outputs/train/runs/<stamp>"
        )
    path = Path(str(value))
    if not path.is_dir() or not is_run_folder(path) or not (path / FINISHED_MARKER).is_file():
        raise GenexpError(
            f"base={path}: not a finished genexp-train run (expected a run folder with .hydra/config.yaml, "
            f"checkpoints/ and {FINISHED_MARKER})"
        )
    return path


def launcher_of(value: Any) -> str | None:
    """``launcher=``: null (Hydra's basic launcher) or a ``conf/hydra/launcher/`` option (slurm, slurm_cpu)."""
    if value is None:
        return None
    options = sorted(p.stem for p in (Path(config_dir()) / "hydra" / "launcher").glob("*.yaml"))
    return str(one_of("launcher", value, [None, *options]))
