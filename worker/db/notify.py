"""`signal-worker notify`'s progress per webhook (schema 0014): the next offset per
partition, and the events posted by event_id (the dedupe window)."""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

import asyncpg

SELECT_OFFSETS = """
SELECT partition, next_offset FROM notify_offsets WHERE webhook_id = $1 AND topic = $2
"""
UPSERT_OFFSET = """
INSERT INTO notify_offsets (webhook_id, topic, partition, next_offset)
VALUES ($1, $2, $3, $4)
ON CONFLICT (webhook_id, topic, partition)
DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = now()
"""
IS_POSTED = "SELECT true FROM notify_posted WHERE webhook_id = $1 AND event_id = $2"
INSERT_POSTED = """
INSERT INTO notify_posted (webhook_id, event_id, topic, partition, kafka_offset, outcome, reason)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (webhook_id, event_id) DO NOTHING
"""
PRUNE_POSTED = """
DELETE FROM notify_posted
 WHERE webhook_id = $1 AND topic = $2 AND partition = $3 AND kafka_offset < $4
"""
SELECT_NAMES = """
SELECT (SELECT name FROM agents WHERE id = $1) AS agent,
       (SELECT idempotency_key FROM trading_signals WHERE id = $2) AS signal_key
"""


@dataclass(frozen=True, slots=True)
class Posted:
    """An event done with at (topic, partition, offset): posted, or refused with a reason."""

    event_id: UUID
    topic: str
    partition: int
    offset: int
    outcome: str  # 'posted' | 'refused'
    reason: str | None = None


async def stored_offsets(conn: asyncpg.Connection, webhook_id: str, topic: str) -> dict[int, int]:
    """The next offset to read per partition of `topic` for the webhook (none: never read)."""
    rows = await conn.fetch(SELECT_OFFSETS, webhook_id, topic)
    return {int(r["partition"]): int(r["next_offset"]) for r in rows}


async def store_offset(
    conn: asyncpg.Connection, webhook_id: str, topic: str, partition: int, next_offset: int
) -> None:
    """Set the next offset of one partition (no event posted: filtered or duplicate ones)."""
    await conn.execute(UPSERT_OFFSET, webhook_id, topic, partition, next_offset)


async def is_posted(conn: asyncpg.Connection, webhook_id: str, event_id: UUID) -> bool:
    """Whether the event was posted (or refused) to the webhook already."""
    return bool(await conn.fetchval(IS_POSTED, webhook_id, event_id))


async def record_posted(
    conn: asyncpg.Connection, webhook_id: str, posted: Posted, *, keep_offsets: int
) -> None:
    """In one transaction: the event done with, the offset past it, and the dedupe window
    of its partition pruned to the last `keep_offsets` offsets."""
    async with conn.transaction():
        await conn.execute(
            INSERT_POSTED,
            webhook_id,
            posted.event_id,
            posted.topic,
            posted.partition,
            posted.offset,
            posted.outcome,
            posted.reason,
        )
        await conn.execute(
            UPSERT_OFFSET, webhook_id, posted.topic, posted.partition, posted.offset + 1
        )
        await conn.execute(
            PRUNE_POSTED, webhook_id, posted.topic, posted.partition, posted.offset - keep_offsets
        )


async def names(
    conn: asyncpg.Connection, agent_id: UUID | None, signal_id: int | None
) -> tuple[str | None, str | None]:
    """The agent's current name and the signal's idempotency key (None where unknown)."""
    row = await conn.fetchrow(SELECT_NAMES, agent_id, signal_id)
    if row is None:
        return None, None
    return row["agent"], row["signal_key"]
