"""Whether the rows a trade or a snapshot writes fit their numeric columns
(`worker.domain.columns`): each check returns None, or one sentence naming the first value
no column holds. The shell calls them before it queues a write, and turns a sentence into
a skipped write (a position's trade, a wallet's snapshot) or a failed execution (a buy),
logged with the reason and counted; the in-memory store refuses what they refuse, as
PostgreSQL does.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from worker.domain.columns import misfit
from worker.domain.exits import ExitPnl
from worker.domain.ledger import SwapRow
from worker.domain.models import PositionState


def swap_misfit(swap: SwapRow) -> str | None:
    """The first value of a swap's `agent_transactions` row no column holds, or None."""
    return misfit(
        "agent_transactions",
        transaction_value_usd=swap.value_usd,
        fees=swap.network_fee_sol + swap.protocol_fee_sol,
        input_amount=swap.input_amount,
        input_price=swap.input_price,
        output_amount=swap.output_amount,
        output_price=swap.output_price,
        network_fee_sol=swap.network_fee_sol,
        protocol_fee_sol=swap.protocol_fee_sol,
    )


def position_misfit(state: PositionState) -> str | None:
    """The first value of a position's `agent_positions` row no column holds, or None."""
    return misfit(
        "agent_positions",
        purchase_price=state.purchase_price,
        purchase_amount=state.purchase_amount,
        current_stop_loss_percentage=state.current_stop_loss_percentage,
        peak_price=state.peak_price,
        lowest_price=state.lowest_price,
        total_invested_sol=state.total_invested_sol,
        remaining_amount=state.remaining_amount,
        moon_bag_amount=state.moon_bag_amount,
        realized_profit_sol=state.realized_profit_sol,
        take_profit_proceeds_sol=state.take_profit_proceeds_sol,
    )


def exit_misfit(pnl: ExitPnl) -> str | None:
    """The first value of a full exit's `agent_historical_swaps` row no column holds, or None."""
    return misfit(
        "agent_historical_swaps",
        amount=pnl.amount,
        purchase_price=pnl.purchase_price,
        sale_price=pnl.sale_price,
        change_percent=pnl.change_percent,
        profit_loss_usd=pnl.profit_loss_usd,
        profit_loss_sol=pnl.profit_loss_sol,
    )


def balance_misfit(balance: Decimal) -> str | None:
    """None when an `agent_balances` row can hold `balance`; else why not."""
    return misfit("agent_balances", balance=balance)


def price_misfit(price_usd: Decimal) -> str | None:
    """None when `token_prices` (and the price history) can hold a USD price; else why not."""
    return misfit("token_prices", price_usd=price_usd)


def snapshot_misfit(
    portfolio_balance_sol: Decimal,
    sol_balance: Decimal,
    positions_value_sol: Decimal,
    unrealized_pnl_sol: Decimal,
) -> str | None:
    """The first value of a wallet's `agent_balance_snapshots` row no column holds, or None."""
    return misfit(
        "agent_balance_snapshots",
        portfolio_balance_sol=portfolio_balance_sol,
        sol_balance=sol_balance,
        positions_value_sol=positions_value_sol,
        unrealized_pnl_sol=unrealized_pnl_sol,
    )


def trade_misfit(
    swaps: Iterable[SwapRow],
    *,
    state: PositionState | None = None,
    exit_pnl: ExitPnl | None = None,
    sol_balance: Decimal | None = None,
) -> str | None:
    """The first value no column holds among what one position's trade writes: its swaps,
    its state afterwards (None: closed), its exit's history row and its wallet's SOL
    balance afterwards; None when all of it can be written."""
    for swap in swaps:
        problem = swap_misfit(swap)
        if problem is not None:
            return problem
    if state is not None and (problem := position_misfit(state)) is not None:
        return problem
    if exit_pnl is not None and (problem := exit_misfit(exit_pnl)) is not None:
        return problem
    if sol_balance is not None:
        return balance_misfit(sol_balance)
    return None


@dataclass(frozen=True, slots=True)
class Unstorable:
    """A write left out because a value would not fit its column: `what` was left out
    (buy, dca, trade, exits, snapshot), of whom (`subject`: a position, agent, token or
    wallet) and why (one sentence)."""

    what: str
    subject: str
    reason: str
