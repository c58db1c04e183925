"""`signal-worker check`: verify the ledger invariants; exit 1 listing every violation."""

from __future__ import annotations

import argparse

from worker.db.ledger import find_violations
from worker.db.pool import connect_migrated
from worker.settings import Settings


async def run(settings: Settings, args: argparse.Namespace) -> int:
    """Print each violation with the ids involved; a one-line summary; 1 if any."""
    del args
    conn = await connect_migrated(settings.db, timeout_s=settings.startup_timeout_s)
    try:
        # One snapshot for every query, so a running worker cannot make a false alarm.
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            violations = await find_violations(conn)
    finally:
        await conn.close()
    for v in violations:
        print(f"invariant {v.invariant}: {v.message}")
    if violations:
        print(f"check: {len(violations)} violation(s) of the ledger invariants")
        return 1
    print("check: all ledger invariants hold")
    return 0
