"""What `signal-worker report` reads: agents, their executions, exits, open positions and the
latest prices, in one read-only snapshot; the figures are `worker.domain.results`'."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from uuid import UUID

import asyncpg

from worker.db.replay import SELECT_SOL_AT
from worker.domain.models import SOL_MINT
from worker.domain.results import AgentResult, Close, Holding, prices_in_sol, summarize

# The agents asked for (all, by id, or a user's), with the SOL balance of their current
# mode's wallet.
SELECT_AGENTS = """
SELECT a.id, a.name, a.user_id, b.balance, w.wallet_address
  FROM agents a
  LEFT JOIN agent_wallets w ON w.agent_id = a.id AND w.wallet_type = a.trading_mode
  LEFT JOIN agent_balances b ON b.wallet_address = w.wallet_address AND b.token_address = $3
 WHERE ($1::uuid[] IS NULL OR a.id = ANY($1::uuid[]))
   AND ($2::uuid IS NULL OR a.user_id = $2)
 ORDER BY a.user_id, a.created_at, a.name, a.id
"""
SELECT_EXECUTIONS = """
SELECT agent_id, status, count(*)::int AS n
  FROM signal_executions
 WHERE agent_id = ANY($1::uuid[]) AND ($2::timestamptz IS NULL OR executed_at >= $2)
   AND ($3::timestamptz IS NULL OR executed_at < $3)
 GROUP BY agent_id, status
"""
# What a closed position cost: its buys' SOL debits (the position's SOL-in swaps, fees
# included), else (a row another writer made, without the link) amount x purchase price.
SELECT_CLOSES = """
SELECT h.agent_id, h.profit_loss_sol, h.sale_time, h.purchase_time,
       extract(epoch FROM h.sale_time - h.purchase_time)::float8 AS held_s,
       coalesce(inv.sol, h.amount * h.purchase_price) AS invested
  FROM agent_historical_swaps h
  LEFT JOIN LATERAL (
        SELECT sum(t.input_amount + coalesce(t.network_fee_sol, 0)
                   + coalesce(t.protocol_fee_sol, 0)) AS sol
          FROM agent_transactions t
         WHERE h.position_id IS NOT NULL AND t.position_id = h.position_id
           AND t.input_mint = $3
  ) inv ON true
 WHERE h.agent_id = ANY($1::uuid[]) AND ($2::timestamptz IS NULL OR h.sale_time >= $2)
   AND ($4::timestamptz IS NULL OR h.sale_time < $4)
 ORDER BY h.sale_time
"""
SELECT_OPEN = """
SELECT agent_id, token_address, coalesce(remaining_amount, purchase_amount) AS remaining,
       total_invested_sol, take_profit_proceeds_sol
  FROM agent_positions
 WHERE agent_id = ANY($1::uuid[])
"""
SELECT_PRICES = """
SELECT token_address, price_usd FROM token_prices WHERE token_address = ANY($1::varchar[])
"""
# Each wallet's first trade in the period: where its equity curve starts.
SELECT_FIRST_TRADES = """
SELECT wallet_address, min(transaction_time) AS at
  FROM agent_transactions
 WHERE wallet_address = ANY($1::varchar[]) AND transaction_type = 'SWAP'
   AND ($2::timestamptz IS NULL OR transaction_time >= $2)
 GROUP BY wallet_address
"""
SELECT_SNAPSHOTS = """
SELECT agent_id, snapshot_timestamp, portfolio_balance_sol
  FROM agent_balance_snapshots
 WHERE agent_id = ANY($1::uuid[]) AND ($2::timestamptz IS NULL OR snapshot_timestamp >= $2)
 ORDER BY snapshot_timestamp
"""


@dataclass(frozen=True, slots=True)
class Filters:
    """Which agents, and the time range of the executions and exits counted (open
    positions are those open now)."""

    agent_ids: Sequence[UUID] | None = None
    user_id: UUID | None = None
    since: datetime | None = None
    until: datetime | None = None


@dataclass(slots=True)
class Curves:
    """For the chart: each agent's portfolio balance over time (hourly snapshots) and its
    realised P/L after each exit (from 0 at the first exit's entry)."""

    balances: dict[UUID, list[tuple[datetime, Decimal]]] = field(default_factory=dict)
    realised: dict[UUID, list[tuple[datetime, Decimal]]] = field(default_factory=dict)


@dataclass(slots=True)
class Report:
    """The report's rows, in agent order, and the chart's data."""

    results: list[AgentResult]
    users: dict[UUID, UUID]  # agent -> user
    curves: Curves


async def read_report(conn: asyncpg.Connection, filters: Filters) -> Report:
    """Read everything the report needs; run it inside one read-only transaction."""
    ids = list(filters.agent_ids) if filters.agent_ids is not None else None
    agents = await conn.fetch(SELECT_AGENTS, ids, filters.user_id, SOL_MINT)
    agent_ids = [a["id"] for a in agents]
    statuses: dict[UUID, dict[str, int]] = defaultdict(dict)
    for r in await conn.fetch(SELECT_EXECUTIONS, agent_ids, filters.since, filters.until):
        statuses[r["agent_id"]][r["status"]] = r["n"]
    closes: dict[UUID, list[Close]] = defaultdict(list)
    curves = Curves()
    for r in await conn.fetch(SELECT_CLOSES, agent_ids, filters.since, SOL_MINT, filters.until):
        closes[r["agent_id"]].append(
            Close(r["profit_loss_sol"], r["invested"], r["held_s"], r["sale_time"])
        )
        points = curves.realised.setdefault(r["agent_id"], [])
        if not points:  # from 0 at the first trade's entry
            points.append((min(r["purchase_time"], r["sale_time"]), Decimal(0)))
        before = points[-1][1]
        points.append((r["sale_time"], before + r["profit_loss_sol"]))
    holdings: dict[UUID, list[Holding]] = defaultdict(list)
    for r in await conn.fetch(SELECT_OPEN, agent_ids):
        holdings[r["agent_id"]].append(
            Holding(
                r["token_address"],
                r["remaining"],
                r["total_invested_sol"],
                r["take_profit_proceeds_sol"],
            )
        )
    tokens = sorted({h.token_address for hs in holdings.values() for h in hs} | {SOL_MINT})
    usd = {r["token_address"]: r["price_usd"] for r in await conn.fetch(SELECT_PRICES, tokens)}
    prices_sol = prices_in_sol(usd, SOL_MINT)
    for r in await conn.fetch(SELECT_SNAPSHOTS, agent_ids, filters.since):
        curves.balances.setdefault(r["agent_id"], []).append(
            (r["snapshot_timestamp"], r["portfolio_balance_sol"])
        )
    starting = await starting_sol(conn, agents, filters.since)
    results = [
        summarize(
            a["id"],
            a["name"],
            executions=statuses.get(a["id"], {}),
            closes=closes.get(a["id"], []),
            holdings=holdings.get(a["id"], []),
            prices_sol=prices_sol,
            balance_sol=a["balance"],
            starting_sol=starting.get(a["id"], Decimal(0)),
        )
        for a in agents
    ]
    return Report(results, {a["id"]: a["user_id"] for a in agents}, curves)


async def starting_sol(
    conn: asyncpg.Connection, agents: Sequence[asyncpg.Record], since: datetime | None
) -> dict[UUID, Decimal]:
    """Each agent's SOL just before its first trade of the report's period (from `since`
    on), as `replay` counts a start (`SELECT_SOL_AT`: deposits and withdrawals until then
    count, trades from then on do not): the base of the equity curve of
    `worker.domain.performance`. 0 without a wallet or a trade."""
    wallets = [a["wallet_address"] for a in agents if a["wallet_address"] is not None]
    firsts = await conn.fetch(SELECT_FIRST_TRADES, wallets, since)
    rows = await conn.fetch(
        SELECT_SOL_AT, SOL_MINT, [r["wallet_address"] for r in firsts], [r["at"] for r in firsts]
    )
    sol = {r["wallet_address"]: r["sol"] for r in rows}
    return {a["id"]: sol.get(a["wallet_address"], Decimal(0)) for a in agents}
