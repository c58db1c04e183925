"""Where each partition stands in the one order, shared between the workers of a group
(`order_bounds`, schema 0010; `worker.pipeline.timeline`)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from worker.db.bulk import Bulk, Column

# A partition's bound: (decision time, rank, *tie-break); None: unknown.
Bound = tuple[Any, ...] | None

BOUNDS: Bulk[tuple[str, int, datetime | None, int, str, bool]] = Bulk(
    "b",
    [
        Column("t", "text", lambda r: r[0]),
        Column("p", "int", lambda r: r[1]),
        Column("a", "timestamptz", lambda r: r[2]),
        Column("r", "int", lambda r: r[3]),
        Column("k", "text", lambda r: r[4]),
        Column("x", "bool", lambda r: r[5]),
    ],
    scalars=["group"],
)
PUBLISH = BOUNDS.sql("""
INSERT INTO order_bounds
       (consumer_group, topic, partition, bound_at, bound_rank, bound_tie, excluded, updated_at)
SELECT {group}, b.t, b.p, b.a, b.r, b.k::jsonb, b.x, now() FROM {rows} ORDER BY b.t, b.p
ON CONFLICT (consumer_group, topic, partition) DO UPDATE
   SET bound_at = EXCLUDED.bound_at, bound_rank = EXCLUDED.bound_rank,
       bound_tie = EXCLUDED.bound_tie, excluded = EXCLUDED.excluded, updated_at = now()
""")
# A partition is left out of the order only while its owner keeps saying so: a worker that
# died with a partition blocked leaves a row that soon means "unknown" instead (everything
# waits for the partition's next owner to say where it stands).
EXCLUDED_FRESH_S = 60
READ = """
SELECT topic, partition, bound_at, bound_rank, bound_tie::text AS tie,
       excluded AND updated_at > now() - interval '60 seconds' AS excluded,
       excluded AS was_excluded
  FROM order_bounds WHERE consumer_group = $1
"""


async def publish_bounds(
    conn: asyncpg.Connection,
    group: str,
    bounds: Mapping[tuple[str, int], Bound],
    excluded: Mapping[tuple[str, int], bool] | None = None,
) -> None:
    """Write the bound of each (topic, partition), and whether nothing waits for it."""
    skip = excluded or {}
    rows = []
    for (topic, partition), bound in sorted(bounds.items()):
        if bound is None:
            rows.append((topic, partition, None, 0, "[]", skip.get((topic, partition), False)))
            continue
        at, rank, *tie = bound
        text = orjson.dumps(tie).decode()
        rows.append((topic, partition, at, rank, text, skip.get((topic, partition), False)))
    await conn.execute(PUBLISH, *BOUNDS.args(rows, group=group))


async def read_bounds(
    conn: asyncpg.Connection, group: str
) -> tuple[dict[tuple[str, int], Bound], set[tuple[str, int]]]:
    """(the bound of every partition the group has written one for, those nothing waits
    for)."""
    bounds: dict[tuple[str, int], Bound] = {}
    excluded: set[tuple[str, int]] = set()
    for r in await conn.fetch(READ, group):
        where = (r["topic"], r["partition"])
        if r["excluded"]:
            excluded.add(where)
            continue
        at = r["bound_at"]
        if r["was_excluded"]:
            bounds[where] = None  # its owner stopped saying so: wait for the next one
            continue
        bounds[where] = None if at is None else (at, r["bound_rank"], *orjson.loads(r["tie"]))
    return bounds, excluded


PROMISES: Bulk[tuple[str, int, datetime, int]] = Bulk(
    "p",
    [
        Column("t", "text", lambda r: r[0]),
        Column("p", "int", lambda r: r[1]),
        Column("a", "timestamptz", lambda r: r[2]),
        Column("o", "bigint", lambda r: r[3]),
    ],
    scalars=["group"],
)
# A promise only ever moves forward (a late write of an older one changes nothing).
STORE_PROMISES = PROMISES.sql("""
INSERT INTO order_bounds (consumer_group, topic, partition, promised_at, promised_from)
SELECT {group}, p.t, p.p, p.a, p.o FROM {rows} ORDER BY p.t, p.p
ON CONFLICT (consumer_group, topic, partition) DO UPDATE
   SET promised_at = EXCLUDED.promised_at, promised_from = EXCLUDED.promised_from
 WHERE order_bounds.promised_at IS NULL OR order_bounds.promised_at < EXCLUDED.promised_at
""")
READ_PROMISES = """
SELECT topic, partition, promised_at, promised_from FROM order_bounds
 WHERE consumer_group = $1 AND topic = ANY($2::text[]) AND promised_at IS NOT NULL
"""


async def store_promises(
    conn: asyncpg.Connection, group: str, promises: Mapping[tuple[str, int], tuple[datetime, int]]
) -> None:
    """Store each (topic, partition)'s promise: nothing from that offset on is decided
    before that time (`worker.pipeline.timeline`)."""
    rows = [(t, p, at, offset) for (t, p), (at, offset) in sorted(promises.items())]
    await conn.execute(STORE_PROMISES, *PROMISES.args(rows, group=group))


async def read_promises(
    conn: asyncpg.Connection, group: str, topics: list[str]
) -> dict[tuple[str, int], tuple[datetime, int]]:
    """The stored promise of each (topic, partition) of `topics` that has one."""
    return {
        (r["topic"], r["partition"]): (r["promised_at"], r["promised_from"])
        for r in await conn.fetch(READ_PROMISES, group, topics)
    }
