"""genexp-optimize: compose -> check -> search (trials, table, plot, best/) -> exit status (3: budget not met)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from genexp.checkpoints.rebuild import trust
from genexp.runtime.errors import report_errors
from genexp.runtime.startup import config_dir, quiet_console
from genexp.search.run import search
from genexp.search.settings import settings_of

CONFIG_DIR = config_dir()


@report_errors
def optimize(cfg: DictConfig) -> int:
    """Search the fastest (or smallest) deployable of ``cfg.base`` within ``cfg.budget``; the exit status."""
    quiet_console()
    settings = settings_of(cfg)
    trust(cfg.get("trust"))
    return search(settings)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="optimize")
def _hydra_main(cfg: DictConfig) -> None:
    status = optimize(cfg)
    if status:
        raise SystemExit(status)


def main() -> None:
    """Console entry point: ``genexp-optimize base=<run> budget=0.02 objective=latency``."""
    _hydra_main()


if __name__ == "__main__":
    main()
