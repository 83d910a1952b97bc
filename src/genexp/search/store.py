"""``<out>/study.db``: the study's trials in SQLite, so that a killed search resumes where it stopped.

Optuna 2.x's own RDB storage needs SQLAlchemy < 2, which this environment does not have (the installed
hydra-optuna-sweeper pins optuna < 3). So the study runs in memory and every trial is written here as it
starts (``running``) and ends (``complete`` or ``fail``), with its parameters, their distributions, its two
objective values and its measured figures. ``load`` replays the file into a fresh in-memory study, in trial
order (trial numbers stay the same); a trial still ``running`` in the file was cut off by a kill and is
replayed as failed (``interrupted``): its folder is left as it was and its recipe may be drawn again.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import distribution_to_json, json_to_distribution
from optuna.trial import TrialState

_SCHEMA = """
CREATE TABLE IF NOT EXISTS trials (number INTEGER PRIMARY KEY, state TEXT NOT NULL, params TEXT NOT NULL,
    distributions TEXT NOT NULL, trial_values TEXT, user_attrs TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS study (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_STATES = {"complete": TrialState.COMPLETE, "fail": TrialState.FAIL, "running": TrialState.FAIL}


class StudyFile:
    """The SQLite file of one study: study attributes and one row per trial."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with self._connect() as db:
            db.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=60)

    def attrs(self) -> dict[str, Any]:
        with self._connect() as db:
            return {k: json.loads(v) for k, v in db.execute("SELECT key, value FROM study")}

    def set_attr(self, key: str, value: Any) -> None:
        with self._connect() as db:
            db.execute("INSERT OR REPLACE INTO study VALUES (?, ?)", (key, json.dumps(value)))

    def save(
        self, trial: optuna.trial.BaseTrial, state: str, values: list[float] | None = None, **attrs: Any
    ) -> None:
        """Write (or rewrite) ``trial``'s row: ``running`` when asked, ``complete``/``fail`` when told."""
        params = dict(trial.params)
        dists = {k: distribution_to_json(d) for k, d in trial.distributions.items()}
        row = (
            trial.number,
            state,
            json.dumps(params),
            json.dumps(dists),
            json.dumps(values),
            json.dumps(attrs),
        )
        with self._connect() as db:
            db.execute("INSERT OR REPLACE INTO trials VALUES (?, ?, ?, ?, ?, ?)", row)

    def rows(self) -> list[dict[str, Any]]:
        with self._connect() as db:
            found = db.execute(
                "SELECT number, state, params, distributions, trial_values, user_attrs FROM trials"
            )
            return [
                {
                    "number": n,
                    "state": s,
                    "params": json.loads(p),
                    "distributions": json.loads(d),
                    "values": json.loads(v) if v else None,
                    "user_attrs": json.loads(u),
                }
                for n, s, p, d, v, u in sorted(found)
            ]

    def load(self, sampler: optuna.samplers.BaseSampler) -> optuna.study.Study:
        """A new in-memory study (two minimized objectives) holding every trial of the file, in order."""
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
        for row in self.rows():
            attrs = (
                dict(row["user_attrs"], interrupted=True) if row["state"] == "running" else row["user_attrs"]
            )
            study.add_trial(
                optuna.trial.create_trial(
                    state=_STATES[row["state"]],
                    values=row["values"] if row["state"] == "complete" else None,
                    params=row["params"],
                    distributions={k: json_to_distribution(v) for k, v in row["distributions"].items()},
                    user_attrs=attrs,
                )
            )
        return study
