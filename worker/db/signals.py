"""Trading signals and their per-agent executions."""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

from worker.db.base import OnConnection
from worker.db.bulk import Bulk, Column
from worker.domain.models import Signal
from worker.domain.records import ExecutionRow, StoredSignal
from worker.errors import DomainError

SIGNALS: Bulk[Signal] = Bulk(
    "s",
    [
        Column("user_id", "uuid", "user_id"),
        Column("token_address", "varchar", "token_address"),
        Column("symbol", "varchar", "symbol"),
        Column("signal_type", "varchar", "signal_type"),
        Column("activation_reason", "text", "activation_reason"),
        Column("signal_strength", "int", "signal_strength"),
        Column("source", "varchar", "source"),
        Column("idempotency_key", "varchar", "idempotency_key"),
        Column("price_usd", "numeric", "price_usd"),
        Column("market_cap_usd", "numeric", "market_cap_usd"),
        Column("liquidity_usd", "numeric", "liquidity_usd"),
        Column("holder_count", "int", "holder_count"),
        Column("created_at", "timestamptz", "created_at"),
        Column("payload_digest", "bytea", "digest"),
        Column("source_record", "text", "record"),
        Column("event_at", "timestamptz", lambda s: s.decision_time),
    ],
)
INSERT_SIGNALS = SIGNALS.sql("""
INSERT INTO trading_signals (
    user_id, token_address, symbol, signal_type, activation_reason, signal_strength, source,
    idempotency_key, price_usd, market_cap_usd, liquidity_usd, holder_count, created_at,
    payload_digest, source_record, event_at
)
SELECT s.user_id, s.token_address, s.symbol, s.signal_type, s.activation_reason,
       s.signal_strength, s.source, s.idempotency_key, s.price_usd, s.market_cap_usd,
       s.liquidity_usd, s.holder_count, s.created_at, s.payload_digest, s.source_record,
       s.event_at
  FROM {rows}
ON CONFLICT (user_id, idempotency_key) DO NOTHING
RETURNING id, user_id, idempotency_key, payload_digest, source_record,
          coalesce(event_at, created_at) AS decided_at
""")
KEYS: Bulk[Signal] = Bulk(
    "k",
    [Column("user_id", "uuid", "user_id"), Column("idempotency_key", "varchar", "idempotency_key")],
)
SELECT_SIGNAL_IDS = KEYS.sql("""
SELECT s.id, s.user_id, s.idempotency_key, s.payload_digest, s.source_record,
       coalesce(s.event_at, s.created_at) AS decided_at
  FROM trading_signals s
  JOIN {rows}
    ON s.user_id = k.user_id AND s.idempotency_key = k.idempotency_key
""")


EXECUTIONS: Bulk[ExecutionRow] = Bulk(
    "e",
    [
        Column("signal_id", "int", "signal_id"),
        Column("agent_id", "uuid", "agent_id"),
        Column("status", "text", "status.value"),
        Column("transaction_id", "uuid", "transaction_id"),
        Column("error", "text", "error"),
    ],
)
INSERT_EXECUTIONS = EXECUTIONS.sql("""
INSERT INTO signal_executions (signal_id, agent_id, status, transaction_id, error)
SELECT e.signal_id, e.agent_id, e.status, e.transaction_id, e.error FROM {rows}
ON CONFLICT (signal_id, agent_id) DO NOTHING
""")


SELECT_EXECUTED_AGENTS = """
SELECT signal_id, agent_id FROM signal_executions WHERE signal_id = ANY($1::int[])
"""


LOCK_SIGNALS = """
SELECT id FROM trading_signals WHERE id = ANY($1::int[]) ORDER BY id FOR UPDATE
"""


class SignalQueries(OnConnection):
    """Signals stored once per (user, idempotency key), and their executions."""

    __slots__ = ()

    async def insert_signals(self, signals: Sequence[Signal]) -> list[StoredSignal]:
        """Store each signal once per (user, idempotency key); how each stands, in order.

        Two signals of `signals` with one key get the same id; only the first counts as new.
        """
        if not signals:
            return []
        rows = {
            (row["user_id"], row["idempotency_key"]): row
            for row in await self.conn.fetch(INSERT_SIGNALS, *SIGNALS.args(signals))
        }
        inserted = {int(row["id"]) for row in rows.values()}
        stored_before = [s for s in signals if (s.user_id, s.idempotency_key) not in rows]
        if stored_before:
            # Their rows are committed (ON CONFLICT waited for their transaction), so a new
            # statement sees them. New signals only (the usual case): no second statement.
            rows.update(
                {
                    (row["user_id"], row["idempotency_key"]): row
                    for row in await self.conn.fetch(SELECT_SIGNAL_IDS, *KEYS.args(stored_before))
                }
            )
        result: list[StoredSignal] = []
        seen: set[int] = set()
        for s in signals:
            row = rows.get((s.user_id, s.idempotency_key))
            if row is None:  # pragma: no cover - only if the row was deleted in between
                msg = f"signal {s.idempotency_key!r} of user {s.user_id} vanished on insert"
                raise DomainError(msg)
            signal_id = int(row["id"])
            is_new = signal_id in inserted and signal_id not in seen
            result.append(
                StoredSignal(
                    signal_id,
                    is_new,
                    row["payload_digest"],
                    row["source_record"],
                    row["decided_at"],
                )
            )
            seen.add(signal_id)
        return result

    async def insert_executions(self, rows: Sequence[ExecutionRow]) -> int:
        """Write `rows` in one statement, skipping (signal, agent) pairs already there; count
        the new ones."""
        if not rows:
            return 0
        status = await self.conn.execute(INSERT_EXECUTIONS, *EXECUTIONS.args(rows))
        # The command tag is "INSERT 0 <rows inserted>".
        return int(status.rsplit(" ", 1)[1])

    async def executions_of(self, signal_ids: Sequence[int]) -> dict[int, set[UUID]]:
        """For each signal, the agents that already have an execution row (absent: none)."""
        done: dict[int, set[UUID]] = {}
        for row in await self.conn.fetch(SELECT_EXECUTED_AGENTS, list(signal_ids)):
            done.setdefault(row["signal_id"], set()).add(row["agent_id"])
        return done

    async def lock_signals(self, signal_ids: Sequence[int]) -> None:
        """Lock signal rows, in id order: one worker at a time processes a redelivered signal."""
        await self.conn.execute(LOCK_SIGNALS, sorted(set(signal_ids)))
