"""The latest USD price per token (`token_prices`), fed by price ticks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import asyncpg

from worker.db.base import OnConnection
from worker.db.bulk import Bulk, Column
from worker.domain.records import PriceWrite

FETCH_PRICES = """
SELECT token_address, price_usd FROM token_prices WHERE token_address = ANY($1::varchar[])
"""
LATEST_PRICES = """
SELECT token_address, price_usd, price_ts FROM token_prices
 WHERE token_address = ANY($1::varchar[])
"""
PRICES: Bulk[PriceWrite] = Bulk(
    "t",
    [
        Column("token", "varchar", "token_address"),
        Column("price", "numeric", "price_usd"),
        Column("ts", "timestamptz", "ts"),
    ],
)
# In token order (the order every writer of these rows takes them in); a row already at
# least as new is left alone, and is not returned.
UPSERT_PRICES = PRICES.sql("""
INSERT INTO token_prices (token_address, price_usd, price_ts, updated_at)
SELECT t.token, t.price, t.ts, now() FROM {rows} ORDER BY t.token
ON CONFLICT (token_address) DO UPDATE
   SET price_usd = EXCLUDED.price_usd, price_ts = EXCLUDED.price_ts, updated_at = now()
 WHERE token_prices.price_ts < EXCLUDED.price_ts
RETURNING token_address
""")


TICKS: Bulk[PriceWrite] = Bulk(
    "t",
    [
        Column("token", "varchar", "token_address"),
        Column("price", "numeric", "price_usd"),
        Column("ts", "timestamptz", "ts"),
        Column("at", "timestamptz", "at"),
    ],
)
# `event_at`: the tick's decision time, which `replay` decides it at (schema 0007).
RECORD_TICKS = TICKS.sql("""
INSERT INTO token_price_history (token_address, price_usd, price_ts, event_at)
SELECT t.token, t.price, t.ts, t.at FROM {rows}
""")
# --- the price history's partitions --------------------------------------------------
#
# The upkeep runs each step in its own short transaction with a short lock timeout, so its
# DDL never waits in front of the pipeline: behind a long reader of the history (a
# `pg_dump`, an analyst) a lock request would queue every tick insert behind it. A step
# that cannot get its lock in time is given up (`Upkeep.postponed`) and the caller tries
# again later. A day's partition is made as a table of its own, filled with that day's
# ticks already in the default partition (moved, in the same transaction), then attached:
# ATTACH takes SHARE UPDATE EXCLUSIVE on the history (tick inserts and readers go on) and
# ACCESS EXCLUSIVE only on the default partition; `CREATE TABLE ... PARTITION OF` would
# need ACCESS EXCLUSIVE on the history, and PostgreSQL refuses it while the default
# partition holds rows of that day. Dropping an old day takes ACCESS EXCLUSIVE on the
# history, under the same short timeout.
#
# (`signal_worker_price_history_upkeep()` of schema 0005 still exists and is run once by
# that migration; the worker no longer calls it.)

UPKEEP_DAYS_AHEAD = 7  # days of partitions made ahead of today (UTC)
UPKEEP_LOCK_TIMEOUT = "250ms"  # the longest any step waits for a lock
UPKEEP_TODAY = "SELECT (now() AT TIME ZONE 'UTC')::date"
SET_LOCK_TIMEOUT = "SELECT set_config('lock_timeout', $1, true)"
TRY_UPKEEP_LOCK = "SELECT pg_try_advisory_xact_lock(hashtext('signal_worker_price_history_upkeep'))"
DAY_PARTITIONS = """
SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
 WHERE i.inhparent = 'token_price_history'::regclass
   AND c.relname ~ '^token_price_history_p[0-9]{8}$'
"""
# The statements of one day's partition, built by the server (identifiers and literals
# quoted by format()): $1 the table's name, [$2, $3) the day.
DAY_PARTITION_DDL = """
SELECT format('CREATE TABLE %I (LIKE token_price_history INCLUDING DEFAULTS)', $1::text),
       format('WITH moved AS (DELETE FROM token_price_history_default'
              ' WHERE price_ts >= %L AND price_ts < %L'
              ' RETURNING token_address, price_usd, price_ts, recorded_at, event_at)'
              ' INSERT INTO %I (token_address, price_usd, price_ts, recorded_at, event_at)'
              ' SELECT token_address, price_usd, price_ts, recorded_at, event_at FROM moved',
              $2::timestamptz, $3::timestamptz, $1::text),
       format('ALTER TABLE token_price_history ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
              $1::text, $2::timestamptz, $3::timestamptz)
"""
DROP_PARTITION_DDL = "SELECT format('DROP TABLE %I', $1::text)"
TRIM_DEFAULT_PARTITION = "DELETE FROM token_price_history_default WHERE price_ts < $1"


@dataclass
class Upkeep:
    """What one upkeep did: partitions made (with the ticks moved into them from the
    default partition) and dropped; `postponed` says why it stopped early (a lock not
    granted within `UPKEEP_LOCK_TIMEOUT`, or another worker's upkeep running)."""

    created: list[str] = field(default_factory=list)
    moved: int = 0
    dropped: list[str] = field(default_factory=list)
    trimmed: int = 0
    postponed: str | None = None


def partition_name(day: date) -> str:
    """The name of `day`'s partition of token_price_history."""
    return "token_price_history_p" + day.strftime("%Y%m%d")


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


async def price_history_upkeep(
    conn: asyncpg.Connection,
    keep_days: int,
    *,
    days_ahead: int = UPKEEP_DAYS_AHEAD,
    lock_timeout: str = UPKEEP_LOCK_TIMEOUT,
) -> Upkeep:
    """Make the partitions of today (UTC, by the database's clock) and the next
    `days_ahead` days, drop those older than `keep_days`, trim the default partition by
    the same age; each step a short transaction that waits at most `lock_timeout` for a
    lock. Stops at the first step it cannot do now (`Upkeep.postponed`): call it again
    later. Other errors are raised."""
    done = Upkeep()
    today: date = await conn.fetchval(UPKEEP_TODAY)
    existing = {r["relname"] for r in await conn.fetch(DAY_PARTITIONS)}
    steps: list[tuple[str, date | None]] = [
        (partition_name(d), d)
        for d in (today + timedelta(days=n) for n in range(days_ahead + 1))
        if partition_name(d) not in existing
    ]
    cutoff = today - timedelta(days=keep_days)
    steps += [(name, None) for name in sorted(existing) if name < partition_name(cutoff)]
    try:
        for name, day in steps:
            async with conn.transaction():
                if not await _step_locks(conn, lock_timeout):
                    done.postponed = "another upkeep is running"
                    return done
                if day is not None:
                    done.moved += await _make_partition(conn, name, day)
                    done.created.append(name)
                else:
                    await conn.execute(await conn.fetchval(DROP_PARTITION_DDL, name))
                    done.dropped.append(name)
        async with conn.transaction():
            await conn.execute(SET_LOCK_TIMEOUT, lock_timeout)
            status = await conn.execute(TRIM_DEFAULT_PARTITION, _midnight(cutoff))
            done.trimmed = int(status.split()[-1])
    except asyncpg.LockNotAvailableError:
        done.postponed = f"a lock on token_price_history not granted within {lock_timeout}"
    return done


async def _step_locks(conn: asyncpg.Connection, lock_timeout: str) -> bool:
    await conn.execute(SET_LOCK_TIMEOUT, lock_timeout)
    return bool(await conn.fetchval(TRY_UPKEEP_LOCK))


async def _make_partition(conn: asyncpg.Connection, name: str, day: date) -> int:
    """Create, fill from the default partition and attach `day`'s partition; the number
    of ticks moved."""
    [(create, move, attach)] = await conn.fetch(
        DAY_PARTITION_DDL, name, _midnight(day), _midnight(day + timedelta(days=1))
    )
    await conn.execute(create)
    moved = await conn.execute(move)
    await conn.execute(attach)
    return int(moved.split()[-1])


class PriceQueries(OnConnection):
    """The latest USD price per token."""

    __slots__ = ()

    async def fetch_prices(self, tokens: list[str]) -> dict[str, Decimal]:
        """Latest USD price of each token that has one."""
        rows = await self.conn.fetch(FETCH_PRICES, tokens)
        return {r["token_address"]: r["price_usd"] for r in rows}

    async def latest_prices(self, tokens: Sequence[str]) -> dict[str, tuple[Decimal, datetime]]:
        """The stored (USD price, observed at) of each token that has one."""
        rows = await self.conn.fetch(LATEST_PRICES, list(tokens))
        return {r["token_address"]: (r["price_usd"], r["price_ts"]) for r in rows}

    async def record_ticks(self, ticks: Sequence[PriceWrite]) -> None:
        """Append ticks to the price history (`token_price_history`)."""
        if ticks:
            await self.conn.execute(RECORD_TICKS, *TICKS.args(ticks))

    async def upsert_prices(self, prices: Sequence[PriceWrite]) -> set[str]:
        """Store each price (one per token) unless one at least as new is stored; the
        tokens whose price was stored."""
        if not prices:
            return set()
        rows = await self.conn.fetch(UPSERT_PRICES, *PRICES.args(prices))
        return {r["token_address"] for r in rows}


# The tokens of open positions (a position row is open until its full exit), each priced at
# its latest price's time, or at the position's opening when it has none.
HELD_PRICE_AGE = """
SELECT coalesce(max(extract(epoch FROM now() - coalesce(tp.price_ts, p.created_at))), 0)::float8
  FROM agent_positions p
  LEFT JOIN token_prices tp ON tp.token_address = p.token_address
"""


async def held_price_age_s(conn: asyncpg.Connection) -> float:
    """Seconds since the oldest latest price of a token held in an open position (0: none)."""
    age = await conn.fetchval(HELD_PRICE_AGE)
    return max(0.0, float(age))
