"""Redrives of dead letters (`dlq_redrives`, schema 0012): one row per original record.

A redrive is claimed (`claim`: a 'pending' row, committed) before its record is sent, and
marked 'sent' (`mark_sent`) once the broker has acknowledged it; see `worker.commands.dlq`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

SELECT_REDRIVES = """
SELECT r.original_topic, r.original_partition, r.original_offset, r.status, r.forced,
       r.sent_to, r.created_at, r.sent_at
  FROM dlq_redrives r
  JOIN unnest($1::text[], $2::int[], $3::bigint[]) AS w(t, p, o)
    ON r.original_topic = w.t AND r.original_partition = w.p AND r.original_offset = w.o
"""
INSERT_PENDING = """
INSERT INTO dlq_redrives (original_topic, original_partition, original_offset,
                          dlq_topic, dlq_partition, dlq_offset, reason, status, forced)
VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', $8)
ON CONFLICT (original_topic, original_partition, original_offset) DO NOTHING
RETURNING true
"""
RECLAIM_PENDING = """
UPDATE dlq_redrives
   SET dlq_topic = $4, dlq_partition = $5, dlq_offset = $6, reason = $7, forced = true,
       created_at = now()
 WHERE original_topic = $1 AND original_partition = $2 AND original_offset = $3
   AND status = 'pending'
RETURNING true
"""
MARK_SENT = """
UPDATE dlq_redrives
   SET status = 'sent', sent_to = $4, sent_at = now()
 WHERE original_topic = $1 AND original_partition = $2 AND original_offset = $3
   AND status = 'pending'
RETURNING sent_at
"""

Original = tuple[str, int, int]
"""A dead-lettered record's coordinates: (topic, partition, offset)."""


@dataclass(frozen=True, slots=True)
class Redrive:
    """What `dlq_redrives` holds for one original record."""

    status: str  # 'pending' or 'sent'
    forced: bool
    sent_to: str | None
    created_at: datetime
    sent_at: datetime | None


async def fetch_redrives(
    conn: asyncpg.Connection, originals: Sequence[Original]
) -> dict[Original, Redrive]:
    """The redrive rows of `originals` (those without one are left out); one query."""
    rows = await conn.fetch(
        SELECT_REDRIVES,
        [o[0] for o in originals],
        [o[1] for o in originals],
        [o[2] for o in originals],
    )
    return {
        (r["original_topic"], r["original_partition"], r["original_offset"]): Redrive(
            r["status"], r["forced"], r["sent_to"], r["created_at"], r["sent_at"]
        )
        for r in rows
    }


async def claim(
    conn: asyncpg.Connection,
    original: Original,
    dlq: Original,
    reason: str,
    *,
    forced: bool,
    reclaim_pending: bool,
) -> bool:
    """Insert a 'pending' row for `original` (from the dead letter at `dlq`), or with
    `reclaim_pending` take over a 'pending' one; False when a row already stands in the way
    (a 'sent' one always). One statement: it commits on its own unless the caller opened a
    transaction."""
    args = (*original, *dlq, reason)
    if await conn.fetchval(INSERT_PENDING, *args, forced):
        return True
    if reclaim_pending:
        return bool(await conn.fetchval(RECLAIM_PENDING, *args))
    return False


async def mark_sent(conn: asyncpg.Connection, original: Original, sent_to: str) -> datetime | None:
    """Mark the pending redrive of `original` sent to `sent_to` (`topic:partition:offset`);
    its time, or None when no pending row was there."""
    at: datetime | None = await conn.fetchval(MARK_SENT, *original, sent_to)
    return at
