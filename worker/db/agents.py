"""Agents and what a signal's fan-out needs to know about them and their wallets."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from uuid import UUID

import asyncpg

from worker.db.base import OnConnection
from worker.domain.config_reading import DEFAULT_MAX_CONFIG_BYTES, OversizedConfig, StoredConfigText
from worker.domain.models import SOL_MINT
from worker.domain.records import AgentRow

EXISTING_USERS = "SELECT id FROM users WHERE id = ANY($1::uuid[])"


def config_columns(cap: str) -> str:
    """The select list's `trading_config` (the JSON text, NULL beyond `cap` bytes) and
    `config_bytes` (its size): the database never sends an oversized config, so no stored
    row can take the worker's memory; `stored_config` turns the pair into the text or an
    `OversizedConfig`."""
    return (
        f"CASE WHEN octet_length(a.trading_config::text) <= {cap} "
        "THEN a.trading_config::text END AS trading_config, "
        "octet_length(a.trading_config::text) AS config_bytes"
    )


def stored_config(row: asyncpg.Record, max_bytes: int) -> StoredConfigText:
    """The config of a row selected with `config_columns`: its text, None (NULL), or an
    `OversizedConfig` naming its size."""
    text: str | None = row["trading_config"]
    size: int | None = row["config_bytes"]
    if text is None and size is not None:
        return OversizedConfig(size, max_bytes)
    return text


# The wallet is the one of the agent's current trading mode; positions are counted per wallet.
# trading_config is read as text: the worker decodes it itself (`worker.domain.config`), so
# no stored value can fail the read of every agent of the user; and only up to $4 bytes.
FETCH_AGENTS = f"""
SELECT a.user_id                           AS user_id,
       a.id                                AS agent_id,
       a.trading_mode                      AS trading_mode,
       a.automated_trading_simulation      AS automated_trading_simulation,
       a.automated_trading_live            AS automated_trading_live,
       {config_columns("$4")},
       w.wallet_address                    AS wallet_address,
       b.balance                           AS sol_balance,
       COALESCE(p.open_positions, 0)::int  AS open_positions,
       p.held_tokens                       AS held_tokens,
       a.created_at                        AS created_at
FROM agents a
LEFT JOIN agent_wallets w
       ON w.agent_id = a.id AND w.wallet_type = a.trading_mode
LEFT JOIN agent_balances b
       ON b.wallet_address = w.wallet_address AND b.token_address = $2
LEFT JOIN LATERAL (
       SELECT count(*) AS open_positions,
              array_agg(ap.token_address) FILTER (WHERE ap.token_address = ANY($3::varchar[]))
                  AS held_tokens
       FROM agent_positions ap
       WHERE ap.agent_id = a.id AND ap.wallet_address = w.wallet_address
) p ON true
WHERE a.user_id = ANY($1::uuid[])
ORDER BY a.user_id, a.id
"""  # noqa: S608 - constant SQL pieces; values travel as parameters


AGENT_COUNTS = """
SELECT user_id, count(*) AS agents FROM agents WHERE user_id = ANY($1::uuid[]) GROUP BY user_id
"""


SELECT_AGENT_CONFIGS = f"""
SELECT a.id, a.xmin::text AS version, {config_columns("$2")}
  FROM agents a WHERE a.id = ANY($1::uuid[])
"""  # noqa: S608 - constant SQL pieces; values travel as parameters


SELECT_ALL_CONFIGS = f"""
SELECT a.id, a.user_id, a.name, {config_columns("$1")}
  FROM agents a ORDER BY a.user_id, a.id
"""  # noqa: S608 - constant SQL pieces; values travel as parameters


@dataclass(frozen=True, slots=True)
class StoredConfig:
    """One agent's stored `trading_config` as JSON text (None: NULL; `OversizedConfig`:
    beyond the cap, not read)."""

    agent_id: UUID
    user_id: UUID
    name: str
    text: StoredConfigText


class AgentQueries(OnConnection):
    """Users, agents and their stored configs."""

    __slots__ = ()

    async def existing_users(self, user_ids: Sequence[UUID]) -> set[UUID]:
        """The ids among `user_ids` that have a `users` row."""
        return {row["id"] for row in await self.conn.fetch(EXISTING_USERS, list(set(user_ids)))}

    async def fetch_agents(
        self,
        user_ids: Sequence[UUID],
        tokens: Sequence[str],
        max_config_bytes: int = DEFAULT_MAX_CONFIG_BYTES,
    ) -> dict[UUID, list[AgentRow]]:
        """Every agent of each user, by agent id, with holdings among `tokens`, its creation
        time and its config (an `OversizedConfig` beyond `max_config_bytes`); one query."""
        rows = await self.conn.fetch(
            FETCH_AGENTS, list(set(user_ids)), SOL_MINT, list(set(tokens)), max_config_bytes
        )
        agents: dict[UUID, list[AgentRow]] = {}
        for row in rows:
            agents.setdefault(row["user_id"], []).append(
                AgentRow(
                    user_id=row["user_id"],
                    agent_id=row["agent_id"],
                    trading_mode=row["trading_mode"],
                    automated_trading_simulation=row["automated_trading_simulation"],
                    automated_trading_live=row["automated_trading_live"],
                    trading_config_text=stored_config(row, max_config_bytes),
                    wallet_address=row["wallet_address"],
                    sol_balance=row["sol_balance"],
                    open_positions=row["open_positions"],
                    held_tokens=frozenset(row["held_tokens"] or ()),
                    created_at=row["created_at"],
                )
            )
        return agents

    async def agent_configs(
        self, agent_ids: Sequence[UUID], max_config_bytes: int = DEFAULT_MAX_CONFIG_BYTES
    ) -> dict[UUID, tuple[str, StoredConfigText]]:
        """Each agent's row version (`xmin`) and `trading_config` as JSON text (None: NULL;
        an `OversizedConfig` beyond `max_config_bytes`)."""
        rows = await self.conn.fetch(SELECT_AGENT_CONFIGS, list(set(agent_ids)), max_config_bytes)
        return {r["id"]: (r["version"], stored_config(r, max_config_bytes)) for r in rows}

    async def agent_counts(self, user_ids: Sequence[UUID]) -> dict[UUID, int]:
        """How many agents each user has (users without agents are absent)."""
        rows = await self.conn.fetch(AGENT_COUNTS, list(set(user_ids)))
        return {row["user_id"]: row["agents"] for row in rows}

    async def stored_configs(
        self, max_config_bytes: int = DEFAULT_MAX_CONFIG_BYTES
    ) -> AsyncIterator[StoredConfig]:
        """Every agent's stored config (an `OversizedConfig` beyond `max_config_bytes`),
        streamed (a cursor: any number of agents); run it inside a transaction."""
        async for r in self.conn.cursor(SELECT_ALL_CONFIGS, max_config_bytes, prefetch=500):
            yield StoredConfig(r["id"], r["user_id"], r["name"], stored_config(r, max_config_bytes))
