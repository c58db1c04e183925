"""What agents did with one signal: decision, buy, take-profit sales, exit, balance."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from uuid import UUID

import asyncpg

from worker.domain.models import SOL_MINT


@dataclass(frozen=True, slots=True)
class SignalResult:
    """One agent's part in one signal, as the ledger holds it now."""

    agent_id: UUID
    name: str
    status: str | None  # None: no execution (yet)
    reason: str | None
    buy_sol: Decimal | None  # SOL swapped, fees apart
    tokens: Decimal | None
    buy_price_sol: Decimal | None
    take_profit_sales: int
    take_profit_sol: Decimal  # net SOL they credited
    close_reason: str | None
    profit_loss_sol: Decimal | None
    change_percent: Decimal | None
    sol_balance: Decimal | None
    is_open: bool


SIGNAL_RESULTS = """
SELECT a.id AS agent_id, a.name, e.status, e.error,
       buy.input_amount AS buy_sol, buy.output_amount AS tokens, buy.output_price AS buy_price,
       coalesce(tp.n, 0) AS tp_sales, coalesce(tp.sol, 0) AS tp_sol,
       h.close_reason, h.profit_loss_sol, h.change_percent,
       b.balance AS sol_balance, (p.id IS NOT NULL) AS is_open
  FROM agents a
  LEFT JOIN signal_executions e ON e.agent_id = a.id AND e.signal_id = $1
  LEFT JOIN agent_transactions buy ON buy.id = e.transaction_id
  LEFT JOIN LATERAL (
        SELECT count(*) AS n,
               sum(t.output_amount - coalesce(t.network_fee_sol, 0)
                   - coalesce(t.protocol_fee_sol, 0)) AS sol
          FROM agent_transactions t
         WHERE t.position_id = buy.position_id AND t.is_take_profit
  ) tp ON true
  LEFT JOIN agent_historical_swaps h ON h.position_id = buy.position_id
  LEFT JOIN agent_positions p ON p.id = buy.position_id
  LEFT JOIN agent_wallets w ON w.agent_id = a.id AND w.wallet_type = a.trading_mode
  LEFT JOIN agent_balances b ON b.wallet_address = w.wallet_address AND b.token_address = $3
 WHERE a.user_id = $2
 ORDER BY a.created_at, a.name, a.id
"""


async def signal_results(
    conn: asyncpg.Connection, signal_id: int, user_id: UUID
) -> list[SignalResult]:
    """Each agent of `user_id` with what it did with signal `signal_id`, in creation order."""
    rows = await conn.fetch(SIGNAL_RESULTS, signal_id, user_id, SOL_MINT)
    return [
        SignalResult(
            agent_id=r["agent_id"],
            name=r["name"],
            status=r["status"],
            reason=r["error"],
            buy_sol=r["buy_sol"],
            tokens=r["tokens"],
            buy_price_sol=r["buy_price"],
            take_profit_sales=r["tp_sales"],
            take_profit_sol=r["tp_sol"],
            close_reason=r["close_reason"],
            profit_loss_sol=r["profit_loss_sol"],
            change_percent=r["change_percent"],
            sol_balance=r["sol_balance"],
            is_open=r["is_open"],
        )
        for r in rows
    ]


SIGNAL_BY_KEY = "SELECT id FROM trading_signals WHERE user_id = $1 AND idempotency_key = $2"


async def signal_id_of(conn: asyncpg.Connection, user_id: UUID, key: str) -> int | None:
    """The id of the user's signal stored under `key`, once it is stored."""
    signal_id: int | None = await conn.fetchval(SIGNAL_BY_KEY, user_id, key)
    return signal_id


PRICE_TS = "SELECT price_ts FROM token_prices WHERE token_address = $1"


async def price_time(conn: asyncpg.Connection, token: str) -> datetime | None:
    """The `ts` of the token's stored price (the newest tick applied), if any."""
    ts: datetime | None = await conn.fetchval(PRICE_TS, token)
    return ts
