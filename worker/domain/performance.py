"""The figures traders compare configs by (as Freqtrade prints them after a backtest), from
an agent's closed trades: pure and `Decimal`-exact.

The basis is the **realised equity curve**: the agent's SOL at the start of the period
(`starting_sol`) plus the running sum of its full exits' `profit_loss_sol`, in close-time
order (equal times in the order given). Open positions and deposits or withdrawals made
during the period do not move it: it measures the trading alone.

With `n` trades, P/L `p_i` (SOL, take-profit sales before the exit included), equity
`E_0 = starting_sol`, `E_i = E_(i-1) + p_i`, peak `M_i = max(E_0 .. E_i)`:

- max drawdown SOL = max(M_i - E_i) (0 when the curve never fell), 8 places;
- max drawdown % = max((M_i - E_i) / M_i x 100) over the points whose peak is above 0,
  2 places (each is its own maximum: usually the same fall);
- profit factor = sum of the winning p_i / |sum of the losing p_i|, 2 places; infinite
  (shown `inf`) with wins and no loss, none (`-`) with neither;
- expectancy = sum(p_i) / n: the mean P/L of a trade in SOL, 8 places (Freqtrade's
  win rate x average win - loss rate x average loss is the same number);
- median hold: the middle hold time (the mean of the two middle ones for an even n);
- best / worst trade: max(p_i) / min(p_i) in SOL;
- Sharpe and Sortino on daily returns: one return per UTC calendar day from the first
  exit's day to the last exit's day (days without an exit return 0):
  `r_d = (P/L of the exits that day) / (equity at the start of that day)`;
  with `N` days and `mean = sum(r_d) / N`:
  Sharpe = mean / sqrt(sum((r_d - mean)^2) / N) x sqrt(365),
  Sortino = mean / sqrt(sum(min(r_d, 0)^2) / N) x sqrt(365):
  annualised with 365 days as Freqtrade does, risk-free rate 0, population deviations
  (numpy's default, which Freqtrade uses), 2 places. None (`-`) with fewer than 2 days,
  when the equity at a day's start is 0 or less, when Sharpe's deviation is 0; Sortino
  without a losing day is infinite when the mean is above 0, else none.

Every figure is None without trades.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from worker.domain.money import HUNDRED, ZERO, exact, to_sol

DAYS_PER_YEAR = Decimal(365)
MIN_DAYS = 2  # a ratio of one day's return says nothing
RATIO_PLACES = Decimal("0.01")
INFINITY = Decimal("Infinity")


@dataclass(frozen=True, slots=True)
class TradeOutcome:
    """A full exit as the figures need it: its P/L (SOL), when it closed (tz-aware), how
    long it was held (seconds)."""

    profit_loss_sol: Decimal
    closed_at: datetime
    held_s: float


@dataclass(frozen=True, slots=True)
class Performance:
    """The figures of the module's docstring; None where it says `-`."""

    max_drawdown_sol: Decimal | None = None
    max_drawdown_pct: Decimal | None = None
    profit_factor: Decimal | None = None  # Decimal("Infinity") with wins and no loss
    expectancy_sol: Decimal | None = None
    median_hold_s: float | None = None
    sharpe: Decimal | None = None
    sortino: Decimal | None = None  # Decimal("Infinity") without a losing day
    best_trade_sol: Decimal | None = None
    worst_trade_sol: Decimal | None = None


@exact
def performance(trades: Sequence[TradeOutcome], starting_sol: Decimal) -> Performance:
    """The figures of `trades` (any order: they are taken in close-time order) for an agent
    that had `starting_sol` SOL at the start of the period."""
    if not trades:
        return Performance()
    ordered = sorted(trades, key=lambda t: t.closed_at)
    pnls = [t.profit_loss_sol for t in ordered]
    drawdown_sol, drawdown_pct = max_drawdown(pnls, starting_sol)
    sharpe, sortino = daily_ratios(ordered, starting_sol)
    return Performance(
        max_drawdown_sol=to_sol(drawdown_sol),
        max_drawdown_pct=drawdown_pct,
        profit_factor=profit_factor(pnls),
        expectancy_sol=to_sol(sum(pnls, ZERO) / len(pnls)),
        median_hold_s=statistics.median(t.held_s for t in ordered),
        sharpe=sharpe,
        sortino=sortino,
        best_trade_sol=max(pnls),
        worst_trade_sol=min(pnls),
    )


@exact
def max_drawdown(pnls: Sequence[Decimal], starting_sol: Decimal) -> tuple[Decimal, Decimal | None]:
    """The largest fall of the equity curve from a peak before it, in SOL (unrounded) and in
    % of that peak (2 places; None when no peak was above 0)."""
    equity = peak = starting_sol
    worst_sol = ZERO
    worst_pct: Decimal | None = None
    for pnl in pnls:
        equity += pnl
        peak = max(peak, equity)
        worst_sol = max(worst_sol, peak - equity)
        if peak > 0:
            pct = (peak - equity) * HUNDRED / peak
            worst_pct = pct if worst_pct is None else max(worst_pct, pct)
    return worst_sol, None if worst_pct is None else worst_pct.quantize(RATIO_PLACES)


@exact
def profit_factor(pnls: Sequence[Decimal]) -> Decimal | None:
    """Gross profit over gross loss, 2 places; infinite with no loss, None with neither."""
    won = sum((p for p in pnls if p > 0), ZERO)
    lost = -sum((p for p in pnls if p < 0), ZERO)
    if lost == 0:
        return INFINITY if won > 0 else None
    return (won / lost).quantize(RATIO_PLACES)


@exact
def daily_returns(trades: Sequence[TradeOutcome], starting_sol: Decimal) -> list[Decimal] | None:
    """One return per UTC day from the first exit's day to the last's (trades in close-time
    order); None when the equity at a day's start is 0 or less."""
    by_day: dict[date, Decimal] = {}
    for t in trades:
        day = t.closed_at.astimezone(UTC).date()
        by_day[day] = by_day.get(day, ZERO) + t.profit_loss_sol
    first, last = min(by_day), max(by_day)
    returns = []
    equity = starting_sol
    for n in range((last - first).days + 1):
        pnl = by_day.get(first + timedelta(days=n), ZERO)
        if equity <= 0:
            return None
        returns.append(pnl / equity)
        equity += pnl
    return returns


@exact
def daily_ratios(
    trades: Sequence[TradeOutcome], starting_sol: Decimal
) -> tuple[Decimal | None, Decimal | None]:
    """Sharpe and Sortino of the daily returns (the module's docstring), 2 places."""
    returns = daily_returns(trades, starting_sol)
    if returns is None or len(returns) < MIN_DAYS:
        return None, None
    n = Decimal(len(returns))
    mean = sum(returns, ZERO) / n
    year = DAYS_PER_YEAR.sqrt()
    spread = (sum(((r - mean) ** 2 for r in returns), ZERO) / n).sqrt()
    downside = (sum((min(r, ZERO) ** 2 for r in returns), ZERO) / n).sqrt()
    sharpe = None if spread == 0 else (mean / spread * year).quantize(RATIO_PLACES)
    if downside == 0:
        sortino = INFINITY if mean > 0 else None
    else:
        sortino = (mean / downside * year).quantize(RATIO_PLACES)
    return sharpe, sortino
