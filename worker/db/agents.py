"""Agents and what a signal's fan-out needs to know about them and their wallets."""

from __future__ import annotations

from uuid import UUID

import asyncpg
import orjson

from worker.domain.models import SOL_MINT, Subscriber

USER_EXISTS = "SELECT EXISTS (SELECT 1 FROM users WHERE id = $1)"


async def user_exists(conn: asyncpg.Connection, user_id: UUID) -> bool:
    """True when a `users` row with this id exists."""
    return bool(await conn.fetchval(USER_EXISTS, user_id))


# The wallet is the one of the agent's current trading mode; positions are counted per wallet.
# trading_config is read as text and decoded here as the pool's json codec would, so the
# result is the same with or without that codec (and a JSON string stays unambiguous).
FETCH_SUBSCRIBERS = """
SELECT a.id                                AS agent_id,
       a.trading_mode                      AS trading_mode,
       a.automated_trading_simulation      AS automated_trading_simulation,
       a.automated_trading_live            AS automated_trading_live,
       a.trading_config::text              AS trading_config,
       w.wallet_address                    AS wallet_address,
       b.balance                           AS sol_balance,
       COALESCE(p.open_positions, 0)::int  AS open_positions,
       COALESCE(p.holds_token, false)      AS holds_token
FROM agents a
LEFT JOIN agent_wallets w
       ON w.agent_id = a.id AND w.wallet_type = a.trading_mode
LEFT JOIN agent_balances b
       ON b.wallet_address = w.wallet_address AND b.token_address = $2
LEFT JOIN LATERAL (
       SELECT count(*)                     AS open_positions,
              bool_or(ap.token_address = $3) AS holds_token
       FROM agent_positions ap
       WHERE ap.agent_id = a.id AND ap.wallet_address = w.wallet_address
) p ON true
WHERE a.user_id = $1
ORDER BY a.id
"""


async def fetch_subscribers(
    conn: asyncpg.Connection, user_id: UUID, token_address: str
) -> list[Subscriber]:
    """Every agent of `user_id`, by agent id, with its mode's wallet, SOL balance and positions."""
    rows = await conn.fetch(FETCH_SUBSCRIBERS, user_id, SOL_MINT, token_address)
    return [
        Subscriber(
            agent_id=row["agent_id"],
            trading_mode=row["trading_mode"],
            automated_trading_simulation=row["automated_trading_simulation"],
            automated_trading_live=row["automated_trading_live"],
            trading_config=_parse_config(row["trading_config"]),
            wallet_address=row["wallet_address"],
            sol_balance=row["sol_balance"],
            open_positions=row["open_positions"],
            holds_token=row["holds_token"],
        )
        for row in rows
    ]


def _parse_config(raw: str | None) -> object:
    """The stored JSON as the pool's orjson codec decodes it; None for SQL NULL."""
    return None if raw is None else orjson.loads(raw)
