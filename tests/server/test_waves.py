"""Rollout wave parsing and planning (pure functions)."""

from __future__ import annotations

import pytest

from fleet_server.errors import InvalidInputError
from fleet_server.waves import WaveSpec, parse_waves, plan_waves


def test_parse_mixed_string_and_list_alike() -> None:
    expected = [
        WaveSpec(count=1),
        WaveSpec(percent=10),
        WaveSpec(percent=50),
        WaveSpec(percent=100),
    ]
    assert parse_waves("1,10%,50%,100%") == expected
    assert parse_waves([1, "10%", " 50% ", "100%"]) == expected
    assert [str(w) for w in expected] == ["1", "10%", "50%", "100%"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "at least one wave"),
        ("0,100%", "wave 1 ('0') must be at least 1 device"),
        ("1,0%", "percentage in (0%, 100%]"),
        ("1,150%", "percentage in (0%, 100%]"),
        ("1,ten", "wave 2 ('ten') must be a device count"),
        ("1,-5", "must be a device count"),
        ("5,2", "waves must increase: wave 2 (2) is not above 5"),
        ("50%,10%", "waves must increase: wave 2 (10%) is not above 50%"),
        ([True], "must be a device count"),
    ],
)
def test_parse_refuses_bad_waves(spec: str | list[int | str], message: str) -> None:
    with pytest.raises(InvalidInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_waves(spec)


def test_plan_rounds_percentages_up_and_drops_empty_waves() -> None:
    waves = parse_waves("1,10%,50%,100%")
    assert plan_waves(waves, 20) == [1, 2, 10, 20]
    assert plan_waves(waves, 4) == [1, 2, 4]  # 10% of 4 rounds to 1: no new device
    assert plan_waves(waves, 1) == [1]
    assert plan_waves(parse_waves("2,5"), 5) == [2, 5]


def test_plan_caps_counts_at_the_selection() -> None:
    assert plan_waves(parse_waves("1,100"), 3) == [1, 3]


def test_plan_refuses_a_last_wave_short_of_the_selection() -> None:
    with pytest.raises(InvalidInputError, match="covers 5 of the 10 selected devices; it is not"):
        plan_waves(parse_waves("1,50%"), 10)


def test_plan_refuses_a_wave_below_an_earlier_one() -> None:
    with pytest.raises(InvalidInputError, match=r"wave 2 \(10%\) is 1 device\(s\), below the 5"):
        plan_waves(parse_waves("5,10%,100%"), 10)


def test_plan_needs_devices() -> None:
    with pytest.raises(InvalidInputError, match="at least one selected device"):
        plan_waves(parse_waves("100%"), 0)
