"""The latest USD price per token (`token_prices`), fed by price ticks."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from worker.db.base import OnConnection

FETCH_PRICES = """
SELECT token_address, price_usd FROM token_prices WHERE token_address = ANY($1::varchar[])
"""


UPSERT_PRICE = """
INSERT INTO token_prices (token_address, price_usd, price_ts, updated_at)
VALUES ($1, $2, $3, now())
ON CONFLICT (token_address) DO UPDATE
   SET price_usd = EXCLUDED.price_usd, price_ts = EXCLUDED.price_ts, updated_at = now()
 WHERE token_prices.price_ts < EXCLUDED.price_ts
RETURNING token_address
"""


class PriceQueries(OnConnection):
    """The latest USD price per token."""

    __slots__ = ()

    async def fetch_prices(self, tokens: list[str]) -> dict[str, Decimal]:
        """Latest USD price of each token that has one."""
        rows = await self.conn.fetch(FETCH_PRICES, tokens)
        return {r["token_address"]: r["price_usd"] for r in rows}

    async def upsert_price(self, token: str, price_usd: Decimal, ts: datetime) -> bool:
        """Store the tick unless a tick at least as new is stored; True when it was stored."""
        return await self.conn.fetchval(UPSERT_PRICE, token, price_usd, ts) is not None
