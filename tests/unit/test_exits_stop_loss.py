"""Trailing stop loss: the modes' targets (domain.md section 6 table), ratchet and trigger."""

from __future__ import annotations

import dataclasses
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tests.helpers.positions import AVG
from tests.helpers.positions import make_position as position
from worker.domain.config import AgentTradingConfig, resolve_config
from worker.domain.exits import (
    StopLossOutcome,
    evaluate_stop_loss,
    initial_stop_loss_pct,
    stop_loss_target,
)
from worker.domain.models import PositionState


def make_position(**changes: Any) -> PositionState:
    """The shared position, its stop at -32 % and its peak and low at the purchase price."""
    return position(
        **{
            "current_stop_loss_percentage": Decimal("-32.00"),
            "peak_price": AVG,
            "lowest_price": AVG,
            **changes,
        }
    )


def mode(name: str, **stop_loss: Any) -> AgentTradingConfig:
    return resolve_config({"stopLoss": {"mode": name, **stop_loss}})


def shown(value: Decimal, expected: str) -> Decimal:
    """`value` rounded to the precision `expected` is written with (the table's precision)."""
    return value.quantize(Decimal(expected), rounding=ROUND_HALF_EVEN)


# --- the sample table of domain.md section 6 (D = -32) -----------------------------------

TABLE = {
    "fixed": ["-32", "10", "11", "20", "40", "90", "190"],
    "exponential": ["-32", "-32", "0.66", "8.2", "30.8", "90", "180"],
    "zones": ["-32", "10", "10.5", "18", "30", "70", "160"],
}
GAINS = [10, 20, 21, 30, 50, 100, 200]


@pytest.mark.parametrize(
    ("mode_name", "gain", "expected"),
    [
        (name, gain, value)
        for name, row in TABLE.items()
        for gain, value in zip(GAINS, row, strict=True)
    ],
)
def test_sample_table(mode_name: str, gain: int, expected: str) -> None:
    assert shown(stop_loss_target(Decimal(gain), mode(mode_name)), expected) == Decimal(expected)


@pytest.mark.parametrize(
    ("mode_name", "gain", "expected"),
    [
        # exponential: x = g - 20; keep = 1 - e^(-x/31.25) - 0.12 e^(-((x-55)/8)^2 / 2)
        ("exponential", "21", "0.66"),  # x=1: keep 0.031493; 21 x 0.031493 = 0.6613
        ("exponential", "30", "8.21"),  # x=10: keep 0.273851; 30 x 0.273851 = 8.2155
        ("exponential", "50", "30.80"),  # x=30: keep 0.617107 - 0.000911 = 0.616196
        ("exponential", "75", "53.09"),  # x=55: the pullback's centre, keep 0.8279 - 0.12
        ("exponential", "85", "69.71"),  # x=65: keep 0.875 - 0.0547 (no boost: x > 65 only)
        ("exponential", "100", "90.00"),  # x=80: keep capped at 0.9
        ("exponential", "20.0001", "0.00"),  # just past 20: a tiny positive target
        # x=1e-10: 1 - e^(-x/31.25) = 3.2e-12 is below the pullback there (0.12 e^(-23.63)
        # = 6.6e-12), so keep is clamped to 0, and a target of 0 falls back to the default.
        ("exponential", "20.0000000001", "-32.00"),
        # x=66, the boost's first whole point: 0.879004 - 0.046627 + 0.3 (1 - e^(-1/80))
        # = 0.836104 (boost 0.003727); 86 x 0.836104 = 71.9049.
        ("exponential", "86", "71.90"),
        # x=70: 0.893541 - 0.020691 + 0.3 (1 - e^(-5/80)) = 0.891027 (boost 0.018176), still
        # under the 0.9 cap; 90 x 0.891027 = 80.1924.
        ("exponential", "90", "80.19"),
        ("fixed", "19.99", "-32.00"),
        ("zones", "25", "12.50"),  # 0.5 up to 25 inclusive
        ("zones", "25.01", "15.00"),  # 0.6 above 25: 15.006 rounds down
        ("zones", "200", "160.00"),
        ("zones", "201", "170.85"),  # 0.85 above 200
        ("fixed", "-5", "-32.00"),
        ("zones", "-5", "-32.00"),
        ("exponential", "-5", "-32.00"),
    ],
)
def test_targets_at_exact_precision(mode_name: str, gain: str, expected: str) -> None:
    assert stop_loss_target(Decimal(gain), mode(mode_name)) == Decimal(expected)


CUSTOM = mode(
    "custom",
    trailingLevels=[
        {"change": 200, "stopLoss": 150},
        {"change": 100, "stopLoss": 60},
        {"change": 50, "stopLoss": 20},
    ],
)


@pytest.mark.parametrize(
    ("gain", "expected"),
    [
        ("-10", "-32"),
        ("0", "-32"),
        ("49.99", "-32"),
        ("50", "20"),
        ("99", "20"),
        ("100", "60"),
        ("500", "150"),
    ],
)
def test_custom_mode_uses_the_highest_level_reached(gain: str, expected: str) -> None:
    assert stop_loss_target(Decimal(gain), CUSTOM) == Decimal(expected)


# A custom level may start below 1% gain (change > 0 is all the config asks).
SMALL_CHANGE = mode(
    "custom", trailingLevels=[{"change": Decimal("0.5"), "stopLoss": Decimal("0.25")}]
)


@pytest.mark.parametrize(
    ("gain", "expected"), [("0", "-32"), ("0.49", "-32"), ("0.5", "0.25"), ("0.99", "0.25")]
)
def test_a_custom_level_below_one_percent_applies_from_its_change(gain: str, expected: str) -> None:
    assert stop_loss_target(Decimal(gain), SMALL_CHANGE) == Decimal(expected)


def test_targets_are_clamped_to_the_column_range() -> None:
    assert stop_loss_target(Decimal(2000), mode("fixed")) == Decimal("999.99")
    capped = mode("custom", trailingLevels=[{"change": 10, "stopLoss": 1000}])
    assert stop_loss_target(Decimal(50), capped) == Decimal("999.99")
    deepest = mode("fixed", defaultPercentage=-100)
    assert stop_loss_target(Decimal(0), deepest) == Decimal("-100.00")


def test_the_default_percentage_is_the_fallback() -> None:
    assert stop_loss_target(Decimal(10), mode("fixed", defaultPercentage=-12.5)) == Decimal(
        "-12.50"
    )
    assert initial_stop_loss_pct(mode("fixed", defaultPercentage=-12.555)) == Decimal("-12.55")


# --- evaluation ----------------------------------------------------------------------------

FIXED = mode("fixed")


def test_triggers_at_the_stop_price_inclusive() -> None:
    # avg 0.001 and SL -32: the stop is 0.001 x 0.68 = 0.00068 SOL.
    at_stop = evaluate_stop_loss(make_position(), Decimal("0.00068"), FIXED)
    assert at_stop.is_triggered
    assert at_stop.stop_price == Decimal("0.00068")
    above = evaluate_stop_loss(make_position(), Decimal("0.000680000000000001"), FIXED)
    assert not above.is_triggered
    assert not above.is_changed


def test_a_rise_trails_the_stop() -> None:
    # Price 0.0015 is a 50% gain: fixed gives 50 - 10 = 40, so the stop is 0.001 x 1.4.
    outcome = evaluate_stop_loss(make_position(), Decimal("0.0015"), FIXED)
    assert outcome.peak_price == Decimal("0.0015")
    assert outcome.stop_loss_pct == Decimal("40.00")
    assert outcome.stop_price == Decimal("0.0014")
    assert outcome.gain_pct == Decimal(50)
    assert outcome.is_changed
    assert not outcome.is_triggered


def test_a_fall_from_the_peak_keeps_the_stop_and_triggers() -> None:
    position = make_position(peak_price=Decimal("0.0015"), current_stop_loss_percentage=Decimal(40))
    outcome = evaluate_stop_loss(position, Decimal("0.0014"), FIXED)
    assert outcome.peak_price == Decimal("0.0015")
    assert outcome.stop_loss_pct == Decimal(40)
    assert outcome.is_triggered
    assert not outcome.is_changed


def test_the_stop_never_loosens_when_the_mode_would_give_less() -> None:
    # zones at a 50% peak gain gives 0.6 x 50 = 30, below the stored 40.
    position = make_position(peak_price=Decimal("0.0015"), current_stop_loss_percentage=Decimal(40))
    outcome = evaluate_stop_loss(position, Decimal("0.00145"), mode("zones"))
    assert outcome.stop_loss_pct == Decimal(40)
    assert not outcome.is_changed


def test_a_micro_priced_peak_is_stored_whenever_it_rises() -> None:
    # The source only stored a peak moving by more than 0.0001 SOL (absolute).
    position = make_position(purchase_price=Decimal("1e-9"), peak_price=Decimal("1e-9"))
    outcome = evaluate_stop_loss(position, Decimal("1.05e-9"), FIXED)
    assert outcome.peak_price == Decimal("1.05e-9")
    assert outcome.stop_loss_pct == Decimal(-32)
    assert outcome.is_changed


def test_missing_stop_and_peak_start_from_the_default_and_the_average() -> None:
    position = make_position(current_stop_loss_percentage=None, peak_price=None)
    outcome = evaluate_stop_loss(position, Decimal("0.0009"), FIXED)
    assert outcome.peak_price == AVG
    assert outcome.stop_loss_pct == Decimal("-32.00")
    assert outcome.is_changed  # both are now known: store them
    assert not outcome.is_triggered


def test_disabled_stop_loss_never_triggers_or_changes() -> None:
    outcome = evaluate_stop_loss(
        make_position(), Decimal("0.0000001"), mode("fixed", enabled=False)
    )
    assert not outcome.is_triggered
    assert not outcome.is_changed


def test_disabled_stop_loss_reports_the_stored_stop_and_peak() -> None:
    # Stored +5% and peak 0.0012 (+20%): the stop price is 0.001 x 1.05.
    position = make_position(current_stop_loss_percentage=Decimal(5), peak_price=Decimal("0.0012"))
    outcome = evaluate_stop_loss(position, Decimal("0.0001"), mode("fixed", enabled=False))
    assert outcome == StopLossOutcome(
        peak_price=Decimal("0.0012"),
        stop_loss_pct=Decimal(5),
        stop_price=Decimal("0.00105"),
        gain_pct=Decimal(20),
        is_triggered=False,
        is_changed=False,
    )
    assert outcome.is_triggered is False
    assert outcome.is_changed is False


def test_disabled_stop_loss_without_stored_values_reports_the_default_at_the_average() -> None:
    position = make_position(current_stop_loss_percentage=None, peak_price=None)
    disabled = mode("fixed", enabled=False, defaultPercentage=-25)
    outcome = evaluate_stop_loss(position, Decimal("0.0001"), disabled)
    assert outcome == StopLossOutcome(
        peak_price=AVG,
        stop_loss_pct=Decimal(-25),
        stop_price=Decimal("0.00075"),
        gain_pct=Decimal(0),
        is_triggered=False,
        is_changed=False,
    )


def test_a_non_positive_average_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="purchase price must be positive"):
        evaluate_stop_loss(make_position(purchase_price=Decimal(0)), Decimal(1), FIXED)


prices = st.decimals(min_value=Decimal("0.00001"), max_value=Decimal("0.05"), places=12)
modes = st.sampled_from([FIXED, mode("exponential"), mode("zones"), CUSTOM])


@given(path=st.lists(prices, min_size=1, max_size=30), cfg=modes)
# exponential: just past the start (keep 0: the default stays), the boost at +86% and +90%
@example(
    path=[Decimal("0.0012000000001"), Decimal("0.00186"), Decimal("0.0019")],
    cfg=mode("exponential"),
)
# custom: below, at and past its levels, then down to the stop
@example(
    path=[Decimal("0.00149"), Decimal("0.0015"), Decimal("0.003"), Decimal("0.0016")], cfg=CUSTOM
)
# fixed and zones at their trailing start (+20%) and zones' bends (+25%, +200%)
@example(path=[Decimal("0.0012"), Decimal("0.00125"), Decimal("0.003")], cfg=FIXED)
@example(path=[Decimal("0.0012"), Decimal("0.00125"), Decimal("0.003")], cfg=mode("zones"))
def test_the_stop_never_loosens_and_the_peak_never_falls(
    path: list[Decimal], cfg: AgentTradingConfig
) -> None:
    position = make_position()
    for price in path:
        outcome = evaluate_stop_loss(position, price, cfg)
        previous_pct = position.current_stop_loss_percentage
        previous_peak = position.peak_price
        assert previous_pct is not None
        assert previous_peak is not None
        assert outcome.stop_loss_pct >= previous_pct
        assert outcome.peak_price >= max(previous_peak, price) - Decimal("1e-18")
        assert outcome.is_triggered == (price <= outcome.stop_price)
        assert outcome.stop_loss_pct.as_tuple().exponent == -2
        assert Decimal(-100) <= outcome.stop_loss_pct <= Decimal("999.99")
        position = dataclasses.replace(
            position,
            peak_price=outcome.peak_price,
            current_stop_loss_percentage=outcome.stop_loss_pct,
        )
