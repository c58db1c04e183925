"""What the worker decided for signals, looked up by their natural key (`publish --wait`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from uuid import UUID

import asyncpg


@dataclass(frozen=True, slots=True)
class AgentDecision:
    """One agent's execution of one signal: `success`, `skipped` or `failed`, and why."""

    agent_id: UUID
    name: str
    status: str
    reason: str | None


SignalKey = tuple[UUID, str]
"""(user id, idempotency key) as the worker stores it: the key of the message, else the
record's Kafka coordinates `topic:partition:offset`."""

# A stored signal has all its executions: they are written in the signal's transaction.
DECISIONS = """
SELECT k.user_id, k.key, e.agent_id, a.name, e.status, e.error
  FROM unnest($1::uuid[], $2::text[]) AS k(user_id, key)
  JOIN trading_signals s ON s.user_id = k.user_id AND s.idempotency_key = k.key
  LEFT JOIN signal_executions e ON e.signal_id = s.id
  LEFT JOIN agents a ON a.id = e.agent_id
 ORDER BY k.user_id, k.key, a.created_at, a.name, e.agent_id
"""


async def decisions_of(
    conn: asyncpg.Connection, keys: Sequence[SignalKey]
) -> dict[SignalKey, list[AgentDecision]]:
    """The decisions of each stored signal among `keys`, agents in creation order; a key
    missing from the result is not stored (yet); an empty list: a signal without
    subscribers (its user had no agent at its time)."""
    rows = await conn.fetch(DECISIONS, [k[0] for k in keys], [k[1] for k in keys])
    found: dict[SignalKey, list[AgentDecision]] = {}
    for r in rows:
        decisions = found.setdefault((r["user_id"], r["key"]), [])
        if r["agent_id"] is not None:
            decisions.append(AgentDecision(r["agent_id"], r["name"], r["status"], r["error"]))
    return found
