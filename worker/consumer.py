"""The aiokafka loop: decode, dead-letter, process every record's effects exactly once.

Exactly-once effects: the rows a batch of records produces and the next offset of each
partition it covers (`consumer_offsets`) are committed in one PostgreSQL transaction.
On assignment the consumer seeks to the stored offset (else Kafka's committed offset, else
the earliest), so a crash, a redelivery or a rebalance never applies a record twice. Kafka
offsets are committed after the database commit only so that lag tools keep working.

The partitions of a fetch are dealt into at most `PIPELINE_CONCURRENCY` lanes per topic,
whole partitions each, balanced by the agent executions they hold; the lanes run
concurrently, each on its own connection, and a lane's records (one partition's in order)
are written in transactions of up to `MAX_EXECUTIONS_PER_TRANSACTION` executions that store
the next offset of every partition they cover. Few, larger transactions cost PostgreSQL far
less than one per partition (every transaction is a fixed set of set-based statements),
which is what keeps latency low when records trickle in over many partitions. This module
alone maps exceptions to ack, retry or dead-letter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord, TopicPartition

from worker.config_cache import ConfigTexts
from worker.db.agents import agent_counts
from worker.db.offsets import fetch_offsets, store_offsets
from worker.db.pool import connection
from worker.db.store import PgPriceStore, PgSignalStore
from worker.domain.models import Signal
from worker.errors import InvalidMessage, WorkerError
from worker.handlers import SignalOutcome, UnknownUser, handle_signals
from worker.kafka import client_options
from worker.messages import PriceTickV1, SignalV1, decode_price, decode_signal
from worker.metrics import Metrics
from worker.prices import handle_price
from worker.retry import AsyncRetrying, describe, is_transient, transient_retry
from worker.settings import Settings

log = structlog.get_logger(__name__)

# Kafka offsets are only for lag tools (the stored ones are in PostgreSQL): never wait long.
KAFKA_COMMIT_TIMEOUT_S = 5.0
# One transaction holds at most about this many agent executions (memory stays bounded).
MAX_EXECUTIONS_PER_TRANSACTION = 5_000
# The fan-out assumed for a user whose agents could not be counted yet.
UNKNOWN_FANOUT = 100
# How the consumer reads (the benchmark's raw consume reads with the same): from the stored
# offsets (else the earliest), committed records only, no auto-commit, and the fetch sizes.
FETCH_OPTIONS: dict[str, Any] = {
    "enable_auto_commit": False,
    "auto_offset_reset": "earliest",
    "isolation_level": "read_committed",
    "fetch_max_bytes": 16 * 1024 * 1024,
    "max_partition_fetch_bytes": 2 * 1024 * 1024,
}
# Kafka commits are batched off the hot path: at most one round trip per interval.
KAFKA_COMMIT_INTERVAL_S = 1.0


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record that cannot be processed, and why (`kind` is the metric label)."""

    record: ConsumerRecord[bytes, bytes]
    reason: str
    kind: str


@dataclass(frozen=True, slots=True)
class _Item:
    record: ConsumerRecord[bytes, bytes]
    message: SignalV1 | PriceTickV1


@dataclass(slots=True)
class _Part:
    """One partition's records of a fetch, decoded: `items[i]` is `records[i]`'s (None when
    it was dead-lettered) and `costs[i]` its estimated agent executions."""

    tp: TopicPartition
    records: Sequence[ConsumerRecord[bytes, bytes]]
    items: list[_Item | None]
    costs: list[int] = field(default_factory=list)

    @property
    def cost(self) -> int:
        """Estimated agent executions of the whole part."""
        return sum(self.costs)


@dataclass(slots=True)
class _Chunk:
    """What one transaction covers: records of one or more partitions of one lane."""

    records: list[ConsumerRecord[bytes, bytes]] = field(default_factory=list)
    items: list[_Item] = field(default_factory=list)
    next_offsets: dict[TopicPartition, int] = field(default_factory=dict)


def record_time(record: ConsumerRecord[Any, Any]) -> datetime:
    """The record's Kafka timestamp as an aware UTC datetime."""
    return datetime.fromtimestamp(record.timestamp / 1000, tz=UTC)


class Pipeline(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    """Consumes the signal and price topics in one consumer group until told to stop."""

    def __init__(
        self,
        settings: Settings,
        pool: asyncpg.Pool,
        producer: AIOKafkaProducer,
        metrics: Metrics,
    ) -> None:
        self._settings = settings
        self._kafka = settings.kafka
        self._pool = pool
        self._producer = producer
        self._metrics = metrics
        self._log_info = logging.getLevelName(settings.log_level) <= logging.INFO
        self._lock = asyncio.Lock()
        self._uncommitted: dict[TopicPartition, int] = {}
        # Agents per user, as last seen: sizes the transactions (see `_chunks`).
        self._fanout: dict[UUID, int] = {}
        self._last_kafka_commit = time.monotonic()
        self._fatal: BaseException | None = None
        # Agents' configs by row version, for ticks (see `worker.config_cache`).
        self._config_texts = ConfigTexts()
        self.consumer = AIOKafkaConsumer(
            **client_options(self._kafka),
            **FETCH_OPTIONS,
            group_id=self._kafka.consumer_group,
            max_poll_records=self._kafka.fetch_max_records,
            session_timeout_ms=10_000,
            heartbeat_interval_ms=2_000,
            rebalance_timeout_ms=30_000,
            metadata_max_age_ms=30_000,
        )

    # ------------------------------------------------------------------ rebalance listener

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        """Wait for in-flight work so the next owner starts after our last commit."""
        async with self._lock:
            log.info("partitions_revoked", partitions=_names(revoked))
            await self.commit_kafka(only=revoked)
            for tp in revoked:
                # Another worker reports this partition's lag from now on.
                with contextlib.suppress(KeyError):
                    self._metrics.consumer_lag.remove(tp.topic, str(tp.partition))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        """Seek every assigned partition to the offset stored with its effects."""
        self._metrics.assigned_partitions.set(len(assigned))
        if not assigned:
            return
        try:
            stored = await self._stored_offsets()
        except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError) as exc:
            # Without the stored offsets the consumer would fall back to Kafka's committed
            # ones; safe (effects are idempotent) but not what we promise: stop instead.
            self._fatal = exc
            log.exception("stored_offsets_unreadable", error=describe(exc))
            return
        for tp in assigned:
            offset = stored.get((tp.topic, tp.partition))
            if offset is not None:
                self.consumer.seek(tp, offset)
        log.info(
            "partitions_assigned",
            partitions=_names(assigned),
            stored={f"{t}:{p}": o for (t, p), o in stored.items()},
        )

    async def _stored_offsets(self) -> dict[tuple[str, int], int]:
        async for attempt in transient_retry():
            with attempt:
                async with connection(self._pool) as conn:
                    return await fetch_offsets(
                        conn,
                        self._kafka.consumer_group,
                        [self._kafka.signals_topic, self._kafka.prices_topic],
                    )
        raise AssertionError("unreachable")  # pragma: no cover

    # ------------------------------------------------------------------ main loop

    def has_assignment(self) -> bool:
        """True when this worker owns at least one partition."""
        return bool(self.consumer.assignment())

    def subscribe(self) -> None:
        """Subscribe to the signal and price topics with this object as rebalance listener."""
        self.consumer.subscribe(
            [self._kafka.signals_topic, self._kafka.prices_topic], listener=self
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Fetch and process batches until `stop` is set; raises when a batch cannot be done."""
        while not stop.is_set():
            if self._fatal is not None:
                raise WorkerError(f"cannot read stored offsets: {describe(self._fatal)}")
            batch = await self.consumer.getmany(
                timeout_ms=200, max_records=self._kafka.fetch_max_records
            )
            if not batch:
                continue
            async with self._lock:
                lanes = await self._lanes(batch)
                # Every lane finishes (commits or gives up) before a failure is raised, so
                # one lane's outage never rolls back another's finished work.
                results = await asyncio.gather(
                    *(self._process_lane(lane) for lane in lanes), return_exceptions=True
                )
                self._metrics.db_pool_in_use.set(self._pool.get_size() - self._pool.get_idle_size())
            for result in results:
                if isinstance(result, BaseException):
                    raise result
            if time.monotonic() - self._last_kafka_commit >= KAFKA_COMMIT_INTERVAL_S:
                await self.commit_kafka()
        await self.commit_kafka()

    # ------------------------------------------------------------------ lanes

    async def _lanes(
        self, batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
    ) -> list[list[_Part]]:
        """Decode the fetch, dead-letter what is invalid, and deal the partitions into lanes."""
        parts: list[_Part] = []
        dead: list[DeadLetter] = []
        for tp, records in batch.items():
            if not records:
                continue
            self._metrics.records_consumed.labels(tp.topic).inc(len(records))
            items, bad = self._decode(tp, records)
            dead.extend(bad)
            parts.append(_Part(tp, records, items))
        if dead:
            # Acknowledged before any transaction can store an offset past them.
            async for attempt in self._retrying():
                with attempt:
                    await self._dead_letter(dead)
        await self._learn_fanout([i for p in parts for i in p.items if i is not None])
        for part in parts:
            part.costs = [self._cost(item) for item in part.items]
        lanes: list[list[_Part]] = []
        for topic in (self._kafka.signals_topic, self._kafka.prices_topic):
            of_topic = [p for p in parts if p.tp.topic == topic]
            lanes.extend(_deal(of_topic, self._settings.pipeline_concurrency))
        return lanes

    def _cost(self, item: _Item | None) -> int:
        """Estimated agent executions of one record (1 for a tick or an invalid record)."""
        if item is not None and isinstance(item.message, SignalV1):
            return self._fanout.get(item.message.user_id, UNKNOWN_FANOUT)
        return 1

    async def _process_lane(self, lane: list[_Part]) -> None:
        started = time.perf_counter()
        for chunk in self._chunks(lane):
            outcomes: list[tuple[_Item, SignalOutcome | None]] = []
            async for attempt in self._retrying():
                with attempt:
                    outcomes = await self._commit_batch(chunk)
            committed_at = time.time()
            self._uncommitted.update(chunk.next_offsets)
            self._observe(chunk, outcomes, committed_at, started)
            started = time.perf_counter()

    async def _learn_fanout(self, items: list[_Item]) -> None:
        """Count the agents of users not seen yet, to size the transactions."""
        unseen = {
            item.message.user_id
            for item in items
            if isinstance(item.message, SignalV1) and item.message.user_id not in self._fanout
        }
        if not unseen:
            return
        async for attempt in self._retrying():
            with attempt:
                async with connection(self._pool) as conn:
                    counts = await agent_counts(conn, list(unseen))
        for user_id in unseen:
            self._fanout[user_id] = max(1, counts.get(user_id, 0))

    def _chunks(self, lane: list[_Part]) -> Iterator[_Chunk]:
        """Split a lane's records into transactions of at most about
        `MAX_EXECUTIONS_PER_TRANSACTION` agent executions, by each user's last known fan-out,
        so that memory and transaction length stay bounded at any fan-out."""
        chunk, budget = _Chunk(), 0
        for part in lane:
            for record, item, cost in zip(part.records, part.items, part.costs, strict=True):
                if chunk.records and budget + cost > MAX_EXECUTIONS_PER_TRANSACTION:
                    yield chunk
                    chunk, budget = _Chunk(), 0
                budget += cost
                chunk.records.append(record)
                chunk.next_offsets[part.tp] = record.offset + 1
                if item is not None:
                    chunk.items.append(item)
        if chunk.records:
            yield chunk

    def _retrying(self) -> AsyncRetrying:
        return transient_retry(
            attempts=self._settings.retry_max_attempts,
            max_delay_s=self._settings.retry_max_delay_s,
        )

    def _decode(
        self, tp: TopicPartition, records: Sequence[ConsumerRecord[bytes, bytes]]
    ) -> tuple[list[_Item | None], list[DeadLetter]]:
        """Each record's item (None for an invalid one), and the dead letters."""
        items: list[_Item | None] = []
        dead: list[DeadLetter] = []
        is_signal = tp.topic == self._kafka.signals_topic
        for record in records:
            try:
                message = decode_signal(record.value) if is_signal else decode_price(record.value)
            except InvalidMessage as exc:
                dead.append(DeadLetter(record, str(exc), "invalid"))
                items.append(None)
                continue
            items.append(_Item(record, message))
        return items, dead

    async def _commit_batch(self, chunk: _Chunk) -> list[tuple[_Item, SignalOutcome | None]]:
        """One transaction: every item's effects and the next offset of each partition."""
        items = chunk.items
        async with connection(self._pool) as conn:
            try:
                async with conn.transaction():
                    outcomes, dead = await self._apply(conn, items, isolated=False)
                    await self._finish(conn, chunk.next_offsets, dead)
            except Exception as exc:  # this module alone maps every failure
                if is_transient(exc):
                    raise
                log.warning("batch_failed_retrying_isolated", error=describe(exc))
            else:
                return outcomes
            # A record broke a constraint or hit a bug: redo the batch with a savepoint per
            # record, so that only that record is dead-lettered (a poison record never blocks
            # the partition) and the others go through.
            async with conn.transaction():
                outcomes, dead = await self._apply(conn, items, isolated=True)
                await self._finish(conn, chunk.next_offsets, dead)
            return outcomes

    async def _finish(
        self,
        conn: asyncpg.Connection,
        next_offsets: dict[TopicPartition, int],
        dead: list[DeadLetter],
    ) -> None:
        await store_offsets(
            conn,
            self._kafka.consumer_group,
            [(tp.topic, tp.partition, offset) for tp, offset in next_offsets.items()],
        )
        if dead:
            # Acknowledged by the broker before the offset moves past them (the commit).
            await self._dead_letter(dead)

    async def _apply(
        self, conn: asyncpg.Connection, items: list[_Item], *, isolated: bool
    ) -> tuple[list[tuple[_Item, SignalOutcome | None]], list[DeadLetter]]:
        outcomes: list[tuple[_Item, SignalOutcome | None]] = []
        dead: list[DeadLetter] = []
        if not isolated and items and isinstance(items[0].message, SignalV1):
            return await self._apply_signals(conn, items, dead), dead
        for item in items:
            if not isolated:
                outcome = await self._apply_one(conn, item, dead)
                outcomes.append((item, outcome))
                continue
            try:
                async with conn.transaction():
                    outcome = await self._apply_one(conn, item, dead)
                outcomes.append((item, outcome))
            except Exception as exc:  # this module alone maps every failure
                if is_transient(exc):
                    raise
                if isinstance(exc, asyncpg.PostgresError):
                    reason, kind = f"database rejected it: {describe(exc)}", "database"
                else:
                    reason, kind = f"unexpected error: {describe(exc)}", "unexpected"
                dead.append(DeadLetter(item.record, reason, kind))
                log.exception("record_failed", error=describe(exc), **_coordinates(item.record))
        return outcomes, dead

    async def _apply_signals(
        self, conn: asyncpg.Connection, items: list[_Item], dead: list[DeadLetter]
    ) -> list[tuple[_Item, SignalOutcome | None]]:
        """A chunk's signals, set-based in one go (a fixed number of statements)."""
        signals = [_signal(item) for item in items]
        results = await handle_signals(
            PgSignalStore(conn), signals, trading=self._settings.trading, now=datetime.now(UTC)
        )
        outcomes: list[tuple[_Item, SignalOutcome | None]] = []
        for item, result in zip(items, results, strict=True):
            if isinstance(result, UnknownUser):
                dead.append(DeadLetter(item.record, str(result), "unknown_user"))
                outcomes.append((item, None))
            else:
                outcomes.append((item, result))
        return outcomes

    async def _apply_one(
        self, conn: asyncpg.Connection, item: _Item, dead: list[DeadLetter]
    ) -> SignalOutcome | None:
        record = item.record
        if isinstance(item.message, SignalV1):
            [(_, outcome)] = await self._apply_signals(conn, [item], dead)
            return outcome
        exits = await handle_price(
            PgPriceStore(conn),
            item.message,
            configs=self._config_texts,
            settings=self._settings,
            now=datetime.now(UTC),
            received_at=record_time(record),
        )
        for reason, count in exits.items():
            self._metrics.exits.labels(reason).inc(count)
        return None

    # ------------------------------------------------------------------ dead letters

    async def _dead_letter(self, dead: list[DeadLetter]) -> None:
        """Produce each record unchanged with the reason headers and wait for the acks."""
        futures = []
        for d in dead:
            r = d.record
            headers = [
                *[(k, v) for k, v in (r.headers or ()) if k not in _DLQ_HEADERS],
                ("error", d.reason.encode("utf-8", "replace")[:4000]),
                ("original-topic", r.topic.encode()),
                ("original-partition", str(r.partition).encode()),
                ("original-offset", str(r.offset).encode()),
            ]
            futures.append(
                await self._producer.send(
                    self._kafka.dlq_topic,
                    value=r.value,
                    # aiokafka's send() refuses a record with neither key nor value, which
                    # other clients can write: its dead letter gets an empty key instead.
                    key=b"" if r.key is None and r.value is None else r.key,
                    headers=headers,
                    timestamp_ms=r.timestamp,
                )
            )
        await asyncio.gather(*futures)
        for d in dead:
            self._metrics.dead_letters.labels(d.kind).inc()
            log.warning(
                "record_dead_lettered", reason=d.reason, kind=d.kind, **_coordinates(d.record)
            )

    # ------------------------------------------------------------------ after the commit

    async def commit_kafka(self, only: set[TopicPartition] | None = None) -> None:
        """Commit the offsets stored in PostgreSQL since the last time to Kafka too.

        Only for lag tools: the database holds the truth, so a lost commit only delays
        what they show. Partitions no longer assigned are left to their new owner.
        """
        self._last_kafka_commit = time.monotonic()
        pending = {
            tp: offset for tp, offset in self._uncommitted.items() if only is None or tp in only
        }
        for tp in pending:
            del self._uncommitted[tp]
        assigned = self.consumer.assignment()
        offsets = {tp: offset for tp, offset in pending.items() if tp in assigned}
        if not offsets:
            return
        try:
            # Bounded: while the broker is away aiokafka waits for a group coordinator
            # forever, which would hold up the loop and a SIGTERM's drain with it.
            async with asyncio.timeout(KAFKA_COMMIT_TIMEOUT_S):
                await self.consumer.commit(offsets)
        except (KafkaError, TimeoutError) as exc:
            log.warning("kafka_commit_failed", error=describe(exc), partitions=_names(set(offsets)))

    def _observe(
        self,
        chunk: _Chunk,
        outcomes: list[tuple[_Item, SignalOutcome | None]],
        committed_at: float,
        started: float,
    ) -> None:
        self._metrics.batch_seconds.observe(time.perf_counter() - started)
        for record in chunk.records:
            self._metrics.latency.observe(max(0.0, committed_at - record.timestamp / 1000))
        for tp, next_offset in chunk.next_offsets.items():
            highwater = self.consumer.highwater(tp)
            if highwater is not None:
                self._metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(
                    max(0, highwater - next_offset)
                )
        for item, outcome in outcomes:
            if outcome is not None and isinstance(item.message, SignalV1):
                self._fanout[item.message.user_id] = max(
                    1, len(outcome.outcomes) + outcome.already_done
                )
            if outcome is not None:
                self._log_signal(item.record, outcome, committed_at)

    def _log_signal(
        self, record: ConsumerRecord[bytes, bytes], outcome: SignalOutcome, committed_at: float
    ) -> None:
        counts: dict[str, int] = {}
        for agent in outcome.outcomes:
            status = agent.decision.status.value
            counts[status] = counts.get(status, 0) + 1
        for status, n in counts.items():
            self._metrics.executions.labels(status).inc(n)
        if not self._log_info:
            return  # the lines below are info: skip building them per agent
        latency_ms = round((committed_at - record.timestamp / 1000) * 1000, 1)
        bound = log.bind(signal_id=outcome.signal_id, **_coordinates(record))
        for agent in outcome.outcomes:
            bound.info(
                "agent_decided",
                agent_id=str(agent.agent_id),
                status=agent.decision.status.value,
                reason=agent.decision.reason,
                transaction_id=str(agent.transaction_id) if agent.transaction_id else None,
                latency_ms=latency_ms,
            )
        bound.info(
            "signal_processed",
            is_new_signal=outcome.is_new_signal,
            executions=counts,
            already_executed=outcome.already_done,
            latency_ms=latency_ms,
        )


def _deal(parts: list[_Part], lanes: int) -> list[list[_Part]]:
    """Whole partitions into at most `lanes` lanes, the costliest first to the lightest."""
    out: list[list[_Part]] = [[] for _ in range(min(lanes, len(parts)))]
    loads = [0] * len(out)
    for part in sorted(parts, key=lambda p: (-p.cost, p.tp.partition)):
        lightest = loads.index(min(loads))
        out[lightest].append(part)
        loads[lightest] += part.cost
    for lane in out:
        lane.sort(key=lambda p: p.tp.partition)
    return out


def _signal(item: _Item) -> Signal:
    record, message = item.record, item.message
    assert isinstance(message, SignalV1)  # noqa: S101 - only called for signal items
    return message.to_domain(
        coordinates=f"{record.topic}:{record.partition}:{record.offset}",
        received_at=record_time(record),
    )


_DLQ_HEADERS = frozenset({"error", "original-topic", "original-partition", "original-offset"})


def _coordinates(record: ConsumerRecord[Any, Any]) -> dict[str, Any]:
    return {"topic": record.topic, "partition": record.partition, "offset": record.offset}


def _names(tps: set[TopicPartition]) -> list[str]:
    return sorted(f"{tp.topic}:{tp.partition}" for tp in tps)
