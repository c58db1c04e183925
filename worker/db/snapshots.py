"""Hourly balance snapshots (`agent_balance_snapshots`, domain.md section 8), one statement.

One row per (agent, wallet, UTC hour), upserted, so several workers (or the command and a
worker) snapshotting the same hour write one row, the last one winning.

Positions are valued at the latest token price in SOL (token USD / SOL USD from
`token_prices`), else at their purchase price, as the source does. Unrealized P/L is value
minus cost, where cost is, as in the source, `total_invested_sol - take-profit proceeds +
realized_profit_sol` once take profit has sold, else the held share of the invested SOL.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from worker.domain.columns import COLUMNS
from worker.domain.models import SOL_MINT
from worker.domain.storable import Unstorable, snapshot_misfit

UPSERT_SNAPSHOTS = """
WITH sol AS (
    SELECT price_usd FROM token_prices WHERE token_address = $2
), valued AS (
    SELECT p.agent_id, p.wallet_address,
           coalesce(p.remaining_amount, p.purchase_amount) AS held,
           coalesce(tp.price_usd / nullif((SELECT price_usd FROM sol), 0), p.purchase_price)
               AS price,
           CASE WHEN p.take_profit_levels_hit > 0
                THEN p.total_invested_sol - p.take_profit_proceeds_sol + p.realized_profit_sol
                ELSE coalesce(p.remaining_amount, p.purchase_amount)
                     / nullif(p.purchase_amount, 0) * p.total_invested_sol
           END AS cost
      FROM agent_positions p
      LEFT JOIN token_prices tp ON tp.token_address = p.token_address
), per_wallet AS (
    SELECT agent_id, wallet_address, sum(held * price) AS value, sum(held * price - cost) AS pnl
      FROM valued GROUP BY agent_id, wallet_address
), computed AS (
    -- Unconstrained numeric: nothing overflows before the row is written.
    SELECT w.agent_id, w.wallet_address,
           round(coalesce(b.balance, 0) + coalesce(v.value, 0), 8) AS portfolio,
           round(coalesce(b.balance, 0), 8) AS sol,
           round(coalesce(v.value, 0), 8) AS positions,
           round(coalesce(v.pnl, 0), 8) AS pnl
      FROM agent_wallets w
      LEFT JOIN agent_balances b ON b.wallet_address = w.wallet_address AND b.token_address = $2
      LEFT JOIN per_wallet v ON v.agent_id = w.agent_id AND v.wallet_address = w.wallet_address
), fitting AS (
    -- $3..$6: the magnitudes the four columns refuse (`worker.domain.columns`).
    SELECT *, abs(portfolio) < $3 AND abs(sol) < $4 AND abs(positions) < $5 AND abs(pnl) < $6
              AS fits
      FROM computed
), written AS (
    INSERT INTO agent_balance_snapshots (
        agent_id, wallet_address, snapshot_timestamp, portfolio_balance_sol, sol_balance,
        positions_value_sol, unrealized_pnl_sol, created_at, updated_at)
    SELECT agent_id, wallet_address, $1, portfolio, sol, positions, pnl, now(), now()
      FROM fitting WHERE fits
    ON CONFLICT (agent_id, wallet_address, snapshot_timestamp) DO UPDATE
       SET portfolio_balance_sol = EXCLUDED.portfolio_balance_sol,
           sol_balance = EXCLUDED.sol_balance,
           positions_value_sol = EXCLUDED.positions_value_sol,
           unrealized_pnl_sol = EXCLUDED.unrealized_pnl_sol,
           updated_at = now()
    RETURNING 1
)
SELECT NULL::uuid AS agent_id, NULL::varchar AS wallet_address, NULL::numeric AS portfolio,
       NULL::numeric AS sol, NULL::numeric AS positions, NULL::numeric AS pnl,
       (SELECT count(*) FROM written) AS written
UNION ALL
SELECT agent_id, wallet_address, portfolio, sol, positions, pnl, NULL
  FROM fitting WHERE NOT fits
"""


# The snapshot's numeric columns, in the order of the statement's limits ($3..$6).
SNAPSHOT_VALUES = (
    "portfolio_balance_sol",
    "sol_balance",
    "positions_value_sol",
    "unrealized_pnl_sol",
)


@dataclass(frozen=True, slots=True)
class Snapshots:
    """What `snapshot_all` did: the wallets written, and those left out (a value of theirs
    that numeric(20,8) cannot hold, such as a position valued at 10^12 SOL or more)."""

    written: int
    skipped: list[Unstorable]


def hour_of(moment: datetime) -> datetime:
    """The UTC hour `moment` falls in (tz-aware)."""
    return moment.replace(minute=0, second=0, microsecond=0)


async def snapshot_all(conn: asyncpg.Connection, hour: datetime) -> Snapshots:
    """Upsert the snapshot of every agent wallet for `hour` (a UTC hour) whose values fit
    their columns, in one statement; a wallet whose values do not is left out, with the
    reason, and the others are written."""
    columns = COLUMNS["agent_balance_snapshots"]
    limits = [columns[name].limit for name in SNAPSHOT_VALUES]
    rows = await conn.fetch(UPSERT_SNAPSHOTS, hour, SOL_MINT, *limits)
    written = 0
    skipped = []
    for r in rows:
        if r["agent_id"] is None:
            written = int(r["written"])
            continue
        values = (r["portfolio"], r["sol"], r["positions"], r["pnl"])
        reason = snapshot_misfit(*values) or f"a value of {values} does not fit numeric(20,8)"
        skipped.append(Unstorable("snapshot", f"{r['agent_id']}/{r['wallet_address']}", reason))
    return Snapshots(written, skipped)
