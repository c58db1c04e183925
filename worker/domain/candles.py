"""OHLC candles as price ticks (`prices import`): the rule that turns one candle into the
ticks a replay trades on.

A candle says only where the price opened, closed and how far it went either way within
its interval, not in which order. Of the two orders, the one worse for a long position is
taken (every position the worker holds is long): the low before the high, so a stop loss
the low reaches sells before a take-profit level the high reaches, and a trailing stop
is not raised by the high before the low tests it. The rule, exactly:

    a candle of token T opening at t, lasting d, with prices open, high, low, close:
    (T, open, t), (T, low, t + d/4), (T, high, t + d/2), (T, close, t + 3d/4)

four ticks, always (equal prices too: a flat candle gives four ticks of one price), none at
`t + d`, where the next candle's open is. The times are exact to the microsecond whenever
`d` is a whole number of microseconds divisible by 4 (any whole number of seconds).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from worker.domain.models import PriceTick

# Where each price of a candle goes, as a fraction (quarters) of its interval.
CANDLE_STEPS = (("open", 0), ("low", 1), ("high", 2), ("close", 3))


@dataclass(frozen=True, slots=True)
class Candle:
    """One OHLC candle of a token, in USD: opens at `ts`, lasts `interval` (> 0)."""

    token_address: str
    ts: datetime
    interval: timedelta
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal

    @property
    def end(self) -> datetime:
        """When the candle's interval ends (excluded): the next candle's open."""
        return self.ts + self.interval


def candle_problem(candle: Candle) -> str | None:
    """Why the candle is not one (its low above its open or close, its high below them),
    else None: such a candle is a broken export, not a price path."""
    low, high = _plain(candle.low), _plain(candle.high)
    if candle.low > candle.high:
        return f"low {low} is above high {high}"
    for name in ("open", "close"):
        price: Decimal = getattr(candle, name)
        if price < candle.low:
            return f"{name} {_plain(price)} is below low {low}"
        if price > candle.high:
            return f"{name} {_plain(price)} is above high {high}"
    return None


def _plain(value: Decimal) -> str:
    """`value` without trailing zeros, never in exponent notation (`1.500` is `1.5`)."""
    return f"{value.normalize():f}"


def candle_ticks(candle: Candle) -> tuple[PriceTick, ...]:
    """The candle's four ticks by the module's rule: open at its start, then the low, the
    high and the close at a quarter, half and three quarters of its interval."""
    quarter = candle.interval / 4
    return tuple(
        PriceTick(candle.token_address, getattr(candle, name), candle.ts + quarter * step)
        for name, step in CANDLE_STEPS
    )
