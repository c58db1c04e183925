"""The consumer's isolate path, without services: a batch whose transaction fails for a
record's fault is redone record by record, each in a savepoint, so that only that record is
dead-lettered and the others' effects, the dead letter and the offsets commit together.

What stands in for PostgreSQL is a transaction log, not SQL: `Conn.transaction()` keeps the
effects written inside a transaction (or savepoint) when it ends normally and drops them
when it ends with an exception, as PostgreSQL does. The two methods of `Pipeline` that talk
to the database (the handler's statements, `_apply_signals`, and the offsets and dead
letters, `_finish`) are replaced by ones that write to that log: the code under test is
`_commit` and `_apply`, the failure policy's decisions and how the outcomes are assembled.
(The same path against a real PostgreSQL: tests/faults/test_bad_data.py.)
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

import asyncpg
import pytest
from aiokafka.structs import ConsumerRecord, TopicPartition

from tests.helpers.books import signal_message
from worker.db.store import PgStore
from worker.messages import SignalV1
from worker.metrics import Metrics
from worker.pipeline.batching import Chunk, Item
from worker.pipeline.consumer import Pipeline
from worker.pipeline.deadletters import DeadLetter
from worker.pipeline.telemetry import Outcome
from worker.settings import Settings

TP = TopicPartition("signals", 0)
POISON = 3  # the offset of the record at fault


class Transaction:
    """A transaction or savepoint of `Conn`: its effects stay only if it ends normally."""

    def __init__(self, conn: Conn) -> None:
        self.conn = conn
        self.mark = 0

    async def __aenter__(self) -> None:
        self.mark = len(self.conn.effects)
        self.conn.depth += 1

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        _exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.conn.depth -= 1
        if kind is not None:
            del self.conn.effects[self.mark :]
            self.conn.rollbacks += 1
        elif self.conn.depth == 0:
            self.conn.committed.extend(self.conn.effects)
            self.conn.effects.clear()


class Conn:
    """The effects written, kept per transaction; `committed` is what a reader would see."""

    def __init__(self) -> None:
        self.effects: list[Any] = []
        self.committed: list[Any] = []
        self.depth = 0
        self.rollbacks = 0

    def transaction(self) -> Transaction:
        return Transaction(self)


class Pool:
    """One connection, lent out as the pool's `acquire()` does."""

    def __init__(self) -> None:
        self.conn = Conn()

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[Conn]:
        yield self.conn


class Recording(Pipeline):
    """The pipeline with its statements replaced by effects in the transaction log; a batch
    that holds the record at offset `POISON` fails with `error` (as a statement would)."""

    error: Exception = ValueError("a bug")

    async def _apply_signals(
        self, conn: asyncpg.Connection, items: list[Item]
    ) -> tuple[list[tuple[Item, Outcome]], list[DeadLetter]]:
        log: Conn = conn  # type: ignore[assignment]  # the transaction log stands in
        log.effects.extend(("signal", item.record.offset) for item in items)
        if any(item.record.offset == POISON for item in items):
            raise self.error
        return [(item, None) for item in items], []

    async def _finish(self, conn: Any, chunk: Any, dead: list[DeadLetter]) -> None:
        log: Conn = conn  # the transaction log stands in
        log.effects.append(("offsets", dict(chunk.next_offsets)))
        log.effects.extend(("dead", d.record.offset, d.kind, d.reason) for d in dead)


def _pipeline(pool: Pool, error: Exception) -> Recording:
    settings = Settings(signals_topic="signals", prices_topic="prices")
    pipeline = Recording(settings, pool, object(), object(), Metrics(), stores=PgStore)  # type: ignore[arg-type]
    pipeline.error = error
    return pipeline


def _chunk(offsets: range) -> Chunk:
    items = []
    for offset in offsets:
        record: ConsumerRecord[bytes, bytes] = ConsumerRecord(
            "signals", 0, offset, 1_700_000_000_000, 0, None, b"{}", None, 0, 2, ()
        )
        message = SignalV1.model_validate(signal_message(uuid.uuid4()))
        items.append(Item(record, message))
    return Chunk(records=[i.record for i in items], items=items, next_offsets={TP: offsets.stop})


@pytest.mark.parametrize(
    ("error", "kind", "reason"),
    [
        (ValueError("a bug"), "unexpected", "unexpected error: ValueError: a bug"),
        (
            asyncpg.CheckViolationError("violates check constraint"),
            "database",
            "database rejected it: CheckViolationError: violates check constraint",
        ),
    ],
    ids=["bug", "constraint"],
)
async def test_a_batch_failing_for_one_record_dead_letters_only_that_record(
    error: Exception, kind: str, reason: str
) -> None:
    pool = Pool()
    chunk = _chunk(range(5))
    outcomes = await _pipeline(pool, error)._commit(chunk)

    assert [item.record.offset for item, _ in outcomes] == [0, 1, 2, 4]
    # Once each (the failed batch's writes were rolled back), the record at fault's own
    # savepoint too, and its dead letter with the offsets in the same transaction.
    assert pool.conn.committed == [
        ("signal", 0),
        ("signal", 1),
        ("signal", 2),
        ("signal", 4),
        ("offsets", {TP: 5}),
        ("dead", POISON, kind, reason),
    ]
    assert pool.conn.rollbacks == 2  # the batch, then the record at fault's savepoint


async def test_a_batch_without_a_fault_commits_in_one_transaction() -> None:
    pool = Pool()
    outcomes = await _pipeline(pool, ValueError("unused"))._commit(_chunk(range(4, 7)))
    assert [item.record.offset for item, _ in outcomes] == [4, 5, 6]
    assert pool.conn.committed == [
        ("signal", 4),
        ("signal", 5),
        ("signal", 6),
        ("offsets", {TP: 7}),
    ]
    assert pool.conn.rollbacks == 0


async def test_server_trouble_in_a_batch_is_raised_to_be_retried_never_isolated() -> None:
    pool = Pool()
    with pytest.raises(ConnectionResetError):
        await _pipeline(pool, ConnectionResetError("reset"))._commit(_chunk(range(5)))
    assert pool.conn.committed == []
    assert pool.conn.rollbacks == 1  # the batch only: no record was tried alone


async def test_server_trouble_while_isolating_is_raised_and_nothing_is_kept() -> None:
    """The batch fails for a record (isolate), then a record alone meets server trouble:
    the whole redo is rolled back and raised (retried), no record is dead-lettered."""

    class Flaky(Recording):
        tries = 0

        async def _apply_signals(
            self, conn: asyncpg.Connection, items: list[Item]
        ) -> tuple[list[tuple[Item, Outcome]], list[DeadLetter]]:
            self.tries += 1
            if self.tries == 1:
                raise ValueError("a bug")  # the batch: isolate
            if items[0].record.offset == 1:
                raise ConnectionResetError("reset")  # a record alone: server trouble
            return await super()._apply_signals(conn, items)

    pool = Pool()
    settings = Settings(signals_topic="signals", prices_topic="prices")
    pipeline = Flaky(settings, pool, object(), object(), Metrics(), stores=PgStore)  # type: ignore[arg-type]
    with pytest.raises(ConnectionResetError):
        await pipeline._commit(_chunk(range(5)))
    assert pool.conn.committed == []
