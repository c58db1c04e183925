"""Agents and what a signal's fan-out needs to know about them and their wallets."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from uuid import UUID

from worker.db.base import OnConnection
from worker.domain.models import SOL_MINT
from worker.domain.records import AgentRow

EXISTING_USERS = "SELECT id FROM users WHERE id = ANY($1::uuid[])"


# The wallet is the one of the agent's current trading mode; positions are counted per wallet.
# trading_config is read as text: the worker decodes it itself (`worker.domain.config`), so
# no stored value can fail the read of every agent of the user.
FETCH_AGENTS = """
SELECT a.user_id                           AS user_id,
       a.id                                AS agent_id,
       a.trading_mode                      AS trading_mode,
       a.automated_trading_simulation      AS automated_trading_simulation,
       a.automated_trading_live            AS automated_trading_live,
       a.trading_config::text              AS trading_config,
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
"""


AGENT_COUNTS = """
SELECT user_id, count(*) AS agents FROM agents WHERE user_id = ANY($1::uuid[]) GROUP BY user_id
"""


SELECT_AGENT_CONFIGS = """
SELECT id, xmin::text AS version, trading_config::text AS config
  FROM agents WHERE id = ANY($1::uuid[])
"""


SELECT_ALL_CONFIGS = """
SELECT id, user_id, name, trading_config::text AS config FROM agents ORDER BY user_id, id
"""


@dataclass(frozen=True, slots=True)
class StoredConfig:
    """One agent's stored `trading_config` as JSON text (None: NULL)."""

    agent_id: UUID
    user_id: UUID
    name: str
    text: str | None


class AgentQueries(OnConnection):
    """Users, agents and their stored configs."""

    __slots__ = ()

    async def existing_users(self, user_ids: Sequence[UUID]) -> set[UUID]:
        """The ids among `user_ids` that have a `users` row."""
        return {row["id"] for row in await self.conn.fetch(EXISTING_USERS, list(set(user_ids)))}

    async def fetch_agents(
        self, user_ids: Sequence[UUID], tokens: Sequence[str]
    ) -> dict[UUID, list[AgentRow]]:
        """Every agent of each user, by agent id, with holdings among `tokens` and its
        creation time; one query."""
        rows = await self.conn.fetch(FETCH_AGENTS, list(set(user_ids)), SOL_MINT, list(set(tokens)))
        agents: dict[UUID, list[AgentRow]] = {}
        for row in rows:
            agents.setdefault(row["user_id"], []).append(
                AgentRow(
                    user_id=row["user_id"],
                    agent_id=row["agent_id"],
                    trading_mode=row["trading_mode"],
                    automated_trading_simulation=row["automated_trading_simulation"],
                    automated_trading_live=row["automated_trading_live"],
                    trading_config_text=row["trading_config"],
                    wallet_address=row["wallet_address"],
                    sol_balance=row["sol_balance"],
                    open_positions=row["open_positions"],
                    held_tokens=frozenset(row["held_tokens"] or ()),
                    created_at=row["created_at"],
                )
            )
        return agents

    async def agent_configs(self, agent_ids: Sequence[UUID]) -> dict[UUID, tuple[str, str | None]]:
        """Each agent's row version (`xmin`) and `trading_config` as JSON text (None: NULL)."""
        rows = await self.conn.fetch(SELECT_AGENT_CONFIGS, list(set(agent_ids)))
        return {r["id"]: (r["version"], r["config"]) for r in rows}

    async def agent_counts(self, user_ids: Sequence[UUID]) -> dict[UUID, int]:
        """How many agents each user has (users without agents are absent)."""
        rows = await self.conn.fetch(AGENT_COUNTS, list(set(user_ids)))
        return {row["user_id"]: row["agents"] for row in rows}

    async def stored_configs(self) -> AsyncIterator[StoredConfig]:
        """Every agent's stored config, streamed (a cursor: any number of agents); run it inside
        a transaction."""
        async for r in self.conn.cursor(SELECT_ALL_CONFIGS, prefetch=500):
            yield StoredConfig(r["id"], r["user_id"], r["name"], r["config"])
