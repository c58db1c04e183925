"""Kafka offsets kept in PostgreSQL, written in the same transaction as the rows they produced."""

from __future__ import annotations

import asyncpg

STORE_OFFSETS = """
INSERT INTO consumer_offsets (consumer_group, topic, partition, next_offset, updated_at)
SELECT $1, t, p, o, now()
  FROM unnest($2::text[], $3::int[], $4::bigint[]) AS x(t, p, o)
 ORDER BY t, p
ON CONFLICT (consumer_group, topic, partition) DO UPDATE
   SET next_offset = GREATEST(consumer_offsets.next_offset, EXCLUDED.next_offset),
       updated_at = now()
"""


async def store_offsets(
    conn: asyncpg.Connection, group: str, offsets: list[tuple[str, int, int]]
) -> None:
    """Record each (topic, partition, next offset): the first record not yet processed;
    never moves backwards. One statement for all."""
    topics, partitions, next_offsets = zip(*offsets, strict=True)
    await conn.execute(STORE_OFFSETS, group, list(topics), list(partitions), list(next_offsets))


FETCH_OFFSETS = """
SELECT topic, partition, next_offset FROM consumer_offsets
 WHERE consumer_group = $1 AND topic = ANY($2::text[])
"""


async def fetch_offsets(
    conn: asyncpg.Connection, group: str, topics: list[str]
) -> dict[tuple[str, int], int]:
    """Stored next offsets of `group` by (topic, partition)."""
    rows = await conn.fetch(FETCH_OFFSETS, group, topics)
    return {(r["topic"], r["partition"]): r["next_offset"] for r in rows}


SET_OFFSET = """
INSERT INTO consumer_offsets (consumer_group, topic, partition, next_offset, updated_at)
VALUES ($1, $2, $3, $4, now())
ON CONFLICT (consumer_group, topic, partition) DO UPDATE
   SET next_offset = EXCLUDED.next_offset, updated_at = now()
"""


async def set_offset(
    conn: asyncpg.Connection, group: str, topic: str, partition: int, next_offset: int
) -> None:
    """Set the stored offset to exactly `next_offset`, backwards too (the reset command)."""
    await conn.execute(SET_OFFSET, group, topic, partition, next_offset)
