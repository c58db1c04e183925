"""Ledger writes: swap transactions, balance moves and positions, set-based (one statement each).

Repositories never open transactions; the handler wraps these in its own. Amounts come in
already quantized by `worker.domain.money`, so what is written is exactly what was computed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from uuid import UUID

import asyncpg

from worker.domain.config import ExitRules
from worker.domain.fills import BuyFill, SellFill
from worker.domain.models import SOL_MINT, SOL_SYMBOL, PositionState
from worker.errors import DomainError


@dataclass(frozen=True, slots=True)
class SwapRow:
    """One `SWAP` row of `agent_transactions`: `input_*` leaves the wallet, `output_*` enters it."""

    id: UUID
    agent_id: UUID
    wallet_address: str
    time: datetime
    signal_id: int | None
    value_usd: Decimal
    input_mint: str
    input_symbol: str
    input_amount: Decimal
    input_price: Decimal
    output_mint: str
    output_symbol: str
    output_amount: Decimal
    output_price: Decimal
    network_fee_sol: Decimal
    protocol_fee_sol: Decimal
    position_id: UUID | None = None
    is_dca: bool = False
    is_take_profit: bool = False


INSERT_SWAPS = """
INSERT INTO agent_transactions (
    id, agent_id, wallet_address, transaction_type, transaction_value_usd, transaction_time,
    signal_id, fees, input_mint, input_symbol, input_amount, input_price,
    output_mint, output_symbol, output_amount, output_price,
    is_dca, is_take_profit, network_fee_sol, protocol_fee_sol, position_id, created_at,
    updated_at)
SELECT t.id, t.agent_id, t.wallet, 'SWAP', t.value_usd, t.at,
       t.signal_id, t.nfee + t.pfee, t.in_mint, t.in_symbol, t.in_amount, t.in_price,
       t.out_mint, t.out_symbol, t.out_amount, t.out_price,
       t.is_dca, t.is_tp, t.nfee, t.pfee, t.position_id, t.at, t.at
  FROM unnest($1::uuid[], $2::uuid[], $3::varchar[], $4::numeric[], $5::timestamptz[],
              $6::int[], $7::varchar[], $8::varchar[], $9::numeric[], $10::numeric[],
              $11::varchar[], $12::varchar[], $13::numeric[], $14::numeric[],
              $15::bool[], $16::bool[], $17::numeric[], $18::numeric[], $19::uuid[])
       AS t(id, agent_id, wallet, value_usd, at, signal_id, in_mint, in_symbol, in_amount,
            in_price, out_mint, out_symbol, out_amount, out_price, is_dca, is_tp, nfee, pfee,
            position_id)
"""


async def insert_swaps(conn: asyncpg.Connection, swaps: Sequence[SwapRow]) -> None:
    """Insert `SWAP` transactions in one statement."""
    if not swaps:
        return
    await conn.execute(
        INSERT_SWAPS,
        [s.id for s in swaps],
        [s.agent_id for s in swaps],
        [s.wallet_address for s in swaps],
        [s.value_usd for s in swaps],
        [s.time for s in swaps],
        [s.signal_id for s in swaps],
        [s.input_mint for s in swaps],
        [s.input_symbol for s in swaps],
        [s.input_amount for s in swaps],
        [s.input_price for s in swaps],
        [s.output_mint for s in swaps],
        [s.output_symbol for s in swaps],
        [s.output_amount for s in swaps],
        [s.output_price for s in swaps],
        [s.is_dca for s in swaps],
        [s.is_take_profit for s in swaps],
        [s.network_fee_sol for s in swaps],
        [s.protocol_fee_sol for s in swaps],
        [s.position_id for s in swaps],
    )


@dataclass(frozen=True, slots=True)
class BalanceDelta:
    """A change of one wallet's balance of one token (negative for a debit)."""

    agent_id: UUID
    wallet_address: str
    token_address: str
    token_symbol: str
    delta: Decimal


APPLY_DEBITS = """
UPDATE agent_balances b
   SET balance = b.balance + d.delta, last_updated = now()
  FROM unnest($1::varchar[], $2::varchar[], $3::numeric[]) AS d(wallet, token, delta)
 WHERE b.wallet_address = d.wallet AND b.token_address = d.token
"""
APPLY_CREDITS = """
INSERT INTO agent_balances (agent_id, wallet_address, token_address, token_symbol, balance,
                            last_updated)
SELECT d.agent_id, d.wallet, d.token, d.symbol, d.delta, now()
  FROM unnest($1::uuid[], $2::varchar[], $3::varchar[], $4::varchar[], $5::numeric[])
       AS d(agent_id, wallet, token, symbol, delta)
ON CONFLICT (wallet_address, token_address) DO UPDATE
   SET balance = agent_balances.balance + EXCLUDED.balance,
       token_symbol = EXCLUDED.token_symbol,
       last_updated = now()
"""


async def apply_balance_deltas(conn: asyncpg.Connection, deltas: Sequence[BalanceDelta]) -> None:
    """Add each delta to its (wallet, token) balance row; credits create missing rows.

    Deltas for the same (wallet, token) are summed first: one statement may touch a row
    once. Debits are plain updates (an upsert would check its negative insert row against
    the CHECK first); a debit of a missing row, or one that would leave a balance negative,
    fails the transaction, which is what a broken ledger must do.
    """
    merged: dict[tuple[str, str], BalanceDelta] = {}
    for d in deltas:
        key = (d.wallet_address, d.token_address)
        prior = merged.get(key)
        merged[key] = (
            d
            if prior is None
            else BalanceDelta(
                d.agent_id, d.wallet_address, d.token_address, d.token_symbol, prior.delta + d.delta
            )
        )
    rows = sorted(merged.values(), key=lambda d: (d.wallet_address, d.token_address))
    debits = [d for d in rows if d.delta < 0]
    credits = [d for d in rows if d.delta > 0]
    if debits:
        status = await conn.execute(
            APPLY_DEBITS,
            [d.wallet_address for d in debits],
            [d.token_address for d in debits],
            [d.delta for d in debits],
        )
        if int(status.split()[-1]) != len(debits):
            raise DomainError(
                f"a debit names a balance row that does not exist ({len(debits)} debits, "
                f"{status.split()[-1]} rows updated)"
            )
    if credits:
        await conn.execute(
            APPLY_CREDITS,
            [d.agent_id for d in credits],
            [d.wallet_address for d in credits],
            [d.token_address for d in credits],
            [d.token_symbol for d in credits],
            [d.delta for d in credits],
        )


LOCK_USERS_SOL_BALANCES = """
SELECT b.wallet_address
  FROM agent_balances b JOIN agents a ON a.id = b.agent_id
 WHERE a.user_id = ANY($1::uuid[]) AND b.token_address = $2
 ORDER BY b.wallet_address
   FOR UPDATE OF b
"""


async def lock_users_sol_balances(conn: asyncpg.Connection, user_ids: Sequence[UUID]) -> None:
    """Lock the SOL balance rows of every wallet of the users, in wallet-address order.

    Every writer of a wallet (buys, sales, DCA) takes its SOL row first and in this order,
    so concurrent signal and price processing cannot deadlock on each other.
    """
    await conn.execute(LOCK_USERS_SOL_BALANCES, list(set(user_ids)), SOL_MINT)


@dataclass(frozen=True, slots=True)
class NewPosition:
    """An open position created by a buy; `state` is `worker.domain.exits.open_position`'s."""

    id: UUID
    agent_id: UUID
    wallet_address: str
    token_address: str
    token_symbol: str
    purchase_transaction_id: UUID
    state: PositionState
    exit_rules_id: UUID | None = None


INSERT_POSITIONS = """
INSERT INTO agent_positions (
    id, agent_id, wallet_address, token_address, token_symbol, purchase_transaction_id,
    purchase_price, purchase_amount, remaining_amount, total_invested_sol, lowest_price,
    current_stop_loss_percentage, peak_price, last_stop_loss_update, created_at, updated_at,
    exit_rules_id)
SELECT p.id, p.agent_id, p.wallet, p.token, p.symbol, p.tx,
       p.price, p.amount, p.amount, p.invested, p.low,
       p.sl, p.peak, CASE WHEN p.sl IS NULL THEN NULL ELSE p.at END, p.at, p.at, p.rules
  FROM unnest($1::uuid[], $2::uuid[], $3::varchar[], $4::varchar[], $5::varchar[],
              $6::uuid[], $7::numeric[], $8::numeric[], $9::numeric[], $10::numeric[],
              $11::numeric[], $12::numeric[], $13::timestamptz[], $14::uuid[])
       AS p(id, agent_id, wallet, token, symbol, tx, price, amount, invested, sl, peak, low,
            at, rules)
"""


async def insert_positions(conn: asyncpg.Connection, positions: Sequence[NewPosition]) -> None:
    """Insert new positions in their opening state (all of `purchase_amount` held) in one go."""
    if not positions:
        return
    s = [p.state for p in positions]
    await conn.execute(
        INSERT_POSITIONS,
        [p.id for p in positions],
        [p.agent_id for p in positions],
        [p.wallet_address for p in positions],
        [p.token_address for p in positions],
        [p.token_symbol for p in positions],
        [p.purchase_transaction_id for p in positions],
        [x.purchase_price for x in s],
        [x.purchase_amount for x in s],
        [x.total_invested_sol for x in s],
        [x.current_stop_loss_percentage for x in s],
        [x.peak_price for x in s],
        [x.lowest_price for x in s],
        [x.created_at for x in s],
        [p.exit_rules_id for p in positions],
    )


INSERT_EXIT_RULES = """
INSERT INTO exit_rule_sets (id, rules)
SELECT r.id, r.rules::jsonb FROM unnest($1::uuid[], $2::text[]) AS r(id, rules)
 ORDER BY r.id
ON CONFLICT (id) DO NOTHING
"""


async def insert_exit_rules(conn: asyncpg.Connection, rules: Sequence[ExitRules]) -> None:
    """Store the exit rule sets that new positions point at (each id once, ever)."""
    if not rules:
        return
    await conn.execute(INSERT_EXIT_RULES, [r.id for r in rules], [r.json for r in rules])


@dataclass(frozen=True, slots=True)
class Holding:
    """Whose trade it is and in which token: the parts every swap row of a position shares."""

    agent_id: UUID
    wallet_address: str
    token_address: str
    token_symbol: str
    signal_id: int | None
    position_id: UUID


def buy_rows(
    tx_id: UUID, holding: Holding, fill: BuyFill, time: datetime, *, is_dca: bool = False
) -> tuple[SwapRow, list[BalanceDelta]]:
    """The swap (SOL in, token out) and balance moves of a buy: SOL down by the debit."""
    h = holding
    swap = SwapRow(
        id=tx_id, agent_id=h.agent_id, wallet_address=h.wallet_address, time=time,
        signal_id=h.signal_id, value_usd=fill.value_usd,
        input_mint=SOL_MINT, input_symbol=SOL_SYMBOL, input_amount=fill.size_sol,
        input_price=Decimal(1), output_mint=h.token_address, output_symbol=h.token_symbol,
        output_amount=fill.token_amount, output_price=fill.price_sol,
        network_fee_sol=fill.network_fee_sol, protocol_fee_sol=fill.protocol_fee_sol,
        position_id=h.position_id, is_dca=is_dca,
    )  # fmt: skip
    return swap, [
        BalanceDelta(h.agent_id, h.wallet_address, SOL_MINT, SOL_SYMBOL, -fill.debit_sol),
        BalanceDelta(h.agent_id, h.wallet_address, h.token_address, h.token_symbol,
                     fill.token_amount),
    ]  # fmt: skip


def sale_rows(
    tx_id: UUID, holding: Holding, fill: SellFill, time: datetime, *, is_take_profit: bool
) -> tuple[SwapRow, list[BalanceDelta]]:
    """The swap (token in, gross SOL out) and balance moves of a sale: SOL up by the credit."""
    h = holding
    swap = SwapRow(
        id=tx_id, agent_id=h.agent_id, wallet_address=h.wallet_address, time=time,
        signal_id=h.signal_id, value_usd=fill.value_usd,
        input_mint=h.token_address, input_symbol=h.token_symbol, input_amount=fill.token_amount,
        input_price=fill.price_sol, output_mint=SOL_MINT, output_symbol=SOL_SYMBOL,
        output_amount=fill.gross_sol, output_price=Decimal(1),
        network_fee_sol=fill.network_fee_sol, protocol_fee_sol=fill.protocol_fee_sol,
        position_id=h.position_id, is_take_profit=is_take_profit,
    )  # fmt: skip
    return swap, [
        BalanceDelta(h.agent_id, h.wallet_address, h.token_address, h.token_symbol,
                     -fill.token_amount),
        BalanceDelta(h.agent_id, h.wallet_address, SOL_MINT, SOL_SYMBOL, fill.credit_sol),
    ]  # fmt: skip
