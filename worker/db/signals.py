"""Trading signals and their per-agent executions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from uuid import UUID

import asyncpg

from worker.domain.models import ExecutionStatus, Signal
from worker.errors import DomainError

INSERT_SIGNAL = """
INSERT INTO trading_signals (
    user_id, token_address, symbol, signal_type, activation_reason, signal_strength, source,
    idempotency_key, price_usd, market_cap_usd, liquidity_usd, holder_count, created_at
)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
ON CONFLICT (user_id, idempotency_key) DO NOTHING
RETURNING id
"""
SELECT_SIGNAL_ID = "SELECT id FROM trading_signals WHERE user_id = $1 AND idempotency_key = $2"


async def insert_signal(conn: asyncpg.Connection, signal: Signal) -> tuple[int, bool]:
    """Store `signal` once per (user, idempotency key); return (its id, whether it is new)."""
    signal_id = await conn.fetchval(
        INSERT_SIGNAL,
        signal.user_id,
        signal.token_address,
        signal.symbol,
        signal.signal_type,
        signal.activation_reason,
        signal.signal_strength,
        signal.source,
        signal.idempotency_key,
        signal.price_usd,
        signal.market_cap_usd,
        signal.liquidity_usd,
        signal.holder_count,
        signal.created_at,
    )
    if signal_id is not None:
        return int(signal_id), True
    # A duplicate: the row is committed (ON CONFLICT waited for its transaction), so a new
    # statement sees it.
    existing = await conn.fetchval(SELECT_SIGNAL_ID, signal.user_id, signal.idempotency_key)
    if existing is None:  # pragma: no cover - only if the row was deleted in between
        msg = f"signal {signal.idempotency_key!r} of user {signal.user_id} vanished on insert"
        raise DomainError(msg)
    return int(existing), False


@dataclass(frozen=True, slots=True)
class ExecutionRow:
    """One `signal_executions` row to write: the outcome of one signal for one agent."""

    signal_id: int
    agent_id: UUID
    status: ExecutionStatus
    transaction_id: UUID | None
    error: str | None


INSERT_EXECUTIONS = """
INSERT INTO signal_executions (signal_id, agent_id, status, transaction_id, error)
SELECT * FROM unnest($1::int[], $2::uuid[], $3::text[], $4::uuid[], $5::text[])
ON CONFLICT (signal_id, agent_id) DO NOTHING
"""


async def insert_executions(conn: asyncpg.Connection, rows: Sequence[ExecutionRow]) -> int:
    """Write `rows` in one statement, skipping (signal, agent) pairs already written; count new."""
    if not rows:
        return 0
    status = await conn.execute(
        INSERT_EXECUTIONS,
        [r.signal_id for r in rows],
        [r.agent_id for r in rows],
        [r.status.value for r in rows],
        [r.transaction_id for r in rows],
        [r.error for r in rows],
    )
    # The command tag is "INSERT 0 <rows inserted>".
    return int(status.rsplit(" ", 1)[1])


SELECT_EXECUTED_AGENTS = "SELECT agent_id FROM signal_executions WHERE signal_id = $1"


async def existing_executions(conn: asyncpg.Connection, signal_id: int) -> set[UUID]:
    """The agents that already have an execution row for `signal_id`."""
    return {row["agent_id"] for row in await conn.fetch(SELECT_EXECUTED_AGENTS, signal_id)}


LOCK_SIGNAL = "SELECT id FROM trading_signals WHERE id = $1 FOR UPDATE"


async def lock_signal(conn: asyncpg.Connection, signal_id: int) -> None:
    """Lock the signal row: whoever processes a redelivered signal does it one at a time."""
    await conn.execute(LOCK_SIGNAL, signal_id)
