"""The price history's partition upkeep on a real database (issue 20, item 7): it never
waits in front of the pipeline, makes partitions a week ahead, and makes a day's partition
even when ticks of that day already sit in the default partition."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import asyncpg
import pytest

from tests.helpers.books import TOKEN_A, TOKEN_B
from tests.helpers.db import connected
from worker.db.prices import UPKEEP_DAYS_AHEAD, PriceQueries, partition_name, price_history_upkeep
from worker.domain.records import PriceWrite

pytestmark = pytest.mark.integration


async def _today(conn: asyncpg.Connection) -> date:
    today: date = await conn.fetchval("SELECT (now() AT TIME ZONE 'UTC')::date")
    return today


async def _partitions(conn: asyncpg.Connection) -> set[str]:
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'token_price_history'::regclass"
    )
    return {r["relname"] for r in rows}


@asynccontextmanager
async def _reader(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A session in an open transaction that has read the history (a `pg_dump`, an
    analyst): ACCESS SHARE on it and on each of its partitions until it ends."""
    async with connected(db_url) as conn, conn.transaction():
        await conn.fetchval("SELECT count(*) FROM token_price_history")
        yield conn


async def _waiting(conn: asyncpg.Connection, pid: int) -> None:
    """Until session `pid` waits for a lock."""
    query = "SELECT count(*) FROM pg_locks WHERE pid = $1 AND NOT granted"
    while True:
        if await conn.fetchval(query, pid):
            return
        await asyncio.sleep(0.02)


async def test_the_upkeep_never_queues_a_tick_insert_behind_a_long_reader(
    db_url: str, db_conn: asyncpg.Connection
) -> None:
    today = await _today(db_conn)
    tomorrow = partition_name(today + timedelta(days=1))
    await db_conn.execute(f"DROP TABLE {tomorrow}")  # a partition the upkeep has to make
    upkeeper = await asyncpg.connect(db_url)
    inserter = await asyncpg.connect(db_url)
    try:
        async with _reader(db_url) as reader:
            # An upkeep allowed to wait long, so that it is seen waiting for its lock...
            upkeep = asyncio.create_task(price_history_upkeep(upkeeper, 30, lock_timeout="60s"))
            await _waiting(db_conn, upkeeper.get_server_pid())
            # ...while a tick is recorded, as the pipeline records it: it is not queued
            # behind the upkeep's request (which waits on the reader).
            tick = PriceWrite(TOKEN_A, Decimal(1), datetime.now(UTC))
            async with inserter.transaction():
                await asyncio.wait_for(PriceQueries(inserter).record_ticks([tick]), 20)
            assert reader.is_in_transaction()  # the insert finished while the reader read
            assert not upkeep.done()
        done = await asyncio.wait_for(upkeep, 20)  # the reader gone, it goes on
        assert done.postponed is None
        assert tomorrow in done.created
        # With its own short lock timeout, it gives up behind a reader, and is not
        # waited for; it makes what it could not once the reader is gone.
        await db_conn.execute(f"DROP TABLE {tomorrow}")
        async with _reader(db_url):
            gave_up = await asyncio.wait_for(price_history_upkeep(upkeeper, 30), 20)
            assert gave_up.postponed is not None
            assert "not granted within 250ms" in gave_up.postponed
            assert tomorrow not in await _partitions(db_conn)
        again = await price_history_upkeep(upkeeper, 30)
        assert (again.postponed, again.created) == (None, [tomorrow])
    finally:
        await upkeeper.close()
        await inserter.close()
    assert await db_conn.fetchval("SELECT count(*) FROM token_price_history") == 1


async def test_a_days_ticks_in_the_default_partition_are_moved_into_its_new_partition(
    db_conn: asyncpg.Connection,
) -> None:
    today = await _today(db_conn)
    day = today + timedelta(days=2)
    # Missing already when the test database's template was migrated before midnight.
    await db_conn.execute(f"DROP TABLE IF EXISTS {partition_name(day)}")
    noon = datetime(day.year, day.month, day.day, 12, tzinfo=UTC)
    far = noon + timedelta(days=400)  # beyond any partition made
    decided = noon + timedelta(seconds=1)  # a tick decided after its ts (bumped or late)
    await PriceQueries(db_conn).record_ticks([
        PriceWrite(TOKEN_A, Decimal(1), noon, decided),
        PriceWrite(TOKEN_B, Decimal(2), noon + timedelta(hours=11, minutes=59)),
        PriceWrite(TOKEN_A, Decimal(3), far),
    ])  # fmt: skip
    where = "SELECT tableoid::regclass::text FROM token_price_history ORDER BY price_ts"
    assert [r[0] for r in await db_conn.fetch(where)] == ["token_price_history_default"] * 3
    done = await price_history_upkeep(db_conn, 30)
    assert done.postponed is None
    assert partition_name(day) in done.created
    assert done.moved == 2
    assert [r[0] for r in await db_conn.fetch(where)] == [
        partition_name(day), partition_name(day), "token_price_history_default",
    ]  # fmt: skip
    # Every column moves with its row: a replay decides the tick when the worker did.
    moved = await db_conn.fetchval(
        "SELECT event_at FROM token_price_history WHERE price_ts = $1", noon
    )
    assert moved == decided
    # A week ahead, whatever the days already made.
    ahead = {partition_name(today + timedelta(days=n)) for n in range(UPKEEP_DAYS_AHEAD + 1)}
    assert ahead <= await _partitions(db_conn)
    assert await db_conn.fetchval("SELECT count(*) FROM token_price_history") == 3
