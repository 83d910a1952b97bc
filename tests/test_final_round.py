"""The choice after the final round: the fastest within budget timed again side by side with the base; equally
fast finalists (within 3%) go to the better quality; ``objective=size`` and a lone candidate are not re-timed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from genexp.search import select
from genexp.search.report import write_table
from genexp.search.settings import Settings


def _row(number: int, ratio: float, change: float) -> dict[str, Any]:
    return {
        "number": number,
        "latency_ratio": ratio,
        "latency_ms": ratio,
        "base_latency_ms": 1.0,
        "quality_change": change,
        "quality": 100 * (1 + change),
        "label": f"t{number}",
        "backend": "onnxruntime fp32",
        "backends": {"onnxruntime fp32": {}},
        "bytes": 1000 + number,  # another network each, unless a test makes twins
        "batch_size": 64,
    }


def _settings(tmp_path: Path, objective: str = "latency") -> Settings:
    return Settings(tmp_path, 0.02, "relative", objective, 4, None, None, tmp_path, 0)


class FinalRound:
    """Stands in for ``measure.final_round``: ``ms`` per trial (the base at 1.0 ms), set by each test, and
    ``timed``: which trials each call timed."""

    def __init__(self) -> None:
        self.ms: dict[int, float] = {}
        self.timed: list[list[int]] = []

    def __call__(self, rows: list[dict[str, Any]], *args: Any) -> dict[int, dict[str, float]]:
        self.timed.append([r["number"] for r in rows])
        return {r["number"]: {"ms": self.ms[r["number"]], "base_ms": 1.0} for r in rows}


@pytest.fixture
def final(monkeypatch: pytest.MonkeyPatch) -> FinalRound:
    fake = FinalRound()
    monkeypatch.setattr(select, "measure_final_round", fake)
    return fake


def test_the_fastest_in_the_final_round_wins_and_its_figures_ship(tmp_path: Path, final: FinalRound) -> None:
    rows = [_row(0, 0.30, 0.019), _row(1, 0.33, 0.001), _row(2, 0.50, 0.0), _row(3, 0.2, 0.05)]
    # in its own rounds trial 0 looked fastest; side by side, trial 1 is clearly faster (8%)
    final.ms.update({0: 0.40, 1: 0.37, 2: 0.50})
    chosen, ok = select.choose(rows, _settings(tmp_path))
    assert ok and chosen["number"] == 0
    chosen = select.final_round(rows, chosen, _settings(tmp_path), base=None)
    assert chosen["number"] == 1 and final.timed == [[0, 1, 2]]  # trial 3 is over budget
    assert select.latency_of(chosen) == {
        "latency_ms": 0.37,
        "base_latency_ms": 1.0,
        "speedup_vs_base_torch": 1 / 0.37,
        "timed_in": "final round",
    }
    write_table(rows, _settings(tmp_path), chosen, tmp_path)
    table = (tmp_path / "trials.md").read_text()
    assert (
        "final round: the 3 fastest within budget" in table and "| **1** | 0.370 | 1.000 | 2.70x |" in table
    )


def test_equally_fast_finalists_go_to_the_better_quality(tmp_path: Path, final: FinalRound) -> None:
    rows = [_row(0, 0.30, 0.019), _row(1, 0.33, 0.001)]  # e.g. the same network fine-tuned twice
    final.ms.update({0: 0.400, 1: 0.408})  # 2% apart: timing noise
    chosen = select.final_round(rows, select.choose(rows, _settings(tmp_path))[0], _settings(tmp_path), None)
    assert chosen["number"] == 1


def test_size_and_a_lone_candidate_are_not_timed_again(tmp_path: Path, final: FinalRound) -> None:
    rows = [_row(0, 0.30, 0.019), _row(1, 0.33, 0.001)]
    chosen = rows[0]
    assert select.final_round(rows, chosen, _settings(tmp_path, "size"), None) is chosen
    lone = [_row(0, 0.30, 0.019), _row(1, 0.2, 0.5)]
    assert select.final_round(lone, lone[0], _settings(tmp_path), None) is lone[0]
    assert final.timed == [] and "final" not in chosen


def test_twins_of_one_network_are_as_fast_as_their_best_timing(tmp_path: Path, final: FinalRound) -> None:
    twin_a, twin_b, other = _row(0, 0.30, 0.015), _row(1, 0.31, -0.01), _row(2, 0.32, 0.0)
    twin_a["bytes"] = twin_b["bytes"] = 900  # the same widths on the same backend
    final.ms.update({0: 0.30, 1: 0.35, 2: 0.33})  # twin b timed 17% slower in this round: noise
    chosen = select.final_round([twin_a, twin_b, other], twin_a, _settings(tmp_path), None)
    assert chosen["number"] == 1 and chosen["final"]["ms"] == 0.35  # its own figure ships
