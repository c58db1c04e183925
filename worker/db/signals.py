"""Trading signals and their per-agent executions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from uuid import UUID

import asyncpg

from worker.domain.models import ExecutionStatus, Signal
from worker.errors import DomainError

INSERT_SIGNALS = """
INSERT INTO trading_signals (
    user_id, token_address, symbol, signal_type, activation_reason, signal_strength, source,
    idempotency_key, price_usd, market_cap_usd, liquidity_usd, holder_count, created_at,
    payload_digest, source_record
)
SELECT * FROM unnest($1::uuid[], $2::varchar[], $3::varchar[], $4::varchar[], $5::text[],
                     $6::int[], $7::varchar[], $8::varchar[], $9::numeric[], $10::numeric[],
                     $11::numeric[], $12::int[], $13::timestamptz[], $14::bytea[], $15::text[])
ON CONFLICT (user_id, idempotency_key) DO NOTHING
RETURNING id, user_id, idempotency_key, payload_digest, source_record
"""
SELECT_SIGNAL_IDS = """
SELECT s.id, s.user_id, s.idempotency_key, s.payload_digest, s.source_record
  FROM trading_signals s
  JOIN unnest($1::uuid[], $2::varchar[]) AS k(user_id, idempotency_key)
    ON s.user_id = k.user_id AND s.idempotency_key = k.idempotency_key
"""


@dataclass(frozen=True, slots=True)
class StoredSignal:
    """A signal as stored: its id, whether this call stored it, and the payload digest and
    Kafka record of the message that stored it first."""

    id: int
    is_new: bool
    digest: bytes | None = None
    record: str | None = None


async def insert_signals(conn: asyncpg.Connection, signals: Sequence[Signal]) -> list[StoredSignal]:
    """Store each signal once per (user, idempotency key); how each stands, in order.

    Two signals of `signals` with one key get the same id; only the first counts as new.
    """
    if not signals:
        return []
    rows = {
        (row["user_id"], row["idempotency_key"]): row
        for row in await conn.fetch(
            INSERT_SIGNALS,
            [s.user_id for s in signals],
            [s.token_address for s in signals],
            [s.symbol for s in signals],
            [s.signal_type for s in signals],
            [s.activation_reason for s in signals],
            [s.signal_strength for s in signals],
            [s.source for s in signals],
            [s.idempotency_key for s in signals],
            [s.price_usd for s in signals],
            [s.market_cap_usd for s in signals],
            [s.liquidity_usd for s in signals],
            [s.holder_count for s in signals],
            [s.created_at for s in signals],
            [s.digest for s in signals],
            [s.record for s in signals],
        )
    }
    inserted = {int(row["id"]) for row in rows.values()}
    stored_before = [s for s in signals if (s.user_id, s.idempotency_key) not in rows]
    if stored_before:
        # Their rows are committed (ON CONFLICT waited for their transaction), so a new
        # statement sees them. New signals only (the usual case): no second statement.
        rows.update(
            {
                (row["user_id"], row["idempotency_key"]): row
                for row in await conn.fetch(
                    SELECT_SIGNAL_IDS,
                    [s.user_id for s in stored_before],
                    [s.idempotency_key for s in stored_before],
                )
            }
        )
    result: list[StoredSignal] = []
    seen: set[int] = set()
    for s in signals:
        row = rows.get((s.user_id, s.idempotency_key))
        if row is None:  # pragma: no cover - only if the row was deleted in between
            msg = f"signal {s.idempotency_key!r} of user {s.user_id} vanished on insert"
            raise DomainError(msg)
        signal_id = int(row["id"])
        is_new = signal_id in inserted and signal_id not in seen
        result.append(StoredSignal(signal_id, is_new, row["payload_digest"], row["source_record"]))
        seen.add(signal_id)
    return result


async def insert_signal(conn: asyncpg.Connection, signal: Signal) -> tuple[int, bool]:
    """Store `signal` once per (user, idempotency key); return (its id, whether it is new)."""
    [result] = await insert_signals(conn, [signal])
    return result.id, result.is_new


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


SELECT_EXECUTED_AGENTS = """
SELECT signal_id, agent_id FROM signal_executions WHERE signal_id = ANY($1::int[])
"""


async def executions_of(
    conn: asyncpg.Connection, signal_ids: Sequence[int]
) -> dict[int, set[UUID]]:
    """For each signal, the agents that already have an execution row (absent: none)."""
    done: dict[int, set[UUID]] = {}
    for row in await conn.fetch(SELECT_EXECUTED_AGENTS, list(signal_ids)):
        done.setdefault(row["signal_id"], set()).add(row["agent_id"])
    return done


async def existing_executions(conn: asyncpg.Connection, signal_id: int) -> set[UUID]:
    """The agents that already have an execution row for `signal_id`."""
    return (await executions_of(conn, [signal_id])).get(signal_id, set())


LOCK_SIGNALS = """
SELECT id FROM trading_signals WHERE id = ANY($1::int[]) ORDER BY id FOR UPDATE
"""


async def lock_signals(conn: asyncpg.Connection, signal_ids: Sequence[int]) -> None:
    """Lock signal rows, in id order: a redelivered signal is processed by one worker at a time."""
    await conn.execute(LOCK_SIGNALS, sorted(set(signal_ids)))
