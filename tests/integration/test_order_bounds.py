"""Where each partition stands in the one order, shared between workers (`order_bounds`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from worker.db.bounds import publish_bounds, read_bounds, read_promises, store_promises
from worker.db.offsets import set_offset
from worker.metrics import Metrics
from worker.pipeline.failures import Retrier, StopRequested
from worker.pipeline.order_writes import OrderWrites, Published
from worker.pipeline.telemetry import Troubles
from worker.settings import Settings

AT = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


async def test_bounds_round_trip_whole_keys_and_unknowns(db_conn: asyncpg.Connection) -> None:
    await publish_bounds(
        db_conn,
        "g",
        {
            ("prices", 0): (AT, 1, "So11", 0, 17),
            ("signals", 2): (AT, 2),
            ("signals", 3): None,
        },
    )
    bounds, excluded = await read_bounds(db_conn, "g")
    assert bounds == {
        ("prices", 0): (AT, 1, "So11", 0, 17),
        ("signals", 2): (AT, 2),
        ("signals", 3): None,
    }
    assert excluded == set()
    assert await read_bounds(db_conn, "other group") == ({}, set())


async def test_a_partition_is_left_out_only_while_its_owner_says_so(
    db_conn: asyncpg.Connection,
) -> None:
    await publish_bounds(db_conn, "g", {("prices", 1): None}, {("prices", 1): True})
    assert await read_bounds(db_conn, "g") == ({}, {("prices", 1)})
    # Its owner died long ago: the row now means "unknown" (everything waits for the next).
    await db_conn.execute("UPDATE order_bounds SET updated_at = now() - interval '1 minute'")
    assert await read_bounds(db_conn, "g") == ({("prices", 1): None}, set())


async def test_setting_an_offset_by_hand_forgets_the_partitions_place(
    db_conn: asyncpg.Connection,
) -> None:
    await publish_bounds(db_conn, "g", {("signals", 0): (AT, 2), ("signals", 1): (AT, 2)})
    await set_offset(db_conn, "g", "signals", 0, 0)
    bounds, _ = await read_bounds(db_conn, "g")
    assert bounds == {("signals", 1): (AT, 2)}


# ------------------------------------------------------------ worker.pipeline.order_writes


@pytest.fixture
async def pool(db_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on the test's database whose row locks give up after 200 ms."""
    async with asyncpg.create_pool(
        db_url, min_size=1, max_size=2, server_settings={"lock_timeout": "200ms"}
    ) as made:
        yield made


def _writes(pool: asyncpg.Pool, interrupt: asyncio.Event) -> OrderWrites:
    settings = Settings(retry_backoff_max_s=0.05)
    return OrderWrites(pool, "g", Retrier(settings, interrupt, Troubles(Metrics())))


async def test_order_writes_are_stored_when_durable_returns(
    pool: asyncpg.Pool, db_conn: asyncpg.Connection
) -> None:
    writes = _writes(pool, asyncio.Event())
    later = AT + timedelta(seconds=1)
    writes.write({("prices", 0): (AT, 5)}, None)
    writes.write({("prices", 0): (later, 9), ("signals", 1): (AT, 3)}, None)
    writes.write({("prices", 0): (AT, 5)}, None)  # an older promise never moves one back
    await writes.durable()
    assert await read_promises(db_conn, "g", ["prices", "signals"]) == {
        ("prices", 0): (later, 9),
        ("signals", 1): (AT, 3),
    }
    assert writes.pending == 0


async def test_a_promise_whose_write_failed_goes_with_the_next_write(
    pool: asyncpg.Pool, db_conn: asyncpg.Connection
) -> None:
    """A rebalance cuts the retries of a write short (its row is locked: the server's
    trouble): the transaction waiting for it stores nothing (`durable` raises), and the
    promise is stored by the next write, even one that brings nothing new."""
    await store_promises(db_conn, "g", {("prices", 0): (AT, 1)})
    interrupt = asyncio.Event()
    interrupt.set()
    writes = _writes(pool, interrupt)
    later = AT + timedelta(seconds=1)
    async with db_conn.transaction():
        await db_conn.execute("SELECT 1 FROM order_bounds FOR UPDATE")
        writes.write({("prices", 0): (later, 7)}, None)
        with pytest.raises(StopRequested):
            await writes.durable()
    assert writes.pending == 1
    assert await read_promises(db_conn, "g", ["prices"]) == {("prices", 0): (AT, 1)}
    interrupt.clear()
    # The next transaction's `durable` starts the write again (no new promise needed).
    await writes.durable()
    assert await read_promises(db_conn, "g", ["prices"]) == {("prices", 0): (later, 7)}
    assert writes.pending == 0


async def test_writes_handed_over_while_one_waits_go_as_one(
    pool: asyncpg.Pool, db_conn: asyncpg.Connection
) -> None:
    """A slow server never piles writes up: one runs, one waits and takes all the rest."""
    await store_promises(db_conn, "g", {("prices", 0): (AT, 1)})
    writes = _writes(pool, asyncio.Event())
    before = len(asyncio.all_tasks())
    async with db_conn.transaction():
        await db_conn.execute("SELECT 1 FROM order_bounds FOR UPDATE")
        for i in range(1, 51):
            writes.write({("prices", 0): (AT + timedelta(seconds=i), i)}, None)
            await asyncio.sleep(0)
        assert len(asyncio.all_tasks()) - before <= 2
    await writes.durable()
    assert await read_promises(db_conn, "g", ["prices"]) == {
        ("prices", 0): (AT + timedelta(seconds=50), 50)
    }


async def test_a_revocation_forgets_what_was_not_stored(
    pool: asyncpg.Pool, db_conn: asyncpg.Connection
) -> None:
    """After a revocation nothing of this worker's unstored places is written later (the
    partitions may belong to another worker by then)."""
    await store_promises(db_conn, "g", {("prices", 0): (AT, 1)})
    interrupt = asyncio.Event()
    interrupt.set()
    writes = _writes(pool, interrupt)
    async with db_conn.transaction():
        await db_conn.execute("SELECT 1 FROM order_bounds FOR UPDATE")
        writes.write({("prices", 0): (AT + timedelta(seconds=1), 7)}, None)
        await writes.forget()
    interrupt.clear()
    assert writes.pending == 0
    await writes.durable()
    assert await read_promises(db_conn, "g", ["prices"]) == {("prices", 0): (AT, 1)}


async def test_bounds_are_published_in_the_background_and_said_once_written(
    pool: asyncpg.Pool, db_conn: asyncpg.Connection
) -> None:
    writes = _writes(pool, asyncio.Event())
    written: list[bool] = []
    writes.write({}, Published({("signals", 2): (AT, 2)}, {}, lambda: written.append(True)))
    await writes.durable()
    assert written == [True]
    assert await read_bounds(db_conn, "g") == ({("signals", 2): (AT, 2)}, set())
