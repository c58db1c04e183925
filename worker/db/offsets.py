"""Kafka offsets kept in PostgreSQL, written in the same transaction as the rows they produced."""

from __future__ import annotations

from operator import itemgetter

import asyncpg

from worker.db.bulk import Bulk, Column

OFFSETS: Bulk[tuple[str, int, int]] = Bulk(
    "x",
    [
        Column("t", "text", itemgetter(0)),
        Column("p", "int", itemgetter(1)),
        Column("o", "bigint", itemgetter(2)),
    ],
    scalars=["group"],
)
STORE_OFFSETS = OFFSETS.sql("""
INSERT INTO consumer_offsets (consumer_group, topic, partition, next_offset, updated_at)
SELECT {group}, x.t, x.p, x.o, now()
  FROM {rows}
 ORDER BY x.t, x.p
ON CONFLICT (consumer_group, topic, partition) DO UPDATE
   SET next_offset = GREATEST(consumer_offsets.next_offset, EXCLUDED.next_offset),
       updated_at = now()
""")


async def store_offsets(
    conn: asyncpg.Connection, group: str, offsets: list[tuple[str, int, int]]
) -> None:
    """Record each (topic, partition, next offset): the first record not yet processed;
    never moves backwards. One statement for all."""
    await conn.execute(STORE_OFFSETS, *OFFSETS.args(offsets, group=group))


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
