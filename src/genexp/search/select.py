"""The choice of ``best/``: the fastest (or smallest) trial within the budget on the validation split, then
scored once on the test split; with none within budget, the closest trial goes to ``closest/``."""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path
from typing import Any

from genexp.checkpoints.rebuild import Loaded, load_any
from genexp.deploy.backends import by_name
from genexp.runtime.run_folder import LAST_CHECKPOINT, write_json
from genexp.search.measure import TORCH, measuring, quality, through_backend
from genexp.search.measure import final_round as measure_final_round
from genexp.search.settings import Settings
from genexp.search.space import Space

log = logging.getLogger(__name__)
BEST, CLOSEST = "best", "closest"
FINALISTS = 4  # the fastest trials within budget, timed again side by side before the choice
TIE = 0.03  # finalists within 3% of the fastest one's ratio count as equally fast: the better quality wins


def within_budget(rows: list[dict[str, Any]], budget: float) -> list[dict[str, Any]]:
    """The trials whose validation quality change is at most ``budget``."""
    return [r for r in rows if r["quality_change"] <= budget]


def choose(rows: list[dict[str, Any]], settings: Settings) -> tuple[dict[str, Any] | None, bool]:
    """``(trial, within budget)``: the fastest/smallest within budget, else the closest to it (None: no trial)."""
    ok = within_budget(rows, settings.budget)
    if ok:
        key = "bytes" if settings.objective == "size" else "latency_ratio"
        return min(ok, key=lambda r: (r[key], r["quality_change"])), True
    if not rows:
        return None, False
    return min(rows, key=lambda r: r["quality_change"]), False


def final_round(
    rows: list[dict[str, Any]], chosen: dict[str, Any], settings: Settings, base: Loaded
) -> dict[str, Any]:
    """The choice after a last timing: the ``FINALISTS`` fastest trials within budget are timed again, side by
    side with the base in the same rounds (``measure.final_round``, under the measuring lock), and the fastest
    there wins; one within ``TIE`` of it with a better quality wins instead. Finalists that ship the same
    network to the same backend (equal bytes: the same widths, fine-tuned with another recipe) are as fast as
    the best timing among them: in one round two such twins measured 1.24 and 1.34 ms, and alone, side by
    side, 1.12 and 1.14. The finalists' figures go into their rows (``final``); the winner's latency is the
    final round's. ``objective=size`` compares exact bytes: ``chosen`` stands."""
    if settings.objective == "size":
        return chosen
    finalists = sorted(within_budget(rows, settings.budget), key=lambda r: r["latency_ratio"])[:FINALISTS]
    if len(finalists) < 2:
        return chosen
    log.info("final round: trials %s timed again, side by side", [r["number"] for r in finalists])
    with measuring(settings.out):
        batch = finalists[0]["batch_size"]
        timed = measure_final_round(finalists, base, batch, settings.timing, settings.objective)
    for row in finalists:
        figures = timed[row["number"]]
        row["final"] = {**figures, "ratio": figures["ms"] / figures["base_ms"]}
    # the same network (bytes) on the same backend: one speed, its best timing
    speed: dict[tuple[str, int], float] = {}
    for row in finalists:
        key = (row["backend"], row["bytes"])
        speed[key] = min(speed.get(key, math.inf), row["final"]["ratio"])
    fastest = min(speed.values())
    close = [r for r in finalists if speed[(r["backend"], r["bytes"])] <= fastest * (1 + TIE)]
    return min(close, key=lambda r: (r["quality_change"], r["final"]["ratio"]))


def deployable_files(row: dict[str, Any]) -> list[Path]:
    """What ships for the trial's backend: the int8 or fp32 ONNX graphs, or the torch checkpoint."""
    export, backend = Path(row["export"]), by_name(row["backend"])
    if backend is None:
        return [Path(row["run"]) / LAST_CHECKPOINT]
    return sorted(p for p in export.glob("*.onnx") if backend.reads(p.name))


def write_choice(row: dict[str, Any], ok: bool, settings: Settings, space: Space, base: Loaded) -> Path:
    """Copy the chosen deployable into ``<out>/best`` (or ``closest``), score it on test, write model.json."""
    folder = settings.out / (BEST if ok else CLOSEST)
    for old in (settings.out / BEST, settings.out / CLOSEST):  # the search's own output, rewritten from the
        shutil.rmtree(old, ignore_errors=True)  # study on every launch (a resume may change the budget)
    folder.mkdir(parents=True)
    files = []
    for file in deployable_files(row):
        name = "model.ckpt" if row["backend"] == TORCH else file.name
        shutil.copy2(file, folder / name)
        files.append(name)
    loaded = load_any(Path(row["run"]), key="trial")
    if by_name(row["backend"]) is not None:  # scored through the backend that ships
        loaded = through_backend(loaded, Path(row["export"]), row["backend"])
    test_value = quality(loaded, space.metric, "test")
    base_test = _base_test(base, space)
    info = {
        "backend": row["backend"],
        "files": files,
        "runtime": backend.how() if (backend := by_name(row["backend"])) else {"runtime": "torch"},
        "within_budget": ok,
        "budget": settings.budget,
        "budget_mode": settings.budget_mode,
        "objective": settings.objective,
        "metric": space.metric,
        "trial": row["number"],
        "recipe": row["recipe"],
        "label": row["label"],
        "run": row["run"],
        "val": {"quality": row["quality"], "base": row["base_quality"], "change": row["quality_change"]},
        "test": {
            "quality": test_value,
            "base": base_test,
            "relative_change": (test_value - base_test) / abs(base_test),
        },
        **latency_of(row),
        "batch_size": row["batch_size"],
        "bytes": row["bytes"],
        "backends": row["backends"],
    }
    write_json(folder / "model.json", info)
    return folder


def latency_of(row: dict[str, Any]) -> dict[str, Any]:
    """A chosen trial's latency for ``model.json``: the final round's when the trial was timed again, else the trial's own."""
    if "final" in row:
        ms, base_ms, how = row["final"]["ms"], row["final"]["base_ms"], "final round"
    else:
        ms, base_ms, how = row["latency_ms"], row["base_latency_ms"], "the trial's own rounds"
    return {
        "latency_ms": ms,
        "base_latency_ms": base_ms,
        "speedup_vs_base_torch": base_ms / ms,
        "timed_in": how,
    }


def _base_test(base: Loaded, space: Space) -> float:
    """The base's test quality, measured here on the checkpoint the trials started from (the run's own
    ``metrics.json`` may score another one: its best checkpoint by the run's monitor)."""
    return quality(base, space.metric, "test")
