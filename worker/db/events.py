"""The events the pipeline writes into the outbox itself (`event_outbox`, schema 0013): the
dead letters, which touch no table a trigger watches. In the transaction that stores the
offset past the record, so a record's dead-letter event exists exactly when the worker has
moved on from it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import asyncpg

INSERT_DEAD_LETTERS = """
INSERT INTO event_outbox (event_id, user_id, type, event_at, payload)
SELECT md5('dead_letter:' || d.record)::uuid, d.user_id, 'dead_letter', d.at,
       jsonb_build_object('type', 'dead_letter', 'user_id', d.user_id,
                          'source_record', d.record, 'reason', d.reason, 'kind', d.kind,
                          'event_at', d.at)
  FROM unnest($1::text[], $2::uuid[], $3::timestamptz[], $4::text[], $5::text[])
       AS d(record, user_id, at, reason, kind)
 WHERE signal_worker_events_on()
ON CONFLICT (event_id) DO NOTHING
"""


@dataclass(frozen=True, slots=True)
class DeadLetterEvent:
    """A dead-lettered record: its coordinates, its key when that is a user id, its time."""

    record: str  # topic:partition:offset
    user_id: UUID | None
    at: datetime
    reason: str
    kind: str


async def insert_dead_letter_events(
    conn: asyncpg.Connection, events: Sequence[DeadLetterEvent]
) -> None:
    """Write the events (only when the connection asks for events)."""
    if not events:
        return
    await conn.execute(
        INSERT_DEAD_LETTERS,
        [e.record for e in events],
        [e.user_id for e in events],
        [e.at for e in events],
        [e.reason for e in events],
        [e.kind for e in events],
    )
