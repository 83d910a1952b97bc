"""The whole search: trials, then the table, the plot and ``best/`` (or ``closest/``); returns the exit status."""

from __future__ import annotations

import logging
import math

from genexp.search.report import plot, write_table
from genexp.search.select import choose, final_round, latency_of, write_choice
from genexp.search.settings import Settings
from genexp.search.study import records, run_trials

log = logging.getLogger(__name__)
BUDGET_NOT_MET = 3


def search(settings: Settings) -> int:
    """Run (or resume) the study of ``settings``; 0 when a deployable within budget is in ``<out>/best``,
    3 when none is (the closest trial in ``<out>/closest``)."""
    study, space, base = run_trials(settings)
    rows = records(study)
    chosen, ok = choose(rows, settings)
    if ok:
        chosen = final_round(rows, chosen, settings, base)
    write_table(rows, settings, chosen, settings.out)
    if any(math.isfinite(r["quality_change"]) for r in rows):
        plot(rows, settings, chosen, settings.out)
    if chosen is None:
        print(f"genexp-optimize: no trial finished; see the trial logs in {settings.out / 'trials'}")
        return BUDGET_NOT_MET
    folder = write_choice(chosen, ok, settings, space, base)
    if not ok:
        print(
            f"genexp-optimize: no trial within budget={settings.budget} ({settings.budget_mode}); the closest, "
            f"trial {chosen['number']} at {chosen['quality_change']:+.4f}, is in {folder}"
        )
        return BUDGET_NOT_MET
    print(
        f"genexp-optimize: best: trial {chosen['number']} ({chosen['label']}), {chosen['backend']}, "
        f"{latency_of(chosen)['speedup_vs_base_torch']:.2f}x the base's speed, quality change "
        f"{chosen['quality_change']:+.4f} -> {folder}"
    )
    return 0
