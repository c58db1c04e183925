"""Open positions for price-tick exits: read them per token, write what a tick did, set-based.

Every time written here is a decision time carried by the row (the tick's, never the
database's `now()`), so a replay and a live run write the same positions and closes."""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

import asyncpg

from worker.db.base import OnConnection
from worker.db.bulk import Bulk, Column
from worker.domain.models import SOL_MINT, PositionState
from worker.domain.records import (
    ClosedPosition,
    OpenPosition,
    PositionWrite,
    TrailRow,
    TrailUpdate,
)

SELECT_AND_LOCK = """
SELECT p.id, p.agent_id, p.wallet_address, p.token_address, p.token_symbol,
       p.purchase_transaction_id, t.signal_id,
       coalesce(b.balance, 0) AS sol_balance,
       p.purchase_price, p.purchase_amount, p.remaining_amount, p.total_invested_sol,
       p.created_at, p.current_stop_loss_percentage, p.peak_price, p.lowest_price,
       p.dca_count, p.last_dca_time, p.take_profit_levels_hit, p.tp_batch_start_level,
       p.total_take_profit_levels, p.moon_bag_activated, p.moon_bag_amount,
       p.realized_profit_sol, p.take_profit_proceeds_sol, p.exit_rules_id
  FROM agent_positions p
  JOIN agent_wallets w ON w.wallet_address = p.wallet_address
  LEFT JOIN agent_transactions t ON t.id = p.purchase_transaction_id
  -- The SOL mint as a literal, not a parameter: with a parameter, a cached generic plan
  -- scans every SOL balance row once per position.
  LEFT JOIN agent_balances b ON b.wallet_address = p.wallet_address
        AND b.token_address = 'So11111111111111111111111111111111111111112'
 WHERE p.id = ANY($1::uuid[])
   AND w.wallet_type = 'simulation'
 ORDER BY p.id
   FOR UPDATE OF p
"""


# The open positions in the tokens of a chunk of ticks, without the joins and columns only a
# trade needs (signal, SOL balance, amounts): a third of the time for a token many agents hold.
# Not the config either, nor the automated-trading switch: both are those in force at each
# tick's time (`worker.handlers.ticks`, from the agents' config history).
SELECT_TRAIL_ROWS = """
SELECT p.id, p.agent_id, p.token_address, p.wallet_address,
       p.purchase_price, p.created_at, p.current_stop_loss_percentage, p.peak_price,
       p.lowest_price, p.exit_rules_id
  FROM agent_positions p
  JOIN agent_wallets w ON w.wallet_address = p.wallet_address
 WHERE p.token_address = ANY($1::varchar[])
   AND w.wallet_type = 'simulation'
"""


SELECT_EXIT_RULES = "SELECT id, rules::text AS rules FROM exit_rule_sets WHERE id = ANY($1::uuid[])"


def position_state(r: asyncpg.Record) -> PositionState:
    """A position's state from a row holding every `agent_positions` state column."""
    return PositionState(
        purchase_price=r["purchase_price"],
        purchase_amount=r["purchase_amount"],
        total_invested_sol=r["total_invested_sol"],
        created_at=r["created_at"],
        remaining_amount=r["remaining_amount"],
        current_stop_loss_percentage=r["current_stop_loss_percentage"],
        peak_price=r["peak_price"],
        lowest_price=r["lowest_price"],
        dca_count=r["dca_count"],
        last_dca_time=r["last_dca_time"],
        take_profit_levels_hit=r["take_profit_levels_hit"],
        tp_batch_start_level=r["tp_batch_start_level"],
        total_take_profit_levels=r["total_take_profit_levels"],
        moon_bag_activated=r["moon_bag_activated"],
        moon_bag_amount=r["moon_bag_amount"],
        realized_profit_sol=r["realized_profit_sol"],
        take_profit_proceeds_sol=r["take_profit_proceeds_sol"],
    )


def _position(r: asyncpg.Record) -> OpenPosition:
    return OpenPosition(
        id=r["id"],
        agent_id=r["agent_id"],
        wallet_address=r["wallet_address"],
        token_address=r["token_address"],
        token_symbol=r["token_symbol"],
        purchase_transaction_id=r["purchase_transaction_id"],
        signal_id=r["signal_id"],
        sol_balance=r["sol_balance"],
        state=position_state(r),
        exit_rules_id=r["exit_rules_id"],
    )


LOCK_WALLET_SOL = """
SELECT wallet_address FROM agent_balances
 WHERE wallet_address = ANY($1::varchar[]) AND token_address = $2
 ORDER BY wallet_address FOR UPDATE
"""


TRAILS: Bulk[TrailUpdate] = Bulk(
    "d",
    [
        Column("id", "uuid", "id"),
        Column("peak", "numeric", "peak_price"),
        Column("sl", "numeric", "stop_loss_pct"),
        Column("low", "numeric", "lowest_price"),
        Column("at", "timestamptz", "at"),
        Column("stop_at", "timestamptz", "stop_at"),
    ],
)
UPDATE_TRAILS = TRAILS.sql("""
UPDATE agent_positions p
   SET peak_price = GREATEST(p.peak_price, d.peak),
       current_stop_loss_percentage = GREATEST(p.current_stop_loss_percentage, d.sl),
       last_stop_loss_update = CASE
           WHEN d.sl > p.current_stop_loss_percentage OR d.peak > p.peak_price
             OR (p.current_stop_loss_percentage IS NULL AND d.sl IS NOT NULL)
           THEN coalesce(d.stop_at, d.at)
           ELSE p.last_stop_loss_update END,
       lowest_price = LEAST(p.lowest_price, d.low),
       updated_at = d.at
  FROM {rows}
 WHERE p.id = d.id
""")


def _joined(ids: tuple[UUID, ...]) -> str | None:
    """Transaction ids as one comma-separated text (None: none), split again by the SQL:
    `unnest` would flatten an array of arrays."""
    return ",".join(map(str, ids)) if ids else None


WRITES: Bulk[PositionWrite] = Bulk(
    "d",
    [
        Column("id", "uuid", "id"),
        Column("price", "numeric", "state.purchase_price"),
        Column("amount", "numeric", "state.purchase_amount"),
        Column("remaining", "numeric", "state.remaining_amount"),
        Column("invested", "numeric", "state.total_invested_sol"),
        Column("sl", "numeric", "state.current_stop_loss_percentage"),
        Column("peak", "numeric", "state.peak_price"),
        Column("low", "numeric", "state.lowest_price"),
        Column("dca_count", "int", "state.dca_count"),
        Column("last_dca", "timestamptz", "state.last_dca_time"),
        Column("dca_txs", "text", lambda w: _joined(w.dca_transaction_ids)),
        Column("hit", "int", "state.take_profit_levels_hit"),
        Column("batch", "int", "state.tp_batch_start_level"),
        Column("total", "int", "state.total_take_profit_levels"),
        Column("tp_txs", "text", lambda w: _joined(w.take_profit_transaction_ids)),
        Column("bag_on", "bool", "state.moon_bag_activated"),
        Column("bag", "numeric", "state.moon_bag_amount"),
        Column("realized", "numeric", "state.realized_profit_sol"),
        Column("proceeds", "numeric", "state.take_profit_proceeds_sol"),
        Column("at", "timestamptz", "at"),
        Column("stop_at", "timestamptz", "stop_at"),
        Column("tp_at", "timestamptz", "take_profit_at"),
    ],
)
UPDATE_POSITIONS = WRITES.sql("""
UPDATE agent_positions p
   SET purchase_price = d.price, purchase_amount = d.amount, remaining_amount = d.remaining,
       total_invested_sol = d.invested, current_stop_loss_percentage = d.sl,
       peak_price = d.peak,
       last_stop_loss_update = CASE
           WHEN d.sl IS DISTINCT FROM p.current_stop_loss_percentage
             OR d.peak IS DISTINCT FROM p.peak_price THEN coalesce(d.stop_at, d.at)
           ELSE p.last_stop_loss_update END,
       lowest_price = d.low, dca_count = d.dca_count, last_dca_time = d.last_dca,
       dca_transaction_ids = CASE WHEN d.dca_txs IS NULL THEN p.dca_transaction_ids
           ELSE coalesce(p.dca_transaction_ids, '{{}}') || string_to_array(d.dca_txs, ',') END,
       take_profit_levels_hit = d.hit, tp_batch_start_level = d.batch,
       total_take_profit_levels = d.total,
       take_profit_transaction_ids = CASE WHEN d.tp_txs IS NULL
           THEN p.take_profit_transaction_ids
           ELSE p.take_profit_transaction_ids || string_to_array(d.tp_txs, ',') END,
       last_take_profit_time = CASE WHEN d.tp_txs IS NULL THEN p.last_take_profit_time
           ELSE coalesce(d.tp_at, d.at) END,
       moon_bag_activated = d.bag_on, moon_bag_amount = d.bag,
       realized_profit_sol = d.realized, take_profit_proceeds_sol = d.proceeds,
       updated_at = d.at
  FROM {rows}
 WHERE p.id = d.id
""")


EXITS: Bulk[ClosedPosition] = Bulk(
    "h",
    [
        Column("agent_id", "uuid", "position.agent_id"),
        Column("wallet", "varchar", "position.wallet_address"),
        Column("token", "varchar", "position.token_address"),
        Column("symbol", "varchar", "position.token_symbol"),
        Column("amount", "numeric", "pnl.amount"),
        Column("purchase_price", "numeric", "pnl.purchase_price"),
        Column("sale_price", "numeric", "pnl.sale_price"),
        Column("change", "numeric", "pnl.change_percent"),
        Column("pnl_usd", "numeric", "pnl.profit_loss_usd"),
        Column("pnl_sol", "numeric", "pnl.profit_loss_sol"),
        Column("purchase_time", "timestamptz", "position.state.created_at"),
        Column("purchase_tx", "uuid", "position.purchase_transaction_id"),
        Column("sale_tx", "uuid", "sale_transaction_id"),
        Column("signal_id", "int", "position.signal_id"),
        Column("reason", "varchar", "close_reason.value"),
        Column("position_id", "uuid", "position.id"),
        Column("at", "timestamptz", "at"),
    ],
)
INSERT_HISTORY = EXITS.sql("""
INSERT INTO agent_historical_swaps (
    agent_id, wallet_address, token_address, token_symbol, amount, purchase_price, sale_price,
    change_percent, profit_loss_usd, profit_loss_sol, purchase_time, sale_time,
    purchase_transaction_id, sale_transaction_id, signal_id, close_reason, position_id)
SELECT h.agent_id, h.wallet, h.token, h.symbol, h.amount, h.purchase_price, h.sale_price,
       h.change, h.pnl_usd, h.pnl_sol, h.purchase_time, h.at,
       h.purchase_tx, h.sale_tx, h.signal_id, h.reason, h.position_id
  FROM {rows}
""")
DELETE_POSITIONS = "DELETE FROM agent_positions WHERE id = ANY($1::uuid[])"
EMPTIED: Bulk[ClosedPosition] = Bulk(
    "e",
    [
        Column("wallet", "varchar", "position.wallet_address"),
        Column("token", "varchar", "position.token_address"),
    ],
)
DELETE_EMPTY_BALANCES = EMPTIED.sql("""
DELETE FROM agent_balances b
 USING {rows}
 WHERE b.wallet_address = e.wallet AND b.token_address = e.token AND b.balance = 0
""")


class PositionQueries(OnConnection):
    """Open positions for price-tick exits: read per token, written set-based."""

    __slots__ = ()

    async def trail_rows(self, tokens: Sequence[str]) -> list[TrailRow]:
        """`TrailRow`s of the open simulation positions in `tokens` that automation may exit."""
        # Positional: SELECT_TRAIL_ROWS lists TrailRow's fields in order (a test checks it);
        # this read runs for every open position of every token a chunk of ticks moves.
        return [TrailRow(*r) for r in await self.conn.fetch(SELECT_TRAIL_ROWS, list(tokens))]

    async def exit_rules(self, ids: Sequence[UUID]) -> dict[UUID, str]:
        """The stored exit rule sets (JSON text) by id; unknown ids are absent."""
        rows = await self.conn.fetch(SELECT_EXIT_RULES, list(set(ids)))
        return {r["id"]: r["rules"] for r in rows}

    async def lock_positions(self, ids: Sequence[UUID]) -> list[OpenPosition]:
        """Lock (FOR UPDATE) and read whole, in id order, those of the positions that are
        still open simulation positions automation may exit; the others are absent."""
        rows = await self.conn.fetch(SELECT_AND_LOCK, list(ids))
        return [_position(r) for r in rows]

    async def lock_wallets_sol(self, wallets: Sequence[str]) -> None:
        """Lock the wallets' SOL balance rows in address order (the order every writer uses)."""
        await self.conn.execute(LOCK_WALLET_SOL, sorted(set(wallets)), SOL_MINT)

    async def update_trails(self, updates: Sequence[TrailUpdate]) -> None:
        """Raise peaks and stops and lower lows; never the other way, so ticks may interleave."""
        if not updates:
            return
        await self.conn.execute(UPDATE_TRAILS, *TRAILS.args(updates))

    async def update_positions(self, writes: Sequence[PositionWrite]) -> None:
        """Write the new state of positions that traded on a chunk's ticks and stay open."""
        if not writes:
            return
        await self.conn.execute(UPDATE_POSITIONS, *WRITES.args(writes))

    async def close_positions(self, closed: Sequence[ClosedPosition]) -> None:
        """Record each full exit in `agent_historical_swaps` (its `sale_time` the closing
        tick's decision time); delete positions, empty rows."""
        if not closed:
            return
        await self.conn.execute(INSERT_HISTORY, *EXITS.args(closed))
        await self.conn.execute(DELETE_POSITIONS, [c.position.id for c in closed])
        await self.conn.execute(DELETE_EMPTY_BALANCES, *EMPTIED.args(closed))
