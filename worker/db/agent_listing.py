"""What the command line reads about agents and commands: an agent's owner (to key its
commands), the agents list, one agent's stored config, and a command's result row."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from uuid import UUID

import asyncpg

from worker.db.agents import config_columns, stored_config
from worker.domain.config_reading import StoredConfigText
from worker.domain.models import SOL_MINT


@dataclass(frozen=True, slots=True)
class AgentOwner:
    """An agent's id, user and name: whom its commands are keyed by, and how to call it."""

    agent_id: UUID
    user_id: UUID
    name: str


@dataclass(frozen=True, slots=True)
class AgentListing:
    """One agent as `agents list` shows it; `sol_balance` None without a simulation wallet
    or SOL row."""

    agent_id: UUID
    user_id: UUID
    name: str
    trading_mode: str
    automated_trading_simulation: bool
    automated_trading_live: bool
    sol_balance: Decimal | None
    open_positions: int
    created_at: datetime


@dataclass(frozen=True, slots=True)
class CommandResult:
    """A `command_results` row: `changes` and `payload` as their JSON text (decoded by the
    caller with the exact reader), `reason` set exactly when refused."""

    command: str
    status: str
    reason: str | None
    agent_id: UUID | None
    changes: str | None
    event_at: datetime
    payload: str | None = None  # the command as the worker recorded it


AGENT_OWNER = "SELECT id, user_id, name FROM agents WHERE id = $1"


async def agent_owner(conn: asyncpg.Connection, agent_id: UUID) -> AgentOwner | None:
    """The agent's user and name; None when no such agent exists."""
    row = await conn.fetchrow(AGENT_OWNER, agent_id)
    return None if row is None else AgentOwner(row["id"], row["user_id"], row["name"])


# The simulation wallet's SOL and its open positions (the wallet the worker trades).
LIST_AGENTS = """
SELECT a.id, a.user_id, a.name, a.trading_mode, a.automated_trading_simulation,
       a.automated_trading_live, a.created_at, b.balance AS sol_balance,
       (SELECT count(*) FROM agent_positions p
         WHERE p.agent_id = a.id AND p.wallet_address = w.wallet_address)::int AS open_positions
  FROM agents a
  LEFT JOIN agent_wallets w ON w.agent_id = a.id AND w.wallet_type = 'simulation'
  LEFT JOIN agent_balances b ON b.wallet_address = w.wallet_address AND b.token_address = $1
 WHERE ($2::uuid IS NULL OR a.user_id = $2) AND ($3::uuid IS NULL OR a.id = $3)
 ORDER BY a.user_id, a.created_at, a.id
"""


async def list_agents(
    conn: asyncpg.Connection, *, user_id: UUID | None = None, agent_id: UUID | None = None
) -> list[AgentListing]:
    """Every agent (of `user_id`, or just `agent_id`, when given), by user then creation."""
    rows = await conn.fetch(LIST_AGENTS, SOL_MINT, user_id, agent_id)
    return [
        AgentListing(
            agent_id=r["id"],
            user_id=r["user_id"],
            name=r["name"],
            trading_mode=r["trading_mode"],
            automated_trading_simulation=r["automated_trading_simulation"],
            automated_trading_live=r["automated_trading_live"],
            sol_balance=r["sol_balance"],
            open_positions=r["open_positions"],
            created_at=r["created_at"],
        )
        for r in rows
    ]


AGENT_CONFIG = f"SELECT {config_columns('$2')} FROM agents a WHERE a.id = $1"  # noqa: S608 - constant


async def agent_config(
    conn: asyncpg.Connection, agent_id: UUID, max_bytes: int
) -> StoredConfigText:
    """The agent's stored trading_config as the worker reads it: its JSON text, None for
    NULL (the defaults), or an `OversizedConfig` beyond `max_bytes`. None too for a missing
    agent: that is the caller's check (`agent_owner`)."""
    row = await conn.fetchrow(AGENT_CONFIG, agent_id, max_bytes)
    return None if row is None else stored_config(row, max_bytes)


COMMAND_RESULT = """
SELECT command, status, reason, agent_id, changes::text AS changes, event_at,
       payload::text AS payload
  FROM command_results WHERE user_id = $1 AND idempotency_key = $2
"""


async def command_result(
    conn: asyncpg.Connection, user_id: UUID, idempotency_key: str
) -> CommandResult | None:
    """The result of the user's command with that key; None while it has none."""
    row = await conn.fetchrow(COMMAND_RESULT, user_id, idempotency_key)
    if row is None:
        return None
    return CommandResult(
        row["command"], row["status"], row["reason"], row["agent_id"], row["changes"],
        row["event_at"], row["payload"],
    )  # fmt: skip
