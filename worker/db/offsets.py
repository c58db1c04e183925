"""Kafka offsets kept in PostgreSQL, written in the same transaction as the rows they produced."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from operator import itemgetter

import asyncpg

from worker.db.bulk import Bulk, Column

OFFSETS: Bulk[tuple[str, int, int, str | None, datetime | None]] = Bulk(
    "x",
    [
        Column("t", "text", itemgetter(0)),
        Column("p", "int", itemgetter(1)),
        Column("o", "bigint", itemgetter(2)),
        Column("i", "text", itemgetter(3)),
        Column("e", "timestamptz", itemgetter(4)),
    ],
    scalars=["group"],
)
# The topic id is only ever filled in: a partition whose stored id differs from the topic's
# is not consumed (`worker.pipeline.offset_checks`), so nothing stores over it but `offsets reset`.
# The decision time goes with the offset it belongs to (an offset that does not move keeps its
# own).
STORE_OFFSETS = OFFSETS.sql("""
INSERT INTO consumer_offsets
       (consumer_group, topic, partition, next_offset, topic_id, event_at, updated_at)
SELECT {group}, x.t, x.p, x.o, x.i, x.e, now()
  FROM {rows}
 ORDER BY x.t, x.p
ON CONFLICT (consumer_group, topic, partition) DO UPDATE
   SET next_offset = GREATEST(consumer_offsets.next_offset, EXCLUDED.next_offset),
       topic_id = COALESCE(consumer_offsets.topic_id, EXCLUDED.topic_id),
       event_at = CASE WHEN EXCLUDED.next_offset > consumer_offsets.next_offset
                       THEN COALESCE(EXCLUDED.event_at, consumer_offsets.event_at)
                       ELSE consumer_offsets.event_at END,
       updated_at = now()
""")


async def store_offsets(
    conn: asyncpg.Connection,
    group: str,
    offsets: list[tuple[str, int, int]],
    topic_ids: Mapping[str, str | None] | None = None,
    event_ats: Mapping[tuple[str, int], datetime] | None = None,
) -> None:
    """Record each (topic, partition, next offset): the first record not yet processed;
    never moves backwards. With `topic_ids` (by topic name), the id of the topic the
    offset belongs to where none is stored yet; with `event_ats` (by topic and partition),
    the decision time of the record before the offset. One statement for all."""
    ids = topic_ids or {}
    ats = event_ats or {}
    rows = [(t, p, o, ids.get(t), ats.get((t, p))) for t, p, o in offsets]
    await conn.execute(STORE_OFFSETS, *OFFSETS.args(rows, group=group))


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


@dataclass(frozen=True, slots=True)
class StoredOffset:
    """A partition's stored next offset and the id of the topic it belongs to (None when
    unknown: stored before the ids were kept, or a broker that gives none)."""

    next_offset: int
    topic_id: str | None
    event_at: datetime | None = None  # the decision time of the record before the offset


FETCH_STORED = """
SELECT topic, partition, next_offset, topic_id, event_at FROM consumer_offsets
 WHERE consumer_group = $1 AND topic = ANY($2::text[])
"""


async def fetch_stored(
    conn: asyncpg.Connection, group: str, topics: list[str]
) -> dict[tuple[str, int], StoredOffset]:
    """Stored next offsets of `group` with their topic ids, by (topic, partition)."""
    rows = await conn.fetch(FETCH_STORED, group, topics)
    return {
        (r["topic"], r["partition"]): StoredOffset(r["next_offset"], r["topic_id"], r["event_at"])
        for r in rows
    }


SET_OFFSET = """
INSERT INTO consumer_offsets (consumer_group, topic, partition, next_offset, topic_id, updated_at)
VALUES ($1, $2, $3, $4, $5, now())
ON CONFLICT (consumer_group, topic, partition) DO UPDATE
   SET next_offset = EXCLUDED.next_offset,
       event_at = NULL,
       topic_id = COALESCE(EXCLUDED.topic_id, consumer_offsets.topic_id),
       updated_at = now()
"""


async def set_offset(
    conn: asyncpg.Connection,
    group: str,
    topic: str,
    partition: int,
    next_offset: int,
    topic_id: str | None = None,
) -> None:
    """Set the stored offset to exactly `next_offset`, backwards too (the reset command);
    with `topic_id`, it now belongs to that topic (a recreated topic accepted)."""
    await conn.execute(SET_OFFSET, group, topic, partition, next_offset, topic_id)
    # Where the partition stood in the order, and what it promised, no longer hold
    # (`worker.db.bounds`).
    await conn.execute(
        "DELETE FROM order_bounds WHERE consumer_group = $1 AND topic = $2 AND partition = $3",
        group,
        topic,
        partition,
    )
