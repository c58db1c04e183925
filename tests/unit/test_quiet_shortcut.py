"""The quiet-tick shortcut, proven at its boundaries.

`worker/handlers/ticks.py` skips `plan_tick` for a position whenever `is_quiet` says so, and only
trails its peak and low (`quiet_trail`). Every case below first checks that promise:

    is_quiet  =>  plan_tick makes no trade, and its final state is the position with the
                  quiet trail's peak and low (nothing else moves)

then the verdict and what the full plan does. The cases sit on each boundary of every
configuration mode (stop loss, take profit, DCA, stale trade) and one price step (1e-18
SOL, the grain of a stored price) inside it: at the boundary the tick must trade (or move
the stop), so calling it quiet would hide that trade; one step inside it must be quiet,
so the shortcut still serves the common case.

Prices are SOL per token around a 0.01 SOL average; the tick's USD price is the price x
100 (SOL at 100 USD), so `plan_tick` sees exactly the same price as `is_quiet`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from tests.helpers.ticks import plan_at
from worker.domain.config import resolve_config
from worker.domain.fills import Fees
from worker.domain.models import PositionState
from worker.domain.money import to_price
from worker.domain.ticks import TickPlan, is_quiet, quiet_band, quiet_trail

NOW = datetime(2026, 11, 26, 12, tzinfo=UTC)
SOL_USD = Decimal(100)
FEES = Fees(Decimal("0.000005"), Decimal(0))
AVG = Decimal("0.01")
STEP = Decimal("1e-18")  # one step of a stored price (18 places)
YOUNG = timedelta(minutes=5)


def at(gain_pct: str) -> Decimal:
    """The price (SOL/token) `gain_pct` % from the 0.01 average, exact at 18 places."""
    return AVG * (1 + Decimal(gain_pct) / 100)


def position(**overrides: Any) -> PositionState:
    """200 tokens at 0.01 SOL, 5 minutes old, stop at the default -32%, peak and low 0.01."""
    fields: dict[str, Any] = {
        "purchase_price": AVG,
        "purchase_amount": Decimal(200),
        "total_invested_sol": Decimal("2.000005"),
        "created_at": NOW - YOUNG,
        "current_stop_loss_percentage": Decimal(-32),
        "peak_price": AVG,
        "lowest_price": Decimal("0.009"),
    }
    fields.update(overrides)
    return PositionState(**fields)


def action(pos: PositionState, plan: TickPlan) -> str:
    """What the full plan does: a sale's reason, `dca`, `stop_moves` (no trade, a new
    stop-loss %) or `nothing`."""
    if plan.sales:
        reason = plan.close_reason
        return "take_profit" if reason is None else reason.value
    if plan.dca is not None:
        return "dca"
    assert plan.final is not None
    if plan.final.current_stop_loss_percentage != pos.current_stop_loss_percentage:
        return "stop_moves"
    return "nothing"


def shortcut(pos: PositionState, price: Decimal, config: dict[str, Any]) -> tuple[bool, str]:
    """`is_quiet`'s verdict and the full plan's action, after checking the promise."""
    cfg = resolve_config(config)
    band = quiet_band(cfg)
    quiet = is_quiet(pos, price, NOW, band)
    plan = plan_at(pos, price * SOL_USD, cfg)
    assert plan.price_sol == price
    if quiet:
        peak, low = quiet_trail(pos, to_price(price), band)
        assert not plan.moves_money
        assert plan.sales == []
        assert plan.dca is None
        assert plan.dca_skipped_reason is None
        assert plan.final == replace(pos, peak_price=peak, lowest_price=low)
    return quiet, action(pos, plan)


@dataclass(frozen=True)
class Case:
    """One tick: config, position changes, price; `is_quiet`'s verdict and the plan's action."""

    name: str
    config: dict[str, Any]
    price: Decimal
    quiet: bool
    action: str
    pos: dict[str, Any] = field(default_factory=dict)


# --- stop loss: every mode -----------------------------------------------------------------

CUSTOM_LEVELS = [{"change": 60, "stopLoss": 40}, {"change": 15, "stopLoss": 5}]
STOP_MODES: dict[str, dict[str, Any]] = {
    "fixed": {"mode": "fixed"},
    "exponential": {"mode": "exponential"},
    "zones": {"mode": "zones"},
    "custom": {"mode": "custom", "trailingLevels": CUSTOM_LEVELS},
}
# The peak gain (%) from which is_quiet leaves a tick to the full plan: where fixed and
# zones start trailing (gain >= 20), exponential's start (it trails from just above 20),
# and the custom mode's lowest level.
TRAILING_START = {"fixed": "20", "exponential": "20", "zones": "20", "custom": "15"}
# A peak whose target is above the default: fixed 20 -> +10, zones 20 x 0.5 -> +10,
# exponential 30 -> +8.21, custom 15 -> +5; a tick at +12% then keeps every mode's stop.
PEAK_PAST_START = {"fixed": "20", "exponential": "30", "zones": "20", "custom": "15"}


def _stop_loss_cases(mode: str) -> list[Case]:
    cfg = {"stopLoss": STOP_MODES[mode]}
    start = at(TRAILING_START[mode])
    # At exactly the trailing start the stop moves (exponential: its target there is still
    # the default, so the plan does nothing; is_quiet is conservative and lets it run).
    at_start = "nothing" if mode == "exponential" else "stop_moves"
    return [
        Case(f"{mode}: at the stop (-32%) sells", cfg, at("-32"), False, "stop_loss"),
        Case(f"{mode}: one step above the stop", cfg, at("-32") + STEP, True, "nothing"),
        Case(f"{mode}: peak at the trailing start", cfg, start, False, at_start),
        Case(f"{mode}: one step below the trailing start", cfg, start - STEP, True, "nothing"),
        Case(
            f"{mode}: a stored peak past the trailing start, price back at +12%",
            cfg,
            at("12"),
            False,
            "stop_moves",
            {"peak_price": at(PEAK_PAST_START[mode])},
        ),
        Case(
            f"{mode}: a stored peak below the trailing start is kept",
            cfg,
            at("5"),
            True,
            "nothing",
            {"peak_price": at("10")},
        ),
        Case(f"{mode}: no stored peak", cfg, at("5"), True, "nothing", {"peak_price": None}),
        Case(
            f"{mode}: a stored stop below the default is raised",
            cfg,
            at("5"),
            False,
            "stop_moves",
            {"current_stop_loss_percentage": Decimal(-40)},
        ),
        Case(
            f"{mode}: no stored stop gets the default",
            cfg,
            at("5"),
            False,
            "stop_moves",
            {"current_stop_loss_percentage": None},
        ),
        Case(
            f"{mode}: a stored stop above the default (+5%) sells at it",
            cfg,
            at("5"),
            False,
            "stop_loss",
            {"current_stop_loss_percentage": Decimal(5), "peak_price": at("10")},
        ),
        Case(
            f"{mode}: one step above a stored stop of +5%",
            cfg,
            at("5") + STEP,
            True,
            "nothing",
            {"current_stop_loss_percentage": Decimal(5), "peak_price": at("10")},
        ),
        Case(
            f"{mode}: a new low is trailed",
            cfg,
            at("-20"),
            True,
            "nothing",
            {"lowest_price": at("-10")},
        ),
        Case(f"{mode}: no stored low", cfg, at("3"), True, "nothing", {"lowest_price": None}),
    ]


STOP_LOSS_OFF: list[Case] = [
    Case(
        "stop loss off: -50% is quiet", {"stopLoss": {"enabled": False}}, at("-50"), True, "nothing"
    ),
    Case(
        "stop loss off: +60% is quiet", {"stopLoss": {"enabled": False}}, at("60"), True, "nothing"
    ),
    Case(
        "stop loss off: the stored peak stays, even below the price",
        {"stopLoss": {"enabled": False}},
        at("15"),
        True,
        "nothing",
    ),
    Case(
        "stop loss off, custom mode without levels",
        {"stopLoss": {"enabled": False, "mode": "custom", "trailingLevels": []}},
        at("5"),
        True,
        "nothing",
    ),
]

# --- take profit: every mode (stop loss off, so only the level decides) ----------------------

TP_MODES: dict[str, tuple[dict[str, Any], str]] = {
    "aggressive": ({"mode": "aggressive"}, "25"),
    "moderate": ({"mode": "moderate"}, "50"),
    "conservative": ({"mode": "conservative"}, "100"),
    "custom": (
        {
            "mode": "custom",
            "levels": [
                {"targetPercent": 30, "sellPercent": 50},
                {"targetPercent": 80, "sellPercent": 40},
            ],
            "moonBag": {"enabled": True, "triggerPercent": 80, "retainPercent": 10},
        },
        "30",
    ),
}


def _take_profit_cases(mode: str) -> list[Case]:
    section, first = TP_MODES[mode]
    cfg = {"stopLoss": {"enabled": False}, "takeProfit": {"enabled": True, **section}}
    return [
        Case(
            f"take profit {mode}: at the first level (+{first}%)",
            cfg,
            at(first),
            False,
            "take_profit",
        ),
        Case(f"take profit {mode}: one step below it", cfg, at(first) - STEP, True, "nothing"),
    ]


# --- DCA: every mode (the default stop at -32% is below every drop) --------------------------

DCA_MODES: dict[str, tuple[dict[str, Any], str]] = {
    "aggressive": ({"mode": "aggressive"}, "-10"),
    "moderate": ({"mode": "moderate"}, "-20"),
    "conservative": ({"mode": "conservative"}, "-20"),
    "custom": (
        {
            "mode": "custom",
            "levels": [
                {"dropPercent": -15, "buyPercent": 50},
                {"dropPercent": -25, "buyPercent": 50},
            ],
        },
        "-15",
    ),
}


def _dca_cases(mode: str) -> list[Case]:
    section, drop = DCA_MODES[mode]
    cfg = {"dca": {"enabled": True, **section}}
    return [
        Case(f"dca {mode}: at the first drop ({drop}%)", cfg, at(drop), False, "dca"),
        Case(f"dca {mode}: one step above it", cfg, at(drop) + STEP, True, "nothing"),
    ]


DCA_OFF = [Case("dca off: -25% is quiet", {}, at("-25"), True, "nothing")]

# --- stale trade: the default window and a custom one -------------------------------------

STALE_WINDOWS: dict[str, tuple[dict[str, Any], int, str, str, str]] = {
    # name: (section, minutes, min %, max %, a gain inside)
    "default (60 min, +1..+10%)": ({}, 60, "1", "10", "5"),
    "custom (10 min, -5..+15%)": (
        {"minHoldTimeMinutes": 10, "minProfitPercent": -5, "maxProfitPercent": 15},
        10,
        "-5",
        "15",
        "3",
    ),
}


def _stale_cases(name: str) -> list[Case]:
    section, minutes, low, high, inside = STALE_WINDOWS[name]
    cfg = {"staleTrade": {"enabled": True, **section}}
    old = {"created_at": NOW - timedelta(minutes=minutes)}
    almost = {"created_at": NOW - timedelta(minutes=minutes) + timedelta(microseconds=1)}
    return [
        Case(f"stale {name}: at the minimum gain", cfg, at(low), False, "stale_trade", old),
        Case(f"stale {name}: one step below it", cfg, at(low) - STEP, True, "nothing", old),
        Case(f"stale {name}: at the maximum gain", cfg, at(high), False, "stale_trade", old),
        Case(f"stale {name}: one step above it", cfg, at(high) + STEP, True, "nothing", old),
        Case(f"stale {name}: exactly old enough", cfg, at(inside), False, "stale_trade", old),
        Case(f"stale {name}: 1 microsecond too young", cfg, at(inside), True, "nothing", almost),
        Case(f"stale {name}: young", cfg, at(inside), True, "nothing"),
    ]


STALE_OFF = [
    Case(
        "stale off: old and inside the default window",
        {"staleTrade": {"enabled": False}},
        at("5"),
        True,
        "nothing",
        {"created_at": NOW - timedelta(days=3)},
    ),
]

# --- everything on at once -------------------------------------------------------------

ALL_ON = {
    "stopLoss": {"mode": "zones"},
    "takeProfit": {"enabled": True, "mode": "aggressive"},
    "dca": {"enabled": True, "mode": "aggressive"},
    "staleTrade": {"enabled": True, "minHoldTimeMinutes": 1},
}
EVERYTHING_ON = [
    Case("all on: +0.5% is quiet", ALL_ON, at("0.5"), True, "nothing"),
    Case("all on: -9% is quiet", ALL_ON, at("-9"), True, "nothing"),
    Case("all on: -10% buys", ALL_ON, at("-10"), False, "dca"),
    Case("all on: +1% of an old position closes it", ALL_ON, at("1"), False, "stale_trade"),
    Case("all on: +19% moves no stop yet", ALL_ON, at("19"), True, "nothing"),
    Case("all on: +25% sells a level", ALL_ON, at("25"), False, "take_profit"),
]
EVERYTHING_ON[3] = replace(EVERYTHING_ON[3], pos={"created_at": NOW - timedelta(minutes=1)})

CASES: list[Case] = [
    *(case for mode in STOP_MODES for case in _stop_loss_cases(mode)),
    *STOP_LOSS_OFF,
    *(case for mode in TP_MODES for case in _take_profit_cases(mode)),
    *(case for mode in DCA_MODES for case in _dca_cases(mode)),
    *DCA_OFF,
    *(case for name in STALE_WINDOWS for case in _stale_cases(name)),
    *STALE_OFF,
    *EVERYTHING_ON,
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_a_quiet_tick_is_one_the_full_plan_neither_trades_nor_moves_beyond_the_trail(
    case: Case,
) -> None:
    quiet, plan_action = shortcut(position(**case.pos), case.price, case.config)
    assert (quiet, plan_action) == (case.quiet, case.action)


def test_the_quiet_trail_keeps_a_stored_peak_above_the_price() -> None:
    band = quiet_band(resolve_config(None))
    pos = position(peak_price=at("10"), lowest_price=at("-5"))
    assert quiet_trail(pos, at("5"), band) == (at("10"), at("-5"))


def test_the_quiet_trail_raises_the_peak_and_lowers_the_low() -> None:
    band = quiet_band(resolve_config(None))
    pos = position(peak_price=at("10"), lowest_price=at("-5"))
    assert quiet_trail(pos, at("12"), band) == (at("12"), at("-5"))
    assert quiet_trail(pos, at("-6"), band) == (at("10"), at("-6"))


def test_the_quiet_trail_starts_the_peak_at_the_average_and_the_low_at_the_price() -> None:
    band = quiet_band(resolve_config(None))
    pos = position(peak_price=None, lowest_price=None)
    assert quiet_trail(pos, at("-3"), band) == (AVG, at("-3"))


def test_without_stop_loss_the_quiet_trail_leaves_the_peak_alone() -> None:
    band = quiet_band(resolve_config({"stopLoss": {"enabled": False}}))
    assert quiet_trail(position(peak_price=None), at("12"), band) == (None, Decimal("0.009"))
    assert quiet_trail(position(), at("12"), band) == (AVG, Decimal("0.009"))
