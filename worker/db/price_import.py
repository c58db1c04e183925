"""`prices import`: ticks from a file into the price history (`token_price_history`).

One transaction per file (`import_ticks` in chunks, inside the caller's transaction), under
an advisory lock so that two imports run one after the other. A tick whose token and
`price_ts` the history already holds (recorded by the worker, imported before, or an
earlier line of the same file) is not added again: at the same price it is counted as
already there, at another price it is a conflict (the caller refuses its line). Imported
rows have no `event_at` (their `price_ts` is their decision time, as for rows of another
writer); `token_prices`, the live price the worker trades on, is left alone. `recorded_span` says
which times of a token the worker recorded itself (the caller refuses imports there). A day that
has no partition yet (one before the worker ran) goes to the default partition, which
holds any day (schema 0005); the upkeep moves a day's rows out of it only for the days it
makes partitions for (today and ahead).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal

import asyncpg

from worker.db.bulk import Bulk, Column

IMPORT_LOCK = "SELECT pg_advisory_xact_lock(hashtext('signal_worker_prices_import'))"
# The worker's own record of a token: its rows have a decision time (schema 0007); rows
# imported, or from before that schema, have none.
RECORDED_SPAN = """
SELECT min(price_ts) AS first, max(price_ts) AS last FROM token_price_history
 WHERE token_address = $1 AND event_at IS NOT NULL
"""
HISTORY_CLOCK = "SELECT now() AS now, (now() AT TIME ZONE 'UTC')::date AS today"


@dataclass(frozen=True, slots=True)
class ImportTick:
    """One tick of a file: `n` its place in the chunk (unique), `line` its line."""

    n: int
    token_address: str
    price_usd: Decimal
    ts: datetime
    line: int


IMPORTED: Bulk[ImportTick] = Bulk(
    "t",
    [
        Column("n", "int4", "n"),
        Column("token", "varchar", "token_address"),
        Column("price", "numeric", "price_usd"),
        Column("ts", "timestamptz", "ts"),
    ],
)
# The ticks of one chunk (no two with the same token and ts: the caller keeps the first);
# those the history holds already are returned with the price it holds, the rest added.
# Every CTE sees the history as it was before the statement: `there` is not fooled by
# `added`.
IMPORT_TICKS = IMPORTED.sql("""
WITH t AS (SELECT * FROM {rows}),
there AS (
    SELECT t.n, h.price_usd
      FROM t
     CROSS JOIN LATERAL (SELECT h.price_usd FROM token_price_history h
                          WHERE h.token_address = t.token AND h.price_ts = t.ts
                          ORDER BY h.price_usd LIMIT 1) h),
added AS (
    INSERT INTO token_price_history (token_address, price_usd, price_ts)
    SELECT t.token, t.price, t.ts FROM t WHERE t.n NOT IN (SELECT n FROM there))
SELECT n, price_usd FROM there
""")


async def history_clock(conn: asyncpg.Connection) -> tuple[datetime, date]:
    """The database's clock and its UTC date (the upkeep's clock, which its retention
    counts days by)."""
    row = await conn.fetchrow(HISTORY_CLOCK)
    assert row is not None  # noqa: S101 - a SELECT without FROM returns one row
    return row["now"], row["today"]


async def lock_imports(conn: asyncpg.Connection) -> None:
    """Wait for any other import to finish; held until the transaction ends."""
    await conn.execute(IMPORT_LOCK)


async def recorded_span(conn: asyncpg.Connection, token: str) -> tuple[datetime, datetime] | None:
    """The first and last tick of `token` the worker recorded itself (None: none)."""
    row = await conn.fetchrow(RECORDED_SPAN, token)
    if row is None or row["first"] is None:
        return None
    return row["first"], row["last"]


async def import_ticks(conn: asyncpg.Connection, ticks: Sequence[ImportTick]) -> dict[int, Decimal]:
    """Add the ticks the history does not hold (by token and `price_ts`); the others, by
    `n`, with the price the history holds."""
    if not ticks:
        return {}
    rows = await conn.fetch(IMPORT_TICKS, *IMPORTED.args(ticks))
    return {r["n"]: r["price_usd"] for r in rows}
