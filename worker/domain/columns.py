"""Every numeric column the worker writes, with its precision and scale, and the check of a
value against it: the one place that knows them (`worker/schema/*.sql`, domain.md section
9; a unit test holds this table to the schema catalogue the integration tests check).

PostgreSQL stores a value in numeric(p, s) by rounding it to s places, half away from zero,
and refuses it ("numeric field overflow", which rolls back the whole transaction) when the
rounded magnitude reaches 10^(p - s). `Numeric.fits` says the same thing before the write,
so that a value no column holds is handled where it arises (one position's trade skipped,
one agent's buy failed, one wallet's snapshot left out) instead of failing a whole batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from worker.domain.money import MATH_CONTEXT, fmt


@dataclass(frozen=True, slots=True)
class Numeric:
    """A numeric(precision, scale) column type."""

    precision: int
    scale: int

    @property
    def limit(self) -> Decimal:
        """The smallest magnitude the column refuses: 10^(precision - scale)."""
        return Decimal(10) ** (self.precision - self.scale)

    def fits(self, value: Decimal) -> bool:
        """True when PostgreSQL stores `value` here: finite, and below `limit` in magnitude
        once rounded to `scale` places half away from zero (as PostgreSQL rounds)."""
        if not value.is_finite():
            return False
        digits = self.precision - self.scale
        exponent = value.adjusted()
        if exponent < digits - 1:
            return True  # below 10^(p-s-1): no rounding reaches 10^(p-s) (the common case)
        if exponent >= digits:
            return False  # at least 10^(p-s) before rounding (and too long to round)
        rounded = value.quantize(
            Decimal(1).scaleb(-self.scale), rounding=ROUND_HALF_UP, context=MATH_CONTEXT
        )
        return rounded.copy_abs() < self.limit  # not abs(): it rounds to the context's 28 digits

    def __str__(self) -> str:
        return f"numeric({self.precision},{self.scale})"


AMOUNT = Numeric(30, 18)  # token amounts, prices, balances
SOL = Numeric(20, 8)  # SOL amounts, fees, P/L, USD values
USD_METRIC = Numeric(30, 8)  # market cap, liquidity
PCT = Numeric(10, 4)  # percentages
SL_PCT = Numeric(5, 2)  # stop-loss percentages

COLUMNS: dict[str, dict[str, Numeric]] = {
    "agent_balances": {"balance": AMOUNT},
    "agent_balance_snapshots": {
        "portfolio_balance_sol": SOL,
        "sol_balance": SOL,
        "positions_value_sol": SOL,
        "unrealized_pnl_sol": SOL,
    },
    "trading_signals": {
        "price_usd": AMOUNT,
        "market_cap_usd": USD_METRIC,
        "liquidity_usd": USD_METRIC,
    },
    "agent_transactions": {
        "transaction_value_usd": SOL,
        "fees": SOL,
        "input_amount": AMOUNT,
        "input_price": AMOUNT,
        "output_amount": AMOUNT,
        "output_price": AMOUNT,
        "slippage": PCT,
        "price_impact": PCT,
        "protocol_fee_sol": SOL,
        "network_fee_sol": SOL,
    },
    "agent_historical_swaps": {
        "amount": AMOUNT,
        "purchase_price": AMOUNT,
        "sale_price": AMOUNT,
        "change_percent": PCT,
        "profit_loss_usd": SOL,
        "profit_loss_sol": SOL,
    },
    "agent_positions": {
        "purchase_price": AMOUNT,
        "purchase_amount": AMOUNT,
        "current_stop_loss_percentage": SL_PCT,
        "peak_price": AMOUNT,
        "lowest_price": AMOUNT,
        "total_invested_sol": SOL,
        "remaining_amount": AMOUNT,
        "moon_bag_amount": AMOUNT,
        "realized_profit_sol": SOL,
        "take_profit_proceeds_sol": SOL,
    },
    "token_prices": {"price_usd": AMOUNT},
    "token_price_history": {"price_usd": AMOUNT},
}


def misfit(table: str, **values: Decimal | None) -> str | None:
    """None when each value fits its column of `table` (None: NULL, which fits); else one
    sentence naming the first column, the value and the column's type."""
    columns = COLUMNS[table]
    for name, value in values.items():
        column = columns[name]
        if value is not None and not column.fits(value):
            return f"{table}.{name} would be {fmt(value)}, which {column} cannot hold"
    return None
