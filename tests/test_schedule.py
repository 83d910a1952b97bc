"""CompressionSchedule: the cubic/linear/one-shot ramps per epoch and the errors naming the key."""

from __future__ import annotations

import pytest

from genexp.compression.schedule import CompressionSchedule
from genexp.runtime.errors import ConfigError


def zhu_gupta(t: int, t0: int, t_end: int, si: float, sf: float) -> float:
    return sf + (si - sf) * (1 - (t - t0) / (t_end - t0)) ** 3


def test_cubic_follows_zhu_gupta_per_epoch() -> None:
    s = CompressionSchedule(start_epoch=2, end_epoch=8, initial=0.1, final=0.8)
    for epoch in range(12):
        if epoch < 2:
            expected = 0.0
        elif epoch >= 8:
            expected = 0.8
        else:
            expected = zhu_gupta(epoch, 2, 8, 0.1, 0.8)
        assert s.amount(epoch) == pytest.approx(expected, abs=1e-12), epoch
    assert s.amount(2) == pytest.approx(0.1) and s.amount(8) == pytest.approx(0.8)
    values = [s.amount(e) for e in range(2, 9)]
    steps = [b - a for a, b in zip(values[:-1], values[1:], strict=True)]
    assert all(x > 0 for x in steps) and steps == sorted(steps, reverse=True)  # fast first, gentle late


def test_every_n_epochs_holds_between_updates_and_always_reaches_final() -> None:
    s = CompressionSchedule(start_epoch=0, end_epoch=7, every_n_epochs=3, final=0.5, ramp="linear")
    assert s.update_epochs() == [0, 3, 6, 7]
    assert [s.is_update(e) for e in range(9)] == [True, False, False, True, False, False, True, True, False]
    assert s.amount(1) == s.amount(2) == s.amount(0) == 0.0
    assert s.amount(4) == s.amount(5) == pytest.approx(0.5 * 3 / 7)
    assert s.amount(7) == s.amount(100) == 0.5
    assert s.is_active(7) and not s.is_active(8)


def test_linear_and_one_shot() -> None:
    lin = CompressionSchedule(start_epoch=1, end_epoch=5, initial=0.2, final=0.6, ramp="linear")
    assert [round(lin.amount(e), 6) for e in range(7)] == [0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.6]
    shot = CompressionSchedule(start_epoch=3, end_epoch=5, final=0.9, ramp="one_shot")
    assert [shot.amount(e) for e in range(7)] == [0.0, 0.0, 0.0, 0.9, 0.9, 0.9, 0.9]
    same = CompressionSchedule(start_epoch=4, end_epoch=4, final=0.3)
    assert same.amount(3) == 0.0 and same.amount(4) == 0.3


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"start_epoch": 5, "end_epoch": 2}, "compression.quantize.start_epoch"),
        ({"final": 1.0}, "compression.quantize.final_amount"),
        ({"initial": -0.1}, "compression.quantize.initial_amount"),
        ({"ramp": "exponential"}, "compression.quantize.ramp"),
        ({"every_n_epochs": 0}, "compression.quantize.every_n_epochs"),
        ({"start_epoch": -1}, "compression.quantize.start_epoch"),
        ({"end_epoch": 2.5}, "compression.quantize.end_epoch"),
    ],
)
def test_bad_values_name_the_key(kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        CompressionSchedule(
            **kwargs,
            key_prefix="compression.quantize",
            initial_key="initial_amount",
            final_key="final_amount",
        )
    assert str(err.value).startswith(key + "=")
