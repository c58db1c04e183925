"""The ids of the rows a trade writes, derived from the event that makes it (pure).

A run's ledger must be a function of its input, so that a replay and a live run (or two
live runs of the same records, whatever their fetch sizes and insertion order) name the
same rows. Nothing here uses a serial id or a random number:

- a buy (transaction and position) is named by its signal's natural key, (user id,
  idempotency key), which the contract makes unique, and the agent;
- a sale or a DCA buy is named by its position, the tick that makes it (its decision time
  and its `ts`: two ticks of one token that share a decision time differ by `ts`, and one
  not newer than the stored price trades nothing) and its kind and place within that
  tick's plan (one tick may sell for take profit, then close, or buy a DCA).

Every id is a UUIDv5 under one namespace; the texts hashed end with the only part of free
length (the idempotency key), so no two different inputs hash the same text.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta
from uuid import UUID

_IDS = uuid.UUID("5e0d7a4c-61c8-4f43-9b8e-2f4f1c7d9a10")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def buy_transaction_id(user_id: UUID, idempotency_key: str, agent_id: UUID) -> UUID:
    """The purchase transaction id of one agent's buy on the signal (user, key)."""
    return uuid.uuid5(_IDS, f"buy:{user_id}:{agent_id}:{idempotency_key}")


def position_id(user_id: UUID, idempotency_key: str, agent_id: UUID) -> UUID:
    """The id of the position one agent's buy on the signal (user, key) opens."""
    return uuid.uuid5(_IDS, f"position:{user_id}:{agent_id}:{idempotency_key}")


def tick_transaction_id(position: UUID, at: datetime, ts: datetime, kind: str, index: int) -> UUID:
    """The id of a sale or DCA buy of `position` at the tick decided at `at` and observed
    at `ts`: `kind` is its kind ("take_profit", "stop_loss", "stale_trade", "dca"), `index`
    its place among the tick's transactions of that position (0 first). Times count as
    instants (microseconds since the epoch), whatever their UTC offset."""
    return uuid.uuid5(_IDS, f"{kind}:{position}:{_micros(at)}:{_micros(ts)}:{index}")


def _micros(at: datetime) -> int:
    """Microseconds since the epoch, exactly (no float)."""
    return (at - _EPOCH) // _MICROSECOND


def command_id(user_id: UUID, idempotency_key: str, what: str) -> UUID:
    """The id of a row the command (user, key) makes: `what` names the row ("agent",
    "balance", "deposit", "withdrawal", or "manual:<position id>" for a manual sale)."""
    return uuid.uuid5(_IDS, f"command:{what}:{user_id}:{idempotency_key}")


def simulation_wallet_address(agent_id: UUID) -> str:
    """A stable 44-character simulation wallet address for an agent (`sim_` + 40 hex)."""
    return "sim_" + hashlib.sha256(agent_id.bytes).hexdigest()[:40]
