"""What an agent's trading came to: the figures of `signal-worker report` and `replay`.

Pure: the live report feeds it rows read from the ledger, a replay the in-memory store's
contents, so both tables mean the same thing.

- Realised P/L is the sum of the full exits' `profit_loss_sol` (which already counts the
  take-profit sales before each exit); its % is that over the SOL those positions cost
  (buys and DCA buys, fees included).
- Unrealised P/L values each open position as a sale at the latest price would, before
  the sale's fees: remaining tokens x SOL per token + take-profit SOL already returned -
  SOL invested. It is None when a held token has no price (or SOL/USD is missing); those
  tokens are `unpriced_tokens` (every held token when SOL/USD is missing).
- Win rate: full exits with a profit over all full exits (None without exits).
- Drawdown, profit factor, expectancy, median hold, Sharpe, Sortino, best and worst trade:
  `worker.domain.performance` (on the realised equity curve from the SOL at the start).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from uuid import UUID

from worker.domain.fills import token_price_sol
from worker.domain.money import HUNDRED, ZERO, exact, fmt, to_sol
from worker.domain.performance import Performance, TradeOutcome, performance

STATUSES = ("success", "skipped", "failed")


@dataclass(frozen=True, slots=True)
class Close:
    """A full exit: its P/L, what the position cost, how long it was held, when it closed
    (without it, the exit counts in no figure of `worker.domain.performance`)."""

    profit_loss_sol: Decimal
    invested_sol: Decimal
    held_s: float
    closed_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Holding:
    """An open position, as much of it as a valuation needs."""

    token_address: str
    remaining_amount: Decimal
    invested_sol: Decimal
    take_profit_proceeds_sol: Decimal


@dataclass(frozen=True, slots=True)
class AgentResult:
    """One agent's figures (see the module's docstring)."""

    agent_id: UUID
    name: str
    executions: Mapping[str, int]  # by status
    trades: int  # full exits
    win_rate_pct: Decimal | None
    realised_pnl_sol: Decimal
    realised_pnl_pct: Decimal | None
    open_positions: int
    unrealised_pnl_sol: Decimal | None
    avg_hold_s: float | None
    largest_loss_sol: Decimal | None  # the worst exit, when one lost
    balance_sol: Decimal | None
    unpriced_tokens: tuple[str, ...] = ()  # held tokens without a price, in address order
    figures: Performance = field(default_factory=Performance)

    def as_dict(self) -> dict[str, object]:
        """JSON-ready: numbers as exact strings (an infinite ratio as "inf"), ids as text."""

        def text(value: Decimal | None) -> str | None:
            return None if value is None else ratio_text(value)

        f = self.figures

        return {
            "agent_id": str(self.agent_id),
            "name": self.name,
            "executions": {s: self.executions.get(s, 0) for s in STATUSES},
            "trades": self.trades,
            "win_rate_pct": text(self.win_rate_pct),
            "realised_pnl_sol": text(self.realised_pnl_sol),
            "realised_pnl_pct": text(self.realised_pnl_pct),
            "open_positions": self.open_positions,
            "unrealised_pnl_sol": text(self.unrealised_pnl_sol),
            "avg_hold_s": None if self.avg_hold_s is None else round(self.avg_hold_s, 1),
            "largest_loss_sol": text(self.largest_loss_sol),
            "balance_sol": text(self.balance_sol),
            "max_drawdown_sol": text(f.max_drawdown_sol),
            "max_drawdown_pct": text(f.max_drawdown_pct),
            "profit_factor": text(f.profit_factor),
            "expectancy_sol": text(f.expectancy_sol),
            "median_hold_s": None if f.median_hold_s is None else round(f.median_hold_s, 1),
            "sharpe": text(f.sharpe),
            "sortino": text(f.sortino),
            "best_trade_sol": text(f.best_trade_sol),
            "worst_trade_sol": text(f.worst_trade_sol),
            "unpriced_tokens": list(self.unpriced_tokens),
        }


def ratio_text(value: Decimal) -> str:
    """A figure as exact text; an infinite one (a profit factor without a loss) as `inf`."""
    if value.is_infinite():
        return "inf" if value > 0 else "-inf"
    return fmt(value)


@exact
def summarize(
    agent_id: UUID,
    name: str,
    *,
    executions: Mapping[str, int],
    closes: Sequence[Close],
    holdings: Sequence[Holding],
    prices_sol: Mapping[str, Decimal],
    balance_sol: Decimal | None,
    starting_sol: Decimal = ZERO,
) -> AgentResult:
    """The figures of one agent from its executions, exits, open positions, the latest SOL
    price of each token (SOL per token), its SOL balance and its SOL at the start of the
    period (the base of the equity curve)."""
    realised = sum((c.profit_loss_sol for c in closes), ZERO)
    invested = sum((c.invested_sol for c in closes), ZERO)
    wins = sum(1 for c in closes if c.profit_loss_sol > 0)
    losses = [c.profit_loss_sol for c in closes if c.profit_loss_sol < 0]
    unrealised: Decimal | None = None
    unpriced = tuple(sorted({h.token_address for h in holdings} - prices_sol.keys()))
    if not unpriced:
        unrealised = sum((holding_pnl_sol(h, prices_sol[h.token_address]) for h in holdings), ZERO)
    return AgentResult(
        agent_id=agent_id,
        name=name,
        executions=dict(executions),
        trades=len(closes),
        win_rate_pct=pct_of(Decimal(wins), Decimal(len(closes))),
        realised_pnl_sol=to_sol(realised),
        realised_pnl_pct=pct_of(realised, invested),
        open_positions=len(holdings),
        unrealised_pnl_sol=None if unrealised is None else to_sol(unrealised),
        avg_hold_s=sum(c.held_s for c in closes) / len(closes) if closes else None,
        largest_loss_sol=min(losses) if losses else None,
        balance_sol=balance_sol,
        unpriced_tokens=unpriced,
        figures=performance(
            [
                TradeOutcome(c.profit_loss_sol, c.closed_at, c.held_s)
                for c in closes
                if c.closed_at is not None
            ],
            starting_sol,
        ),
    )


@exact
def holding_pnl_sol(holding: Holding, price_sol: Decimal) -> Decimal:
    """The unrealised P/L of an open position at `price_sol` (SOL per token), unrounded: a
    sale of what it holds at that price before the sale's fees, plus the SOL its take-profit
    sales returned, minus the SOL it cost (buys and DCA buys, fees included)."""
    return (
        holding.remaining_amount * price_sol
        + holding.take_profit_proceeds_sol
        - holding.invested_sol
    )


def prices_in_sol(prices_usd: Mapping[str, Decimal], sol_mint: str) -> dict[str, Decimal]:
    """Each token's price in SOL per token, from USD prices that include SOL's own under
    `sol_mint` (none without it)."""
    sol_usd = prices_usd.get(sol_mint)
    if sol_usd is None:
        return {}
    return {t: token_price_sol(p, sol_usd) for t, p in prices_usd.items() if t != sol_mint}


def pct_of(part: Decimal, whole: Decimal) -> Decimal | None:
    """part / whole in %, 2 places; None when whole is 0."""
    if whole == 0:
        return None
    return (part * HUNDRED / whole).quantize(Decimal("0.01"))
