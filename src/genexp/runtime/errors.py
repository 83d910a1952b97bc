"""The errors genexp raises for bad input, and the one place that turns them into a short message."""

from __future__ import annotations

import functools
import os
import re
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

F = TypeVar("F", bound=Callable[..., Any])


class GenexpError(Exception):
    """A user-facing problem: bad config value, missing file, corrupt checkpoint.

    The message must name the key or path and say what was expected.
    """


class ConfigError(GenexpError, ValueError):
    """A config value is wrong."""

    def __init__(self, key: str, value: Any, expected: str) -> None:
        self.key, self.value, self.expected = key, value, expected
        super().__init__(f"{key}={value!r}: expected {expected}")

    def __reduce__(self) -> tuple[Any, ...]:
        # picklable with its three arguments: submitit (SLURM) ships a job's error back in a pickle
        return (type(self), (self.key, self.value, self.expected))


class DataNotFoundError(GenexpError, FileNotFoundError):
    """A data set or file is not where the config says, and cannot be fetched."""


class CheckpointError(GenexpError):
    """A checkpoint is missing, truncated, corrupt or not a genexp checkpoint."""


def full_error() -> bool:
    """True when the user asked for complete tracebacks (Hydra's own switch)."""
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def report_errors(task: F) -> F:
    """Turn a `GenexpError` raised by a Hydra task into `genexp: error: ...` and exit status 2.

    Tracebacks only appear with HYDRA_FULL_ERROR=1. In a multirun the line is printed too, then the error
    is re-raised so the launcher records the job as failed.
    """

    @functools.wraps(task)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return task(*args, **kwargs)
        except Exception as err:
            if not isinstance(err, (GenexpError, OmegaConfBaseException)) and not _unlogged_monitor(err):
                raise
            if full_error():
                raise
            print(f"genexp: error: {_describe(err)}", file=sys.stderr, flush=True)
            if _in_multirun():
                raise  # the launcher records the job as failed; the line above says why
            raise SystemExit(2) from None

    return wrapper  # type: ignore[return-value]


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type's name when the message is empty)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _unlogged_monitor(err: Exception) -> bool:
    """Lightning's refusal of a callback that monitors a metric the run never logs (a bad config value)."""
    return type(err).__name__ == "MisconfigurationException" and "could not find the monitored key" in str(
        err
    )


def _describe(err: Exception) -> str:
    if _unlogged_monitor(err):
        callback = str(err).split("`")[1] if str(err).count("`") >= 2 else "a callback's monitor"
        logged = sorted(
            set(re.findall(r"'((?:val|test)/[^']+)'", str(err).split("metrics:", 1)[-1].split("HINT")[0]))
        )
        return (
            f"{callback}: expected a metric the run logs ({', '.join(logged) or 'no validation metrics'}); "
            "set callbacks.model_checkpoint.monitor (or the callback that logs it back on)"
        )
    if isinstance(err, MissingMandatoryValue):
        return f"{err.full_key}: a value is required (set it on the command line: {err.full_key}=...)"
    if isinstance(err, OmegaConfBaseException):
        key = getattr(err, "full_key", None)
        return f"{key}: {first_line(err)}" if key else first_line(err)
    return str(err)


def _in_multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:
        return False
