"""`signal-worker snapshot`: write this UTC hour's balance snapshots now."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

from worker.db.pool import connect_migrated
from worker.db.snapshots import hour_of, snapshot_all
from worker.settings import Settings


async def run(settings: Settings, args: argparse.Namespace) -> int:
    """Upsert one snapshot per (agent, wallet) for the current UTC hour; print the count."""
    del args
    hour = hour_of(datetime.now(UTC))
    conn = await connect_migrated(settings.db, timeout_s=settings.startup_timeout_s)
    try:
        done = await snapshot_all(conn, hour)
    finally:
        await conn.close()
    for u in done.skipped:
        print(f"snapshot: left out {u.subject}: {u.reason}")
    print(f"snapshot: {done.written} wallet snapshot(s) for {hour.isoformat()}")
    return 0
