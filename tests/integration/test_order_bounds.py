"""Where each partition stands in the one order, shared between workers (`order_bounds`)."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg

from worker.db.bounds import publish_bounds, read_bounds
from worker.db.offsets import set_offset

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
