"""Agents and what a signal's fan-out needs to know about them and their wallets."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from uuid import UUID

import asyncpg

from worker.db.base import OnConnection
from worker.domain.config_history import ConfigVersion
from worker.domain.config_reading import DEFAULT_MAX_CONFIG_BYTES, OversizedConfig, StoredConfigText
from worker.domain.models import SOL_MINT
from worker.domain.records import AgentRow

EXISTING_USERS = "SELECT id FROM users WHERE id = ANY($1::uuid[])"


def config_columns(cap: str, table: str = "a") -> str:
    """The select list's `trading_config` (the JSON text of `table`'s, NULL beyond `cap`
    bytes) and `config_bytes` (its size): the database never sends an oversized config, so
    no stored row can take the worker's memory; `stored_config` turns the pair into the
    text or an `OversizedConfig`."""
    return (
        f"CASE WHEN octet_length({table}.trading_config::text) <= {cap} "
        f"THEN {table}.trading_config::text END AS trading_config, "
        f"octet_length({table}.trading_config::text) AS config_bytes"
    )


def stored_config(row: asyncpg.Record, max_bytes: int) -> StoredConfigText:
    """The config of a row selected with `config_columns`: its text, None (NULL), or an
    `OversizedConfig` naming its size."""
    text: str | None = row["trading_config"]
    size: int | None = row["config_bytes"]
    if text is None and size is not None:
        return OversizedConfig(size, max_bytes)
    return text


# The versions of each agent's settings in force at some time of [$lo, $hi]: the one in
# force at $lo (the last starting at or before it; before the first version, the first)
# and those starting after it up to $hi (one row each, usually none). Used by the fan-out
# (joined per agent) and by the ticks.
VERSIONS_IN_SPAN = """
SELECT v.* FROM (
  SELECT greatest({lo}, min(h0.valid_from)) AS lo
    FROM agent_config_history h0 WHERE h0.agent_id = {agent}
) s CROSS JOIN LATERAL (
  (SELECT h.id, h.valid_from, h.trading_mode, h.automated_trading_simulation,
          h.automated_trading_live{text}
     FROM agent_config_history h
    WHERE h.agent_id = {agent} AND h.valid_from <= s.lo
    ORDER BY h.valid_from DESC, h.id DESC LIMIT 1)
  UNION ALL
  (SELECT h.id, h.valid_from, h.trading_mode, h.automated_trading_simulation,
          h.automated_trading_live{text}
     FROM agent_config_history h
    WHERE h.agent_id = {agent} AND h.valid_from > s.lo AND h.valid_from <= {hi})
) v
"""

# The wallet is the simulation wallet, whatever the mode: this worker only trades that one
# (a live-mode version fails before any wallet is looked at), so the mode can come from the
# version in force at each signal's time. Positions are counted per wallet.
# The settings are the agents row's: the latest version, in force over the whole batch for
# every agent without a version starting after the batch's first time $5 (`is_edited`:
# one probe of the history's index; `RECENT_VERSIONS` reads the others' versions).
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
       a.created_at                        AS created_at,
       EXISTS (SELECT FROM agent_config_history h
                WHERE h.agent_id = a.id AND h.valid_from > $5) AS is_edited
FROM agents a
LEFT JOIN agent_wallets w
       ON w.agent_id = a.id AND w.wallet_type = 'simulation'
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


# The versions in force over [$2, $3] of the agents $1 (those with a version starting after
# $2: an edit since the batch's first time, or an agent whose history starts later), with
# their configs (up to $4 bytes).
RECENT_VERSIONS = f"""
SELECT r.agent_id                          AS agent_id,
       v.id                                AS version_id,
       v.valid_from                        AS valid_from,
       v.trading_mode                      AS trading_mode,
       v.automated_trading_simulation      AS automated_trading_simulation,
       v.automated_trading_live            AS automated_trading_live,
       {config_columns("$4", "v")},
       NULL::timestamptz                   AS created_at
  FROM unnest($1::uuid[]) AS r(agent_id)
  CROSS JOIN LATERAL (
{
    VERSIONS_IN_SPAN.format(
        text=", h.trading_config", agent="r.agent_id", lo="$2::timestamptz", hi="$3::timestamptz"
    )
}
) v
 ORDER BY r.agent_id, v.valid_from, v.id
"""  # noqa: S608 - constant SQL pieces; values travel as parameters


# The versions of agents' settings in force over a span, without their configs: the ticks
# keep configs by version id (`worker.handlers.config_cache.ConfigTexts`), and read the
# texts of those they do not hold (`SELECT_VERSION_TEXTS`). An agent without history (its
# rows written with the triggers off) comes with its row's settings, config included.
SELECT_CONFIG_VERSIONS = f"""
SELECT a.id                                AS agent_id,
       v.id                                AS version_id,
       v.valid_from                        AS valid_from,
       coalesce(v.trading_mode, a.trading_mode) AS trading_mode,
       coalesce(v.automated_trading_simulation, a.automated_trading_simulation)
                                           AS automated_trading_simulation,
       coalesce(v.automated_trading_live, a.automated_trading_live)
                                           AS automated_trading_live,
       {config_columns("$4", "c")},
       a.created_at                        AS created_at
  FROM agents a
  LEFT JOIN LATERAL (
{VERSIONS_IN_SPAN.format(text="", agent="a.id", lo="$2::timestamptz", hi="$3::timestamptz")}
) v ON true
  CROSS JOIN LATERAL (
       SELECT CASE WHEN v.id IS NULL THEN a.trading_config END AS trading_config
) c
 WHERE a.id = ANY($1::uuid[])
 ORDER BY a.id, v.valid_from, v.id
"""  # noqa: S608 - constant SQL pieces; values travel as parameters


SELECT_VERSION_TEXTS = f"""
SELECT h.id, {config_columns("$2", "h")}
  FROM agent_config_history h WHERE h.id = ANY($1::bigint[])
"""  # noqa: S608 - constant SQL pieces; values travel as parameters


# Each version's earlier versions of its agent, newest first (the last valid config of an
# agent is searched among them: `worker.domain.exit_rules`). The history's index on
# (agent_id, valid_from, id) serves it.
SELECT_EARLIER_VERSIONS = """
SELECT v.id AS version_id, e.id AS earlier_id
  FROM agent_config_history v
 CROSS JOIN LATERAL (
       SELECT h.id, h.valid_from FROM agent_config_history h
        WHERE h.agent_id = v.agent_id AND (h.valid_from, h.id) < (v.valid_from, v.id)
        ORDER BY h.valid_from DESC, h.id DESC
        LIMIT $2) e
 WHERE v.id = ANY($1::bigint[])
 ORDER BY v.id, e.valid_from DESC, e.id DESC
"""


AGENT_COUNTS = """
SELECT user_id, count(*) AS agents FROM agents WHERE user_id = ANY($1::uuid[]) GROUP BY user_id
"""


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


def version_of_row(row: asyncpg.Record, max_config_bytes: int) -> ConfigVersion:
    """A version from a row of `FETCH_AGENTS`, `SELECT_CONFIG_VERSIONS` or replay's
    history (`version_id`, `valid_from` or else `created_at`, the settings, the config
    selected with `config_columns`)."""
    return ConfigVersion(
        row["version_id"],
        row["valid_from"] or row["created_at"],  # no history: the agents row since creation
        row["trading_mode"],
        row["automated_trading_simulation"],
        row["automated_trading_live"],
        stored_config(row, max_config_bytes),
    )


def _in_span(agent: AgentRow, versions: list[ConfigVersion]) -> AgentRow:
    """The agent with the settings of its first version in the span, and all of them when
    there are several (`AgentRow.at`)."""
    first = versions[0]
    return replace(
        agent,
        trading_mode=first.trading_mode,
        automated_trading_simulation=first.automated_trading_simulation,
        automated_trading_live=first.automated_trading_live,
        trading_config_text=first.text,
        versions=tuple(versions) if len(versions) > 1 else (),
    )


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
        span: tuple[datetime, datetime] | None = None,
    ) -> dict[UUID, list[AgentRow]]:
        """Every agent of each user, by agent id, with holdings among `tokens`, its creation
        time and its settings in force over `span` (the batch's first and last decision
        times; None: the current ones), configs beyond `max_config_bytes` as
        `OversizedConfig`; one query."""
        rows = await self.conn.fetch(
            FETCH_AGENTS, list(set(user_ids)), SOL_MINT, list(set(tokens)), max_config_bytes,
            span[0] if span is not None else None,
        )  # fmt: skip
        edited = [row["agent_id"] for row in rows if row["is_edited"]]
        recent: dict[UUID, list[ConfigVersion]] = {}
        if edited and span is not None:
            for r in await self.conn.fetch(
                RECENT_VERSIONS, edited, span[0], span[1], max_config_bytes
            ):
                recent.setdefault(r["agent_id"], []).append(version_of_row(r, max_config_bytes))
        agents: dict[UUID, list[AgentRow]] = {}
        for row in rows:
            agent = AgentRow(
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
            versions = recent.get(agent.agent_id)
            if versions:
                agent = _in_span(agent, versions)
            agents.setdefault(row["user_id"], []).append(agent)
        return agents

    async def config_versions(
        self,
        agent_ids: Sequence[UUID],
        since: datetime,
        until: datetime,
        max_config_bytes: int = DEFAULT_MAX_CONFIG_BYTES,
    ) -> dict[UUID, list[ConfigVersion]]:
        """Each agent's versions in force at some time of [`since`, `until`], in order,
        without their texts (`version_texts`) but for an agent without history (one
        version, id None: its row's settings, config included); deleted agents are absent."""
        rows = await self.conn.fetch(
            SELECT_CONFIG_VERSIONS, list(set(agent_ids)), since, until, max_config_bytes
        )
        versions: dict[UUID, list[ConfigVersion]] = {}
        for r in rows:
            versions.setdefault(r["agent_id"], []).append(version_of_row(r, max_config_bytes))
        return versions

    async def version_texts(
        self, version_ids: Sequence[int], max_config_bytes: int = DEFAULT_MAX_CONFIG_BYTES
    ) -> dict[int, StoredConfigText]:
        """The `trading_config` JSON text of each version (None: NULL; an `OversizedConfig`
        beyond `max_config_bytes`)."""
        rows = await self.conn.fetch(SELECT_VERSION_TEXTS, list(set(version_ids)), max_config_bytes)
        return {r["id"]: stored_config(r, max_config_bytes) for r in rows}

    async def earlier_versions(
        self, version_ids: Sequence[int], limit: int
    ) -> dict[int, list[int]]:
        """For each version (by id), the ids of its agent's versions before it (by
        `valid_from`, then id), newest first, at most `limit` (a version without earlier
        ones, or unknown, is absent); one query."""
        rows = await self.conn.fetch(SELECT_EARLIER_VERSIONS, list(set(version_ids)), limit)
        earlier: dict[int, list[int]] = {}
        for r in rows:
            earlier.setdefault(r["version_id"], []).append(r["earlier_id"])
        return earlier

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
