"""The search loop: an Optuna study in ``<out>/study.db`` (SQLite), driven trial by trial.

The study runs in memory and lives in ``study.db`` (``store.StudyFile``, SQLite). Each trial is asked of it, fine-tuned as an ordinary genexp-train run (``trial.fine_tune``), measured
here (``measure.measure_trial``) and told back with two objectives, both minimized: the quality change against
the base, and the latency relative to the base (or the bytes). Launching the same command on the same ``out``
resumes: finished trials are replayed from the file and count toward ``n_trials``; a trial cut off by a kill
is replayed as failed (``interrupted``), does not count, and a new trial takes its place.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import optuna
from optuna.trial import TrialState

from genexp.checkpoints.rebuild import Loaded, load_any
from genexp.exporters.registry import family_of
from genexp.runtime.errors import GenexpError
from genexp.runtime.run_folder import find_checkpoint
from genexp.search.measure import machine, measure_trial, measuring, quality
from genexp.search.settings import Settings
from genexp.search.space import Space, describe, family_name, load_space, recipe_overrides, suggest
from genexp.search.store import StudyFile
from genexp.search.trial import finished_metrics, launch, trial_name, write_recipe

log = logging.getLogger(__name__)
STUDY_NAME = "genexp-optimize"
RECORD = "record"


def open_study(settings: Settings) -> tuple[optuna.study.Study, StudyFile]:
    """The study of ``settings.out`` (created, or replayed from ``study.db`` to resume); refuses a file made for
    another base or objective."""
    settings.out.mkdir(parents=True, exist_ok=True)
    file = StudyFile(settings.out / "study.db")
    stored = file.attrs()
    asked = {"base": str(settings.base.resolve()), "objective": settings.objective}
    for key, value in asked.items():
        if key not in stored:
            file.set_attr(key, value)
        elif stored[key] != value:
            raise GenexpError(
                f"out={settings.out}: holds a study with {key}={stored[key]}, not {value}; choose a new out folder"
            )
    # A resumed launch seeds its sampler past the trials already in the file: the same seed again would draw
    # the recipes of the first launch again (both samplers start with random draws).
    seed = settings.seed + len(file.rows())
    return file.load(sampler_of(settings, seed)), file


def sampler_of(settings: Settings, seed: int) -> optuna.samplers.BaseSampler:
    """``sampler=tpe``: Optuna's TPE, multi-objective (MOTPE), which models every trial in the study (those
    replayed from the file too) after ``startup_trials`` random ones; ``nsga2``: NSGA-II, whose generations are
    only those of one launch (random for a population's first 50 trials)."""
    if settings.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    return optuna.samplers.TPESampler(n_startup_trials=settings.startup_trials, seed=seed)


def finished(study: optuna.study.Study) -> list[Any]:
    """Trials that count toward ``n_trials``: complete ones, and failures that were not interrupted."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))
    return [t for t in done if not t.user_attrs.get("interrupted")]


def base_quality(file: StudyFile, base: Loaded, space: Space) -> float:
    """The base model's validation quality, measured once per study and stored in its file."""
    if "base_quality" not in file.attrs():
        file.set_attr("base_quality", quality(base, space.metric, "val"))
        file.set_attr("machine", machine())
    return float(file.attrs()["base_quality"])


def change(value: float, reference: float, mode: str) -> float:
    """The quality change (lower-is-better metric): relative to ``reference`` or absolute; +inf for a
    diverged trial (NaN or infinite quality), which ranks last."""
    if not math.isfinite(value):
        return math.inf
    return (value - reference) / abs(reference) if mode == "relative" else value - reference


def choose_backend(figures: dict[str, Any], objective: str) -> str:
    """A trial's deployable: its fastest backend (``latency``, ``tokens_per_s``) or its smallest file, then
    fastest (``size``)."""
    backends = figures["backends"]
    if objective == "size":
        return min(backends, key=lambda b: (backends[b]["bytes"], backends[b]["median_ms"]))
    return min(backends, key=lambda b: backends[b]["median_ms"])


def run_trials(settings: Settings) -> tuple[optuna.study.Study, Space, Loaded]:
    """Run trials until ``n_trials`` have finished (across launches) or ``timeout`` seconds have passed:
    ``parallel`` at a time through Hydra's launcher, then measured here one by one."""
    checkpoint = find_checkpoint(settings.base, "base")
    base = load_any(checkpoint, key="base")
    target = str((base.config.get("model") or {}).get("_target_", "?"))
    space = load_space(family_name(target), settings.space, str(settings.base))
    if settings.objective == "tokens_per_s" and family_of(base.model, base.datamodule).cached is None:
        raise GenexpError(
            f"objective=tokens_per_s: base={settings.base} is a {type(base.model).__name__}, which has no cached "
            "text decoder; expected a GPT run (or objective=latency|size)"
        )
    study, file = open_study(settings)
    reference = base_quality(file, base, space)
    started = time.monotonic()
    while (left := settings.n_trials - len(finished(study))) > 0:
        if settings.timeout is not None and time.monotonic() - started > settings.timeout:
            log.info("timeout=%s s reached: no new trial", settings.timeout)
            break
        batch = [study.ask() for _ in range(min(settings.parallel, left))]
        recipes = {}
        for trial in batch:
            recipes[trial.number] = suggest(trial, space)
            write_recipe(settings.out, trial.number, *recipe_overrides(recipes[trial.number], checkpoint))
            file.save(trial, "running")
        numbers = [trial.number for trial in batch]
        extra = [*space.overrides, *settings.trial_overrides]  # the user's last: they win
        logfile = launch(settings.base, checkpoint, settings.out, numbers, extra, settings.launcher)
        for trial in batch:
            _measure_and_tell(
                study, file, trial, recipes[trial.number], settings, space, base, reference, logfile
            )
    return study, space, base


def _measure_and_tell(
    study: optuna.study.Study,
    file: StudyFile,
    trial: optuna.trial.Trial,
    recipe: dict[str, Any],
    settings: Settings,
    space: Space,
    base: Loaded,
    reference: float,
    logfile: Any,
) -> None:
    """Export and time one fine-tuned trial (alone on the cores, under the lock) and tell the study."""
    folder = settings.out / "trials" / trial_name(trial.number)
    try:
        finished_metrics(settings.out, trial.number, logfile)
        with measuring(settings.out):
            figures = measure_trial(
                folder,
                base,
                space.metric,
                space.batch_size,
                recipe["int8"],
                settings.timing,
                settings.objective,
            )
    except GenexpError as err:
        log.warning("trial %d: %s", trial.number, err)
        file.save(trial, "fail", error=str(err))
        study.tell(trial, state=TrialState.FAIL)
        return
    backend = choose_backend(figures, settings.objective)
    chosen = figures["backends"][backend]
    record = {
        "number": trial.number,
        "recipe": recipe,
        "label": describe(recipe),
        "run": str(folder),
        "backend": backend,
        "quality": chosen["quality"],
        "base_quality": reference,
        "quality_change": change(chosen["quality"], reference, settings.budget_mode),
        "latency_ms": chosen["median_ms"],
        "base_latency_ms": figures["base_ms"],
        "latency_ratio": chosen["median_ms"] / figures["base_ms"],
        "bytes": chosen["bytes"],
        **figures,
    }
    values = [
        record["quality_change"],
        float(record["bytes"]) if settings.objective == "size" else record["latency_ratio"],
    ]
    trial.set_user_attr(RECORD, record)
    file.save(trial, "complete", values, **{RECORD: record})
    study.tell(trial, values)
    log.info("trial %d: %s -> %s", trial.number, record["label"], _summary(record))


def records(study: optuna.study.Study) -> list[dict[str, Any]]:
    """The measured figures of every complete trial, in trial order."""
    return [
        t.user_attrs[RECORD]
        for t in study.get_trials(states=(TrialState.COMPLETE,))
        if RECORD in t.user_attrs
    ]


def _summary(record: dict[str, Any]) -> str:
    return (
        f"{record['backend']}, quality change {record['quality_change']:+.4f}, "
        f"{record['latency_ms']:.3f} ms ({1 / record['latency_ratio']:.2f}x the base), {record['bytes']} bytes"
    )
