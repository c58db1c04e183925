"""What `signal-worker positions list` and `trades list` read: open positions with the
settings and rules their exits use and the latest prices, and closed trades; read in one
read-only snapshot (the caller's transaction), filtered in SQL."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from uuid import UUID

import asyncpg

from worker.db.agents import config_columns, stored_config
from worker.db.positions import position_state
from worker.domain.config_reading import StoredConfigText, read_config
from worker.domain.exit_rules import EARLIER_VERSIONS_LIMIT
from worker.domain.models import SOL_MINT, PositionState


@dataclass(frozen=True, slots=True)
class ViewFilters:
    """Which rows: of these agents (None: all) and this user, in these tokens (an address
    or a symbol, exactly), within [since, until) of the row's time (a position's opening,
    a trade's closing)."""

    agent_ids: Sequence[UUID] | None = None
    user_id: UUID | None = None
    tokens: Sequence[str] | None = None
    since: datetime | None = None
    until: datetime | None = None

    def args(self) -> tuple[object, ...]:
        """The parameters $1..$5 of the statements below."""
        return (
            list(self.agent_ids) if self.agent_ids is not None else None,
            self.user_id,
            list(self.tokens) if self.tokens is not None else None,
            self.since,
            self.until,
        )


def _where(alias: str, time_column: str) -> str:
    return (
        f" WHERE ($1::uuid[] IS NULL OR {alias}.agent_id = ANY($1::uuid[]))"
        f"   AND ($2::uuid IS NULL OR a.user_id = $2)"
        f"   AND ($3::varchar[] IS NULL OR {alias}.token_address = ANY($3::varchar[])"
        f"        OR {alias}.token_symbol = ANY($3::varchar[]))"
        f"   AND ($4::timestamptz IS NULL OR {alias}.{time_column} >= $4)"
        f"   AND ($5::timestamptz IS NULL OR {alias}.{time_column} < $5)"
    )


# The agent's current settings (the latest version of agent_config_history: what decides
# the next tick) with its config up to $6 bytes, the rules the position was opened with,
# the token's latest price and SOL/USD ($7).
SELECT_POSITIONS = f"""
SELECT p.id, p.agent_id, a.user_id, a.name AS agent_name, w.wallet_type,
       a.automated_trading_simulation,
       {config_columns("$6")},
       r.rules::text AS exit_rules,
       p.token_address, p.token_symbol, p.created_at,
       p.purchase_price, p.purchase_amount, p.remaining_amount, p.total_invested_sol,
       p.current_stop_loss_percentage, p.peak_price, p.lowest_price, p.dca_count,
       p.last_dca_time, p.take_profit_levels_hit, p.tp_batch_start_level,
       p.total_take_profit_levels, p.moon_bag_activated, p.moon_bag_amount,
       p.realized_profit_sol, p.take_profit_proceeds_sol,
       tp.price_usd, tp.price_ts, sol.price_usd AS sol_usd
  FROM agent_positions p
  JOIN agents a ON a.id = p.agent_id
  LEFT JOIN agent_wallets w ON w.wallet_address = p.wallet_address
  LEFT JOIN exit_rule_sets r ON r.id = p.exit_rules_id
  LEFT JOIN token_prices tp ON tp.token_address = p.token_address
  LEFT JOIN token_prices sol ON sol.token_address = $7
{_where("p", "created_at")}
 ORDER BY a.user_id, a.name, a.id, p.created_at, p.id
"""  # noqa: S608 - constant SQL pieces; values travel as parameters

# A closed trade: its full exit, what it cost (its buys' SOL debits, fees included, else
# amount x purchase price for a row another writer made) and its take-profit sales before
# the exit (agent_transactions linked to the position).
SELECT_TRADES = f"""
SELECT h.id, h.position_id, h.agent_id, a.user_id, a.name AS agent_name,
       h.token_address, h.token_symbol, h.amount, h.purchase_price, h.sale_price,
       h.change_percent, h.profit_loss_sol, h.profit_loss_usd, h.purchase_time, h.sale_time,
       h.close_reason,
       coalesce(inv.sol, h.amount * h.purchase_price) AS invested_sol,
       coalesce(tps.n, 0)::int AS take_profit_sales
  FROM agent_historical_swaps h
  JOIN agents a ON a.id = h.agent_id
  LEFT JOIN LATERAL (
        SELECT sum(t.input_amount + coalesce(t.network_fee_sol, 0)
                   + coalesce(t.protocol_fee_sol, 0)) AS sol
          FROM agent_transactions t
         WHERE h.position_id IS NOT NULL AND t.position_id = h.position_id
           AND t.input_mint = $6
  ) inv ON true
  LEFT JOIN LATERAL (
        SELECT count(*) AS n
          FROM agent_transactions t
         WHERE h.position_id IS NOT NULL AND t.position_id = h.position_id
           AND t.is_take_profit
  ) tps ON true
{_where("h", "sale_time")}
 ORDER BY h.sale_time, a.user_id, a.name, h.id
"""  # noqa: S608 - constant SQL pieces; values travel as parameters


@dataclass(frozen=True, slots=True)
class PositionRow:
    """An open position as stored, with what decides its exits and its token's latest price.

    `config` is the agent's current `trading_config` (an `OversizedConfig` beyond the cap),
    `exit_rules` the rule set it was opened with (None: none stored); `price_usd` and
    `price_at` the token's latest price and its time, `sol_usd` SOL's (None: no price)."""

    id: UUID
    agent_id: UUID
    user_id: UUID
    agent_name: str
    wallet_type: str | None
    is_automated: bool  # automated_trading_simulation: whether ticks exit it at all
    config: StoredConfigText
    exit_rules: str | None
    token_address: str
    token_symbol: str
    state: PositionState
    price_usd: Decimal | None
    price_at: datetime | None
    sol_usd: Decimal | None
    # Without stored rules and with an invalid config: the configs of the agent's versions
    # before its latest, newest first (its last valid config is among them); else none.
    earlier_configs: tuple[StoredConfigText, ...] = ()


@dataclass(frozen=True, slots=True)
class TradeRow:
    """A closed trade (`agent_historical_swaps`: one row per full exit). Prices are SOL per
    token; the sale price is what the position returned (its take-profit sales and the
    closing sale, net of fees) over the tokens bought (`worker.domain.exits.full_exit_pnl`)."""

    id: UUID
    position_id: UUID | None
    agent_id: UUID
    user_id: UUID
    agent_name: str
    token_address: str
    token_symbol: str
    amount: Decimal
    purchase_price: Decimal
    sale_price: Decimal
    change_percent: Decimal
    profit_loss_sol: Decimal
    profit_loss_usd: Decimal
    purchase_time: datetime
    sale_time: datetime
    close_reason: str | None
    invested_sol: Decimal
    take_profit_sales: int


# Each agent's configs of the versions before its latest (the agents row's), newest first.
SELECT_EARLIER_CONFIGS = f"""
SELECT a.agent_id, {config_columns("$3", "h")}
  FROM unnest($1::uuid[]) AS a(agent_id)
 CROSS JOIN LATERAL (
       SELECT * FROM agent_config_history v WHERE v.agent_id = a.agent_id
        ORDER BY v.valid_from DESC, v.id DESC OFFSET 1 LIMIT $2) h
 ORDER BY a.agent_id, h.valid_from DESC, h.id DESC
"""  # noqa: S608 - constant SQL pieces; values travel as parameters


async def read_positions(
    conn: asyncpg.Connection, filters: ViewFilters, max_config_bytes: int
) -> list[PositionRow]:
    """The open positions the filters select (time: when they opened), by user, agent name,
    opening time, each without stored rules and with an invalid config with its agent's
    earlier configs (`EARLIER_VERSIONS_LIMIT`); run it inside a read-only transaction."""
    positions = await _read_positions(conn, filters, max_config_bytes)
    is_invalid: dict[StoredConfigText, bool] = {}  # by text: an agent's positions share it
    for p in positions:
        if p.exit_rules is None and p.config not in is_invalid:
            is_invalid[p.config] = read_config(p.config).error is not None
    unruled = sorted(
        {p.agent_id for p in positions if p.exit_rules is None and is_invalid[p.config]}
    )
    if not unruled:
        return positions
    earlier: dict[UUID, list[StoredConfigText]] = {}
    for r in await conn.fetch(
        SELECT_EARLIER_CONFIGS, unruled, EARLIER_VERSIONS_LIMIT, max_config_bytes
    ):
        earlier.setdefault(r["agent_id"], []).append(stored_config(r, max_config_bytes))
    return [
        replace(p, earlier_configs=tuple(earlier.get(p.agent_id, ())))
        if p.exit_rules is None and p.agent_id in earlier
        else p
        for p in positions
    ]


async def _read_positions(
    conn: asyncpg.Connection, filters: ViewFilters, max_config_bytes: int
) -> list[PositionRow]:
    rows = await conn.fetch(SELECT_POSITIONS, *filters.args(), max_config_bytes, SOL_MINT)
    return [
        PositionRow(
            id=r["id"],
            agent_id=r["agent_id"],
            user_id=r["user_id"],
            agent_name=r["agent_name"],
            wallet_type=r["wallet_type"],
            is_automated=r["automated_trading_simulation"],
            config=stored_config(r, max_config_bytes),
            exit_rules=r["exit_rules"],
            token_address=r["token_address"],
            token_symbol=r["token_symbol"],
            state=position_state(r),
            price_usd=r["price_usd"],
            price_at=r["price_ts"],
            sol_usd=r["sol_usd"],
        )
        for r in rows
    ]


async def read_trades(conn: asyncpg.Connection, filters: ViewFilters) -> list[TradeRow]:
    """The closed trades the filters select (time: when they closed), in closing order; run
    it inside a read-only transaction."""
    rows = await conn.fetch(SELECT_TRADES, *filters.args(), SOL_MINT)
    return [TradeRow(**dict(r)) for r in rows]
