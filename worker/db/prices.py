"""The latest USD price per token (`token_prices`), fed by price ticks."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
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
    ],
)
RECORD_TICKS = TICKS.sql("""
INSERT INTO token_price_history (token_address, price_usd, price_ts)
SELECT t.token, t.price, t.ts FROM {rows}
""")
PRICE_HISTORY_UPKEEP = "SELECT signal_worker_price_history_upkeep($1)"


async def price_history_upkeep(conn: asyncpg.Connection, keep_days: int) -> None:
    """Create the coming days' price-history partitions; drop those older than `keep_days`."""
    await conn.execute(PRICE_HISTORY_UPKEEP, keep_days)


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
